"""The instance's first calls with a role the bakery has just changed (IAM propagation, counted: the
realism layer's ``role_calls``, :mod:`support.realism`): the first-boot script, really executed in the
sandbox with the real AWS CLI, talks to moto through the fault proxy, and the layer refuses the first
requests signed with the instance role's credentials as AWS does while the role's new policy
propagates.

- Two refusals: the script retries them (its log says so, with each pause) and the first boot succeeds.

A refusal that outlasts the six tries is the policy's, and the script says so: that is shown where the
policy really lacks a statement (``tests/e2e/test_iam_enforced_bake.py``: the bake without
``ReadRunListAndValidatorKey``, a launched instance's alert without ``AlertOnFailure``), not here, where
every try is a CLI run.

The pauses between tries pass at once (the sandbox's ``sleep``); what is asserted is what the log says.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from support.proxy import FaultProxy
from support.realism import Realism
from support.sandbox import INSTANCE_ROLE, firstboot, make_role, output

# Nothing timed: only the counted refusal of the role's credentials.
QUIET = {"invisible": 0, "pending": 0, "stopping": 0, "shutting_down": 0, "image_pending": 0, "iam": 0}
SESSION_KEY = "ASIAINSTANCEROLE"  # the access key id the sandbox's IMDS double hands out


@pytest.fixture()
def proxy(aws: dict[str, Any]) -> Iterator[FaultProxy]:
    with FaultProxy(aws["url"]) as p:
        yield p


def _role_changed(proxy: FaultProxy, moto_server, role_calls: int) -> Realism:
    """The layer in front, then the instance role's policy written through it (as the iam-role stage does)."""
    from devstack._boto import session as shared_session
    from devstack.moto import DUMMY_ACCESS_KEY, DUMMY_SECRET_KEY

    proxy.realism = realism = Realism(**QUIET, role_calls=role_calls,
                                      role_of=lambda key: INSTANCE_ROLE if key == SESSION_KEY else None)
    iam = moto_server.client("iam")
    try:
        iam.create_role(RoleName=INSTANCE_ROLE, AssumeRolePolicyDocument="{}")
    except iam.exceptions.EntityAlreadyExistsException:
        pass
    via = shared_session().client("iam", endpoint_url=proxy.url, region_name="us-east-1",
                                         aws_access_key_id=DUMMY_ACCESS_KEY, aws_secret_access_key=DUMMY_SECRET_KEY)
    via.put_role_policy(RoleName=INSTANCE_ROLE, PolicyName="bakery-instance", PolicyDocument=(
        '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}'))
    return realism


def test_a_refusal_while_the_role_propagates_is_retried_and_first_boot_succeeds(
        sandbox_factory, alerts, proxy: FaultProxy, moto_server):
    box = sandbox_factory(instant_sleep=True)
    box.aws_url = proxy.url
    box.install_image(make_role(alerts))
    realism = _role_changed(proxy, moto_server, role_calls=2)

    proc = box.run(firstboot(box))

    text = output(proc)
    assert proc.returncode == 0, text
    assert realism.count("role: s3:") == 2
    notes = [line for line in text.splitlines() if "refused for the instance role (" in line]
    assert len(notes) == 2, text
    assert "IAM may not have propagated its policy yet; try 2 of 6 in 2 s" in notes[0]
    assert "try 3 of 6 in 4 s" in notes[1]
    assert not box.sentinel.exists() and len(box.chef_calls()) == 1
    assert alerts.received() == []
