"""The faults layer: every AWS call failed once through the fault proxy, interrupts (SIGTERM/SIGKILL),
concurrent bakes, hostile catalogues and environments, security checks, and bakes through AWS's
timing (:mod:`support.realism`). With ``BAKERY_FAULT_TABLE=PATH`` these tests write the fault table.
"""
