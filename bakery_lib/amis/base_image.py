"""``base_ami: resolve:ssm:/PARAMETER``: the base AMI id read from an SSM parameter in the role's region.

Amazon Linux, Windows Server and Ubuntu publish their current images as public parameters
(``/aws/service/ami-amazon-linux-latest/...``, ``/aws/service/ami-windows-latest/...``,
``/aws/service/canonical/ubuntu/...``). The id read here is what the bake records (state, the
``bakery:base-ami`` tag, the bake key): a new base image is a new bake, an unchanged one reuses.
Calls: SSM GetParameter, once per parameter and region in a run (the roles of a release share it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..catalog.specs import AMI_ID_RE, SSM_BASE_AMI_PREFIX
from ..errors import AwsError, BakeryError

if TYPE_CHECKING:
    from ..stages.base import RoleContext


def is_ssm_reference(base_ami: object) -> bool:
    return isinstance(base_ami, str) and base_ami.startswith(SSM_BASE_AMI_PREFIX)


def resolve_ssm_base(ctx: RoleContext, base_ami: str) -> str:
    """The AMI id ``base_ami`` stands for: itself, or the value of the SSM parameter it names."""
    if not is_ssm_reference(base_ami):
        return base_ami
    role, name = ctx.role, base_ami[len(SSM_BASE_AMI_PREFIX):]
    where = f"catalogue {ctx.catalog.path}, role {role.name!r}, key 'base_ami'"

    def read() -> str:
        try:
            return str(ctx.aws.call("ssm", role.region, "GetParameter", Name=name)["Parameter"]["Value"])
        except AwsError as exc:
            if exc.code == "ParameterNotFound":
                raise BakeryError(f"{where}: SSM parameter {name} does not exist in {role.region}") from None
            raise

    value = ctx.session.once(("base-ami-ssm", role.region, name), read)
    if not AMI_ID_RE.match(value):
        raise BakeryError(f"{where}: SSM parameter {name} in {role.region} holds {value[:80]!r}, not an AMI id")
    return value
