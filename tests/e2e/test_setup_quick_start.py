"""The real-account quick start (docs/quick-start.md), followed step by step against moto: from an account
without the bucket, the validator key and the topic to the first bake, with exactly the documented
commands. ``bakery setup --dry-run`` makes only Head/Get calls (the fault proxy's call log) and shows every
call setup would make; setup then creates the bucket encrypted, versioned and with public access blocked,
the validator key object (encrypted) and the topic; a rerun has nothing to do.
"""

from __future__ import annotations

import re
import shlex
import uuid
from pathlib import Path

from support.bakes import SimulatedBoot, cli_env, run_in_process

REPO = Path(__file__).resolve().parents[2]
READ_ONLY = ("Head", "Get", "List", "Describe")


def documented_commands() -> list[list[str]]:
    text = (REPO / "docs" / "quick-start.md").read_text(encoding="utf-8")
    block = text.split("<!-- quick-start:", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def test_the_quick_start_from_an_empty_account_to_the_first_bake(devstack, proxy, tmp_path, capsys, monkeypatch):
    suffix = uuid.uuid4().hex[:8]
    bucket, topic = f"qs-bakery-{suffix}", f"qs-alerts-{suffix}"
    arn = f"arn:aws:sns:{devstack.region}:123456789012:{topic}"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles=["qsweb"], runlist_bucket=bucket,
                                     alert_topic_arn=arn, chef={"validation_key_s3": f"s3://{bucket}/chef/validator.pem"})
    pem = tmp_path / "acme-validator.pem"
    pem.write_text(devstack.goiardi.create_validator(f"qs-validator-{suffix}"))
    ws = tmp_path / "ws"
    env = cli_env(devstack, proxy.url)
    s3 = devstack.moto.client("s3")
    commands = documented_commands()
    assert [c[:2] for c in commands] == [["bakery", "setup"]] * 2 + [["bakery", "validate"]] + \
        [["bakery", "bake"]] * 2 + [["bakery", "status"]]

    outputs = []
    for cmd in commands:
        args = [a.replace("acme-validator.pem", str(pem)) for a in cmd[1:]]
        args = ["qsweb" if a == "web" else a for a in args]
        mark = proxy.mark()
        with SimulatedBoot(devstack, ["qsweb"]):
            code, out, err = run_in_process(["--workspace", str(ws), "--catalog", str(catalog), *args], env, capsys,
                                            monkeypatch)
        assert code == 0, f"{shlex.join(cmd)}: {out}{err}"
        outputs.append(out)
        if "--dry-run" in args or args[0] in ("validate", "status"):
            writes = [o for o in proxy.operations(mark) if not o.startswith(READ_ONLY)]
            assert writes == [], f"{shlex.join(cmd)} made {writes}"
        if args == ["setup", "--dry-run"]:
            for op in ("CreateBucket", "PutBucketEncryption", "PutBucketVersioning", "PutPublicAccessBlock",
                       "PutObject", "CreateTopic"):
                assert f" {op} " in out, f"the dry run does not show {op}: {out}"
            assert not s3.list_buckets()["Buckets"] or bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}

    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert all(s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"].values())
    head = s3.head_object(Bucket=bucket, Key="chef/validator.pem")
    assert head["ServerSideEncryption"] == "AES256"
    assert devstack.moto.client("sns").get_topic_attributes(TopicArn=arn)["Attributes"]["TopicArn"] == arn
    assert re.search(r"^qsweb\s+bake\s+no AMI of role qsweb yet", outputs[3], re.M), outputs[3]
    assert "qsweb: bake" in outputs[5] and "succeeded" in outputs[5], outputs[5]

    code, out, _ = run_in_process(["--workspace", str(ws), "--catalog", str(catalog), "setup"], env, capsys,
                                  monkeypatch)
    assert code == 0 and "nothing to do: everything is in place" in out
    # The next release with nothing changed: the plan says the AMI just baked is reused.
    mark = proxy.mark()
    code, out, err = run_in_process(["--workspace", str(ws), "--catalog", str(catalog), "bake", "--role", "qsweb",
                                     "--release", "1.1", "--dry-run"], env, capsys, monkeypatch)
    assert code == 0, out + err
    assert re.search(r"^qsweb\s+reuse\s+reuse ami-\w+ \(.*\): same bake key", out, re.M), out
    assert [o for o in proxy.operations(mark) if not o.startswith(READ_ONLY)] == []
