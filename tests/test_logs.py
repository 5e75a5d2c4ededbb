"""vaultq.logs: masked task tracebacks, the JSON line format, handler setup, the library's
NullHandler, and the per-job line on ``vaultq.jobs`` (and turning it down)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from support.workers import ROOT, make_app, running_worker, worker_env

import vaultq
from vaultq.logs import (
    JOBS_LOGGER,
    JsonFormatter,
    render_traceback,
    secret_texts,
    setup_logging,
)

MARKER = "pan-4111-PLAINTEXT"


class Inner(msgspec.Struct):
    pin: vaultq.Secret[str]


class Payload(msgspec.Struct):
    n: int
    card: vaultq.Secret[str]
    nested: list[Inner]
    extra: dict[str, vaultq.Secret[bytes]]
    note: str = "plain-note-value"
    tag: str = "ab"


def _payload() -> Payload:
    return Payload(
        n=7,
        card=vaultq.Secret(MARKER),
        nested=[Inner(pin=vaultq.Secret("1234"))],
        extra={"k": vaultq.Secret(b"raw-bytes-secret")},
    )


def _raise(payload: Payload) -> None:
    local_copy = payload.card.reveal()  # a frame local: never rendered
    try:
        raise KeyError(f"no card {local_copy}")
    except KeyError as exc:
        raise ValueError(
            f"declined {local_copy} pin {payload.nested[0].pin.reveal()} note {payload.note} "
            f"tag {payload.tag} order {payload.n}"
        ) from exc


def test_secret_texts_finds_nested_secrets() -> None:
    found = secret_texts(_payload())
    assert MARKER in found and "1234" in found and "raw-bytes-secret" in found
    assert "plain-note-value" not in found
    assert secret_texts(msgspec.Struct()) == set()


def test_traceback_masks_secrets_and_renders_no_locals() -> None:
    payload = _payload()
    try:
        _raise(payload)
    except ValueError as exc:
        text = render_traceback(exc, payload)
    assert MARKER not in text and "1234" not in text and "plain-note-value" not in text
    # Secrets whatever their length, plain strings of 4+ characters; numbers outside a
    # Secret and shorter strings stay (documented in docs/worker.md).
    assert "ValueError: declined *** pin *** note *** tag ab order 7" in text
    assert "KeyError: 'no card ***'" in text
    assert "The above exception was the direct cause" in text
    assert "in _raise" in text
    # Frames show code lines only: the source line mentions the local's name, never the
    # value it held (capture_locals is never on).
    assert "local_copy=" not in text


def test_json_formatter_one_object_per_line() -> None:
    record = logging.LogRecord(
        "vaultq.jobs", logging.INFO, __file__, 1, "job %s\ndone", ("a",), None
    )
    record.vaultq = {"job_id": "a", "task": "t", "queue": "q", "attempt": 2, "outcome": "failed"}
    line = JsonFormatter().format(record)
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["time"].endswith("Z") and doc["level"] == "INFO" and doc["logger"] == "vaultq.jobs"
    assert doc["message"] == "job a\ndone"
    assert (doc["job_id"], doc["task"], doc["queue"], doc["attempt"], doc["outcome"]) == (
        "a",
        "t",
        "q",
        2,
        "failed",
    )
    plain = logging.LogRecord("vaultq", logging.WARNING, __file__, 1, "hi", (), None)
    assert json.loads(JsonFormatter().format(plain))["job_id"] is None


@pytest.fixture
def clean_logging() -> Iterator[None]:
    root, library = logging.getLogger(), logging.getLogger("vaultq")
    saved = (root.handlers[:], root.level, library.handlers[:], library.level)
    try:
        yield
    finally:
        root.handlers[:], library.handlers[:] = saved[0], saved[2]
        root.setLevel(saved[1])
        library.setLevel(saved[3])


def test_setup_logging_adds_no_second_handler(clean_logging: None) -> None:
    library = logging.getLogger("vaultq")
    mine = logging.StreamHandler()
    library.addHandler(mine)
    before = logging.getLogger().handlers[:]
    setup_logging("DEBUG", "json")
    assert logging.getLogger().handlers == before
    assert library.level == logging.DEBUG


def test_library_is_silent_in_a_script_without_logging_config(tmp_path: Path) -> None:
    # An audit denial (WARNING) must not reach stderr through Python's last-resort
    # handler: configuring output is the application's call.
    script = (
        "import vaultq, cli_apps\n"
        "try:\n"
        "    cli_apps.ping.enqueue_sync(cli_apps.Ping(1))\n"
        "except vaultq.AuthorizationDenied:\n"
        "    print('denied')\n"
    )
    env = worker_env(
        {
            "VAULTQ_BROKER": f"sqlite:///{tmp_path}/q.db",
            "VAULTQ_KEYS": vaultq.Keyring.generate().to_json(),
        }
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == "denied"
    assert out.stderr == ""


class Job(msgspec.Struct):
    n: int


@pytest.mark.anyio
async def test_one_info_line_per_finished_job_and_it_can_be_turned_down(
    tmp_path: Path, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(unique_name, f"sqlite:///{tmp_path}/q.db")

    @app.task(name="t.ok", retries=0)
    async def ok(job: Job) -> int:
        return job.n

    @app.task(name="t.bad", retries=1, backoff=0.01)
    async def bad(job: Job) -> int:
        raise RuntimeError("no")

    caplog.set_level(logging.INFO, logger=JOBS_LOGGER)
    async with running_worker(app):
        good = await ok.enqueue(Job(1))
        assert await good.result(timeout=10) == 1
        failing = await bad.enqueue(Job(2))
        with pytest.raises(vaultq.JobFailed):
            await failing.result(timeout=10)
    lines = [r for r in caplog.records if r.name == JOBS_LOGGER]
    by_job = [(r.vaultq["job_id"], r.vaultq["outcome"], r.vaultq["attempt"]) for r in lines]  # type: ignore[attr-defined]
    assert by_job == [
        (good.id, "succeeded", 1),
        (failing.id, "retrying", 1),
        (failing.id, "failed", 2),
    ]
    assert all(r.levelno == logging.INFO for r in lines)
    assert "task=t.ok queue=default attempt=1 duration=" in lines[0].getMessage()

    caplog.clear()
    logging.getLogger(JOBS_LOGGER).setLevel(logging.WARNING)
    try:
        async with running_worker(app):
            quiet = await ok.enqueue(Job(3))
            assert await quiet.result(timeout=10) == 3
    finally:
        logging.getLogger(JOBS_LOGGER).setLevel(logging.NOTSET)
    assert [r for r in caplog.records if r.name == JOBS_LOGGER] == []
    await app.aclose()
