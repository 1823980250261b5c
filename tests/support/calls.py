"""Every AWS call a Linux bake makes, per stage, in the order it makes them.

``occurrence`` is the n-th call of that operation within the stage (preflight resolves the base AMI
and then looks for a reusable AMI: two DescribeImages); ``rerun`` marks the calls a stage makes only
when it runs again after a failed attempt. ``test_faults_throttle`` checks this list
against what a real stage-by-stage bake sends through the proxy, so it cannot silently go stale.
The chef-cleanup stage makes no AWS call (its Chef failure is in ``test_interrupt``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BakeCall:
    stage: str
    operation: str
    occurrence: int = 1
    service: str = "ec2"
    why: str = ""
    # Made only when the stage runs again after a failed attempt (the lookups that make a rerun
    # adopt what the failed attempt created instead of creating it twice).
    rerun: bool = False
    # A refusal of this call does not fail the stage: the stage finishes and says what it left for
    # the next run (publish deprecating the role's superseded AMIs).
    best_effort: bool = False
    # What the stage's output says when a best-effort call was refused.
    best_effort_says: str = "not all superseded AMIs deprecated"

    @property
    def id(self) -> str:
        n = f"#{self.occurrence}" if self.occurrence > 1 else ""
        return f"{self.stage}{'(rerun)' if self.rerun else ''}:{self.operation}{n}"

    @property
    def role(self) -> str:
        """A role name of its own for this case (roles are shared state on the session's moto)."""
        short = {"security-groups": "sg", "wait-image": "wi", "chef-cleanup": "cc", "boot-test": "bt"}.get(self.stage, self.stage)
        return f"f-{short}-{'r' if self.rerun else ''}{self.operation.lower()}-{self.occurrence}"[:60]


BAKE_CALLS: tuple[BakeCall, ...] = (
    BakeCall("preflight", "DescribeImages", why="resolve the base AMI"),
    BakeCall("preflight", "DescribeInstances", why="refuse when a bake of the role is in flight"),
    BakeCall("preflight", "DescribeImages", 2, why="the role's AMIs: one with the same bake key is reused; the "
             "SBOM's previous AMI and the AMIs publish supersedes are kept from it"),
    BakeCall("preflight", "DescribeInstanceTypeOfferings", why="is the instance type offered in the region?"),
    BakeCall("preflight", "DescribeInstanceTypes", why="does the type run the base AMI's architecture?"),
    BakeCall("security-groups", "DescribeVpcs"),
    BakeCall("security-groups", "DescribeSecurityGroups"),
    BakeCall("security-groups", "CreateSecurityGroup"),
    BakeCall("iam-role", "GetRole", service="iam"),
    BakeCall("iam-role", "CreateRole", service="iam"),
    BakeCall("iam-role", "PutRolePolicy", service="iam"),
    BakeCall("iam-role", "CreateInstanceProfile", service="iam", why="straight after CreateRole: no GetInstanceProfile"),
    BakeCall("iam-role", "AddRoleToInstanceProfile", service="iam"),
    BakeCall("launch", "RunInstances"),
    BakeCall("launch", "DescribeInstances", why="another bake of the role launched at the same time? (batched)"),
    BakeCall("launch", "DescribeInstances", rerun=True, why="rerun: an instance of this bake already there?"),
    BakeCall("bootstrap", "DescribeInstances", why="poll for bakery:bootstrap"),
    BakeCall("bootstrap", "GetObject", service="s3", why="the package inventory the instance uploaded",
             best_effort=True, best_effort_says="no SBOM for this AMI"),
    BakeCall("bootstrap", "PutObject", service="s3", why="the SBOM, next to the inventory",
             best_effort=True, best_effort_says="the AMI gets no bakery:sbom tag"),
    BakeCall("stop", "StopInstances"),
    BakeCall("stop", "DescribeInstances", why="poll until stopped (batched)"),
    BakeCall("image", "CreateImage"),
    BakeCall("image", "DescribeImages", rerun=True, why="rerun: an image of this bake already there?"),
    BakeCall("wait-image", "DescribeImages", why="poll until available"),
    BakeCall("wait-image", "ModifyImageAttribute", why="ImdsSupport v2.0: refused, the image is not kept"),
    BakeCall("wait-image", "CreateTags", why="tag the snapshots, and the image bakery:imds-support"),
    BakeCall("terminate", "TerminateInstances"),
    BakeCall("boot-test", "PutObject", service="s3", why="the first-boot run list the test instance reads"),
    BakeCall("boot-test", "DescribeImages", why="the new AMI's root device, for the encrypted volume"),
    BakeCall("boot-test", "RunInstances", why="the test instance, from the new AMI"),
    BakeCall("boot-test", "DescribeInstances", why="poll for bakery:boot-test (batched)"),
    BakeCall("boot-test", "CreateTags", why="the AMI: bakery:boot-test=passed"),
    BakeCall("boot-test", "TerminateInstances", why="the passed test's instance"),
    BakeCall("publish", "DescribeParameters", service="ssm", why="who wrote /bakery/ROLE/latest (never backwards)"),
    BakeCall("publish", "PutParameter", service="ssm", why="/bakery/ROLE/latest"),
    BakeCall("publish", "GetParameter", service="ssm", why="read back: SSM validates aws:ec2:image asynchronously"),
    BakeCall("publish", "PutObject", service="s3", why="write the first-boot run list (no read first)"),
    BakeCall("publish", "EnableImageDeprecation", why="the new AMI's deprecation time (deprecate_after)"),
    BakeCall("publish", "EnableImageDeregistrationProtection", why="latest points at it: protected"),
)
