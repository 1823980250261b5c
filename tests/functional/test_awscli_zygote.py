"""The instance doubles' ``aws`` (devstack.awscli_zygote) is the real AWS CLI: same output, same exit
code, same files, same signals as the CLI run as a process of its own, against the session's moto."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import MotoServer
from devstack.awscli_zygote import AwsCliZygote, real_aws


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AwsCliZygote]:
    z = AwsCliZygote(tmp_path_factory.mktemp("zygote")).start()
    yield z
    z.stop()


@pytest.fixture()
def bucket(moto_server: MotoServer) -> str:
    name = f"zygote-{uuid.uuid4().hex[:10]}"
    s3 = moto_server.client("s3")
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="run-list.json", Body=b'{"run_list": ["role[web]"]}\n')
    return name


def _both(zygote: AwsCliZygote, args: list[str], env: dict[str, str], cwd: Path,
          stdin: bytes | None = None) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    def run(exe: str) -> subprocess.CompletedProcess:
        return subprocess.run([exe, *args], env=env, cwd=cwd, input=stdin, capture_output=True, timeout=120)

    return run(str(zygote.bin / "aws")), run(real_aws())


@pytest.mark.parametrize("args", [
    ["--version"],
    ["s3", "cp", "s3://{bucket}/run-list.json", "-"],
    ["s3api", "head-object", "--bucket", "{bucket}", "--key", "missing"],  # 255, the 404 on stderr
    ["ec2", "describe-regions", "--region-names", "us-east-1", "--query", "Regions[].RegionName", "--output", "text"],
    ["ec2", "no-such-operation"],  # 2, argparse's usage on stderr
    ["sns", "publish", "--topic-arn", "arn:aws:sns:us-east-1:123456789012:none", "--message", "x"],
], ids=["version", "s3-cp-stdout", "head-missing", "ec2-query", "bad-operation", "sns-missing-topic"])
def test_output_and_exit_code_are_the_clis_own(zygote, aws_env, bucket, tmp_path, args):
    args = [a.format(bucket=bucket) for a in args]
    before = len(zygote.calls())
    warm, cold = _both(zygote, args, aws_env, tmp_path)
    assert (warm.returncode, warm.stdout, warm.stderr) == (cold.returncode, cold.stdout, cold.stderr)
    assert len(zygote.calls()) == before + 1  # the warm one went through the server


def test_stdin_cwd_umask_and_environment_are_the_callers(zygote, aws_env, bucket, tmp_path):
    env = {**aws_env, "AWS_DEFAULT_OUTPUT": "text"}  # read by the CLI in the child, from the caller's env
    up = subprocess.run(["sh", "-c", f"umask 077 && {zygote.bin / 'aws'} s3 cp - s3://{bucket}/from-stdin"],
                        env=env, input=b"piped\n", capture_output=True, timeout=120)
    assert up.returncode == 0, up.stderr
    down = subprocess.run(["sh", "-c", f"umask 077 && {zygote.bin / 'aws'} s3 cp s3://{bucket}/from-stdin got.txt"],
                          env=env, cwd=tmp_path, capture_output=True, timeout=120)
    assert down.returncode == 0, down.stderr
    got = tmp_path / "got.txt"
    assert got.read_bytes() == b"piped\n"
    assert got.stat().st_mode & 0o777 == 0o600
    listed = subprocess.run([str(zygote.bin / "aws"), "s3api", "list-objects-v2", "--bucket", bucket,
                             "--query", "Contents[].Key"], env=env, capture_output=True, text=True, timeout=120)
    assert listed.stdout.split() == ["from-stdin", "run-list.json"]  # text output: the caller's variable


def _silent_endpoint() -> socket.socket:
    """A TCP endpoint that accepts connections and never answers (a call to it hangs)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    return server


def _gone(pid: int, within: float = 60.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def _hanging_call(zygote: AwsCliZygote, aws_env: dict[str, str]) -> tuple[subprocess.Popen, int, socket.socket]:
    endpoint = _silent_endpoint()
    before = len(zygote.calls())
    proc = subprocess.Popen([str(zygote.bin / "aws"), "ec2", "describe-regions", "--endpoint-url",
                             f"http://127.0.0.1:{endpoint.getsockname()[1]}", "--cli-read-timeout", "300"],
                            env=aws_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(zygote.calls()) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(zygote.calls()) == before + 1, "the server never forked the call"
    endpoint.accept()  # the call is connected and waiting for an answer that will not come
    return proc, zygote.calls()[-1], endpoint


def test_a_terminated_aws_ends_as_the_cli_does(zygote, aws_env):
    """SIGTERM reaches the CLI; the caller sees the process killed by it, as with the CLI itself."""
    proc, child, endpoint = _hanging_call(zygote, aws_env)
    with endpoint:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == -signal.SIGTERM
        assert _gone(child)


def test_a_killed_aws_takes_its_call_with_it(zygote, aws_env):
    """SIGKILL cannot be forwarded: the server sees the caller go and kills the call."""
    proc, child, endpoint = _hanging_call(zygote, aws_env)
    with endpoint:
        proc.kill()
        proc.wait(timeout=60)
        assert _gone(child), "the forked CLI outlived its caller"


def test_without_its_server_the_shim_runs_the_cli_itself(aws_env, tmp_path):
    z = AwsCliZygote(tmp_path / "z").start()
    z.stop()
    proc = subprocess.run([str(z.bin / "aws"), "--version"], env=aws_env, capture_output=True, text=True, timeout=60)
    real = subprocess.run([real_aws(), "--version"], env=aws_env, capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, real.stdout)
