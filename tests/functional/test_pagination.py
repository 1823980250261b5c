"""Accounts hold thousands of AMIs and long IAM lists: the bakery reads every page. moto answers
DescribeImages and ListRolePolicies in one page whatever MaxResults / MaxItems say, so a hook plays
AWS's paging: the first answer holds one item and a token, the next (sent with the token) the rest.
"""

from __future__ import annotations

import json

from support.stages import make_ctx, unique_role

from devstack.moto import seed_base_image


def _pages(ctx, service, operation, key, token_name):
    """Split the answer of ``operation`` into two pages; returns the tokens the bakery sent."""
    sent = []

    def params_hook(params, **_):
        sent.append(params.get(token_name))

    def split(parsed, **_):
        items = parsed.get(key, [])
        if sent[-1] is None and len(items) > 1:
            parsed[key] = items[:1]
            parsed[token_name] = "page-2"
            if service == "iam":
                parsed["IsTruncated"] = True
        elif sent[-1] == "page-2":
            parsed[key] = items[1:]
            parsed.pop(token_name, None)
            parsed["IsTruncated"] = False

    ctx.aws.add_hook(f"provide-client-params.{service}.{operation}", params_hook)
    ctx.aws.add_hook(f"after-call.{service}.{operation}", split)
    return sent


def test_describe_images_reads_every_page(moto_server, tmp_path, request):
    ec2 = moto_server.client("ec2")
    names = [f"paged-{unique_role(request)}-{i}" for i in range(3)]
    ids = sorted(seed_base_image(ec2, name=n) for n in names)
    ctx = make_ctx(moto_server, tmp_path, role=unique_role(request))
    sent = _pages(ctx, "ec2", "DescribeImages", "Images", "NextToken")
    found = ctx.aws.describe_images("us-east-1", Owners=["self"], Filters=[{"Name": "name", "Values": names}])
    assert sorted(i["ImageId"] for i in found) == ids
    assert sent == [None, "page-2"]


def test_iam_lists_read_every_page(moto_server, tmp_path, request):
    role = unique_role(request)
    iam = moto_server.client("iam")
    name = f"bakery-{role}"
    iam.create_role(RoleName=name, AssumeRolePolicyDocument="{}")
    doc = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject",
                                                               "Resource": "*"}]})
    for extra in ("hand-made-1", "hand-made-2"):
        iam.put_role_policy(RoleName=name, PolicyName=extra, PolicyDocument=doc)
    ctx = make_ctx(moto_server, tmp_path, role=role)
    sent = _pages(ctx, "iam", "ListRolePolicies", "PolicyNames", "Marker")
    assert ctx.aws.paginate("iam", "us-east-1", "ListRolePolicies", "PolicyNames", RoleName=name) == [
        "hand-made-1", "hand-made-2"]
    assert sent == [None, "page-2"]
