"""The Node.js reference producer (`examples/node_producer/producer.js`), written from
docs/envelope.md and docs/redis.md, against a real `vaultq worker` on the session's
private Redis: a Node-sealed v2 job runs under a permission policy, Node opens the
worker's sealed typed result, a job without the permission is DENIED and never runs,
Node reproduces/opens every positive v2 vector byte for byte and refuses every v2
refusal vector with vaultq's reason code.

CI installs Debian's `nodejs` when it is missing (`.ci/test.sh`); these tests skip,
loudly, only where no `node` executable exists at all.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Literal

import pytest

import vaultq
from tests.helpers import ROOT, wait_until_serving, worker_env, worker_processes

PRODUCER = ROOT / "examples" / "node_producer" / "producer.js"
NODE = shutil.which("node") or shutil.which("nodejs")
needs_node = pytest.mark.skipif(
    NODE is None,
    reason="NODE.JS NOT FOUND: the cross-language envelope test did not run "
    "(install Debian's nodejs; .ci/test.sh does so when run as root)",
)


def _node(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    assert NODE is not None
    return subprocess.run(
        [NODE, str(PRODUCER), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@needs_node
def test_node_reproduces_and_opens_the_v2_vectors() -> None:
    vectors = ROOT / "tests" / "vectors" / "envelope_v2.json"
    done = _node("--vectors", str(vectors))
    assert done.returncode == 0, done.stderr
    names = [v["name"] for v in json.loads(vectors.read_text())["vectors"]]
    assert done.stdout.split("\n")[:-1] == [f"vector {name}: ok" for name in names]


@needs_node
def test_node_refuses_every_v2_refusal_vector_with_its_reason() -> None:
    """The refusal vectors pass in both implementations: Node, written from the spec's
    check order, refuses each one with the reason code vaultq gives."""
    vectors = ROOT / "tests" / "vectors" / "envelope_v2_refusals.json"
    done = _node("--refusals", str(vectors))
    assert done.returncode == 0, done.stderr
    expected = [
        f"refusal {v['name']}: {v['reason']}" for v in json.loads(vectors.read_text())["vectors"]
    ]
    assert done.stdout.split("\n")[:-1] == expected


@needs_node
def test_node_refuses_a_tampered_vector(tmp_path: Path) -> None:
    """The vector check is not vacuous: one flipped ciphertext bit makes Node fail."""
    doc = json.loads((ROOT / "tests/vectors/envelope_v2.json").read_text())
    vector = doc["vectors"][0]
    raw = bytearray.fromhex(vector["result_envelope"])
    raw[-40] ^= 1  # inside the ciphertext: the signature no longer verifies
    vector["result_envelope"] = raw.hex()
    doc["vectors"] = [vector]
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(doc))
    done = _node("--vectors", str(path))
    assert done.returncode == 1
    assert "bad_signature" in done.stderr


@needs_node
@pytest.mark.parametrize("alg", ["hmac-sha256", "ed25519"])
def test_node_job_runs_in_a_vaultq_worker_and_node_opens_the_result(
    redis_url: str, unique_name: str, tmp_path: Path, alg: Literal["hmac-sha256", "ed25519"]
) -> None:
    keyring = vaultq.Keyring.generate(signing=alg)
    keys = tmp_path / "keys.json"
    keys.write_text(keyring.to_json())
    keys.chmod(0o600)
    log = tmp_path / "ran.log"
    env = worker_env(
        {
            "VAULTQ_BROKER": redis_url,
            "VAULTQ_KEYS": f"@{keys}",
            "NODE_APP": unique_name,
            "NODE_LOG": str(log),
        }
    )
    common = ["--redis", redis_url, "--keys", str(keys), "--app", unique_name]
    common += ["--task", "node_app.refund", "--payload", '{"order_id":7,"card_token":"tok_visa"}']
    with worker_processes("node_app:app", env, 1, "--concurrency", "2") as procs:
        wait_until_serving(procs)
        allowed = _node(*common, "--principal", '{"id":"user:42","permissions":["orders.refund"]}')
        assert allowed.returncode == 0, allowed.stderr
        denied = _node(*common, "--principal", '{"id":"user:43","roles":["staff"]}')
        assert denied.returncode == 0, denied.stderr

    result = json.loads(allowed.stdout)["result"]
    assert result["status"] == "succeeded"
    assert result["value"] == {"order_id": 7, "refunded": True, "principal_id": "user:42"}
    assert result["attempts"] == 1
    assert result["principal_id"] == "user:42"

    refused = json.loads(denied.stdout)["result"]
    assert refused["status"] == "denied"
    assert refused["error_type"] == "vaultq.AuthorizationDenied"
    assert "value" not in refused
    # Only the permitted job ran.
    assert log.read_text().splitlines() == ["7"]
