"""Helpers shared by the test layers (importable as ``support.*``; never a test module itself).

- :mod:`support.bakes`     bakes in process or through the CLI, census of leftovers, the fault table
- :mod:`support.proxy`     the fault-injecting HTTP proxy in front of moto server
- :mod:`support.realism`   AWS's timing played in front of moto (eventual consistency, pending states)
- :mod:`support.calls`     every AWS call a Linux bake makes, per stage
- :mod:`support.sandbox`   the first-boot sandbox (temp BAKERY_ROOT, IMDS double, stub chef-client)
- :mod:`support.stages`    one-stage contexts and hand-opened bake records
- :mod:`support.pipeline`  the Groovy declarative-pipeline harness that executes the Jenkinsfiles

Data: ``support/scripts/`` (stub chef-client and installer put on an instance's PATH).
"""
