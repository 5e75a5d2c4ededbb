"""The Node.js reference producer (`examples/node_producer/`), written from
docs/envelope.md and docs/redis.md, against a real `vaultq worker` on the session's
private Redis: a Node-sealed job (v2, and v1) runs under a permission policy, Node opens
the worker's sealed typed result, a job without the permission is DENIED and never runs.
Node reproduces/opens every positive vector (v1 and v2) byte for byte, refuses every
refusal vector with vaultq's reason code and opens every accepted one, and refuses every
keyring in keyring_refusals.json for the same reason vaultq does.

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
from support.workers import ROOT, wait_until_serving, worker_env, worker_processes

import vaultq

PRODUCER = ROOT / "examples" / "node_producer" / "producer.js"
CHECK = PRODUCER.with_name("check_vectors.js")
VECTORS = ROOT / "tests" / "vectors"
NODE = shutil.which("node") or shutil.which("nodejs")
needs_node = pytest.mark.skipif(
    NODE is None,
    reason="NODE.JS NOT FOUND: the cross-language envelope test did not run "
    "(install Debian's nodejs; .ci/test.sh does so when run as root)",
)


def _node(
    *args: str, timeout: float = 30, script: Path = PRODUCER
) -> subprocess.CompletedProcess[str]:
    assert NODE is not None
    return subprocess.run(
        [NODE, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@needs_node
@pytest.mark.parametrize("version", [1, 2])
def test_node_reproduces_and_opens_the_vectors(version: int) -> None:
    vectors = VECTORS / f"envelope_v{version}.json"
    done = _node("--vectors", str(vectors), script=CHECK)
    assert done.returncode == 0, done.stderr
    doc = json.loads(vectors.read_text())
    expected = [f"vector {v['name']}: ok" for v in doc["vectors"]]
    expected += [f"rounding {t['seconds']}: {t['ms']}" for t in doc["time_rounding"]]
    assert done.stdout.split("\n")[:-1] == expected


@needs_node
@pytest.mark.parametrize("version", [1, 2])
def test_node_refuses_every_refusal_vector_with_its_reason(version: int) -> None:
    """The refusal vectors pass in both implementations: Node, written from the spec's
    check order, refuses each one with the reason code vaultq gives, and opens each of
    the accepted ones (the other side of every boundary)."""
    vectors = VECTORS / f"envelope_v{version}_refusals.json"
    done = _node("--refusals", str(vectors), script=CHECK)
    assert done.returncode == 0, done.stderr
    doc = json.loads(vectors.read_text())
    expected = [f"refusal {v['name']}: {v['reason']}" for v in doc["vectors"]]
    expected += [f"accepted {v['name']}: ok" for v in doc["accepted"]]
    expected += [f"result {v['name']}: {v['reason']}" for v in doc["results"]["refused"]]
    expected += [f"result {v['name']}: ok" for v in doc["results"]["accepted"]]
    assert done.stdout.split("\n")[:-1] == expected


@needs_node
def test_node_verifies_batch_signed_jobs_and_refuses_every_batch_refusal() -> None:
    """docs/envelope.md, *Batch signatures*: other implementations MUST accept both
    forms. Node (which produces single signatures only) rebuilds every tree of the
    vectors, opens every member of every batch, refuses every refusal vector with
    vaultq's reason, opens the accepted ones and refuses a result carrying a proof."""
    vectors = VECTORS / "envelope_batch.json"
    done = _node("--batch", str(vectors), script=CHECK)
    assert done.returncode == 0, done.stderr
    doc = json.loads(vectors.read_text())
    expected = [f"tree {t['count']}: ok" for t in doc["tree"]]
    expected += [f"batch {b['name']}: ok" for b in doc["batches"]]
    expected += [f"refusal {v['name']}: {v['reason']}" for v in doc["refusals"]]
    expected += [f"accepted {v['name']}: ok" for v in doc["accepted"]]
    expected += ["result with a proof: malformed"]
    assert done.stdout.split("\n")[:-1] == expected


@needs_node
def test_node_refuses_every_keyring_refusal_vector() -> None:
    """Small-order and non-canonical Ed25519 verify keys, non-canonical base64url: Node
    refuses each keyring for the reason the vector names, as vaultq does."""
    vectors = VECTORS / "keyring_refusals.json"
    done = _node("--keyrings", str(vectors), script=CHECK)
    assert done.returncode == 0, done.stderr
    doc = json.loads(vectors.read_text())
    expected = [f"keyring {v['name']}: {v['problem']}" for v in doc["vectors"]]
    expected += [f"accepted {v['name']}: ok" for v in doc["accepted"]]
    assert done.stdout.split("\n")[:-1] == expected


@needs_node
def test_node_agrees_on_the_stream_field_forms() -> None:
    """The att/at forms in redis_stream_fields.json (docs/redis.md): Node's producer
    checks what it writes with the same patterns vaultq's fetch script applies."""
    vectors = VECTORS / "redis_stream_fields.json"
    done = _node("--stream-fields", str(vectors), script=CHECK)
    assert done.returncode == 0, done.stderr
    doc = json.loads(vectors.read_text(encoding="utf-8"))
    expected = [
        f"{field} {json.dumps(v, ensure_ascii=False)}: {verdict}"
        for field in ("att", "at")
        for verdict in ("accepted", "refused")
        for v in doc[field][verdict]
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
    done = _node("--vectors", str(path), script=CHECK)
    assert done.returncode == 1
    assert "bad_signature" in done.stderr


@needs_node
@pytest.mark.parametrize(
    ("alg", "version"), [("hmac-sha256", 2), ("ed25519", 2), ("hmac-sha256", 1)]
)
def test_node_job_runs_in_a_vaultq_worker_and_node_opens_the_result(
    redis_url: str,
    unique_name: str,
    tmp_path: Path,
    alg: Literal["hmac-sha256", "ed25519"],
    version: int,
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
    common += ["--envelope-version", str(version)]
    with worker_processes("node_app:app", env, 1, "--concurrency", "2") as procs:
        wait_until_serving(procs)
        allowed = _node(*common, "--principal", '{"id":"user:42","permissions":["orders.refund"]}')
        assert allowed.returncode == 0, allowed.stderr
        denied = _node(*common, "--principal", '{"id":"user:43","roles":["staff"]}')
        assert denied.returncode == 0, denied.stderr

    # The worker answers in the job's envelope version (a v1 producer reads v1 results).
    assert json.loads(allowed.stdout)["result_version"] == version
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
