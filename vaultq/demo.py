"""``vaultq demo``: a first run that shows the product, with no server to install.

It opens the embedded SQLite broker in a temporary directory (removed at exit; ``--dir``
keeps it), enqueues a handful of real jobs, shows that the broker holds only sealed
bytes, tampers with one job the way an attacker with write access to the broker could,
revokes a principal after enqueue, runs an in-process worker, and prints what happened
to each job as a table. It exits 0 when every job ended as the demo expects.

This module is imported by every ``vaultq`` command (for :func:`add_demo_parser`), so
everything heavy is imported inside the functions.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from vaultq.files import private_dir

if TYPE_CHECKING:
    from vaultq._demo_jobs import DemoApp
    from vaultq.jobs import JobHandle

Say = Callable[..., None]

__all__ = ["EXPECTED", "DemoResult", "Row", "add_demo_parser", "main", "run_demo"]

# Plaintext markers: none of them may appear in the broker's files, before or after the run.
CARD_ALICE = "card_visa_4242424242424242"
CARD_BOB = "card_mc_5555555555554444"
REPORT_TITLE = "Quarterly sales by region"
FETCH_URL = "https://rates.example.invalid/eur"
PRINCIPAL_IDS = ("user:alice", "user:bob", "user:ana")

EXPECTED: dict[str, str] = {
    "report": "succeeded",
    "charge for alice": "succeeded",
    "charge for mallory": "denied at enqueue",
    "charge for bob": "denied",
    "slow export": "timed_out",
    "flaky fetch": "succeeded",
    "tampered charge": "rejected",
}
"""The status each demo job must end with (by the label in the table's first column)."""


@dataclass
class Row:
    """One line of the demo's table."""

    label: str
    task: str
    job_id: str
    principal: str
    status: str
    detail: str
    attempts: str = "-"
    seconds: str = "-"


@dataclass
class DemoResult:
    """What :func:`run_demo` saw: the table's rows and any plaintext found in the broker."""

    rows: list[Row]
    leaks: list[str]

    @property
    def statuses(self) -> dict[str, str]:
        return {r.label: r.status for r in self.rows}

    @property
    def ok(self) -> bool:
        """Every job ended as :data:`EXPECTED` and no plaintext reached the broker."""
        return self.statuses == EXPECTED and not self.leaks


# -- CLI -------------------------------------------------------------------------------------


def add_demo_parser(subparsers: Any) -> None:
    """Register ``vaultq demo`` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "demo",
        help="run a few jobs on the embedded broker and show what happened to each",
        description="Start a worker on the embedded SQLite broker, enqueue a few real jobs "
        "(a report, a payment with a Secret field and a permission policy, a job that times "
        "out, two that are denied, one that fails then succeeds on retry, one tampered with "
        "in the broker) and print what happened to each. Needs no server and no keys: the "
        "broker lives in a temporary directory, removed at exit, unless --dir is given.",
    )
    p.add_argument(
        "--dir",
        metavar="PATH",
        help="keep the database, the generated key file and the report in PATH "
        "(e.g. ./vaultq-demo) instead of a temporary directory",
    )
    p.add_argument(
        "--log-level",
        default="ERROR",
        help="vaultq's log level on stderr (default ERROR; INFO shows the worker and audit log)",
    )
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    result = run_demo(Path(args.dir) if args.dir else None)
    return 0 if result.ok else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m examples.quickstart`` and friends: the same as ``vaultq demo``."""
    from vaultq.cli import main as cli_main

    return cli_main(["demo", *(sys.argv[1:] if argv is None else argv)])


# -- the run ---------------------------------------------------------------------------------


def run_demo(directory: Path | None = None, *, out: TextIO | None = None) -> DemoResult:
    """Run the demo; print to ``out`` (default stdout) and return what happened.

    ``directory``: where the broker's database, key file and the report go (created if
    missing, kept). None: a temporary directory, removed before returning.
    """
    import anyio

    stream = out if out is not None else sys.stdout
    keep = directory is not None
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="vaultq-demo-"))
    directory = directory.resolve()
    private_dir(directory)  # it will hold the key file: 0700 whatever the umask
    try:
        return anyio.run(_run, directory, keep, stream)
    finally:
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)


async def _run(directory: Path, keep: bool, out: TextIO) -> DemoResult:
    from vaultq._demo_jobs import build

    def say(line: str = "") -> None:
        print(line, file=out, flush=True)

    started = time.monotonic()
    db = directory / "vaultq.db"
    keyfile = directory / "vaultq.keys"
    had_keys = keyfile.exists()
    demo = build(f"sqlite:///{db}")
    app = demo.app
    keyring = app.keyring  # generated beside the database on first use (mode 0600)
    where = "kept" if keep else "temporary, removed at exit; --dir PATH keeps it"
    say(f"vaultq demo: embedded SQLite broker {db} ({where})")
    if app.keyring_source == str(keyfile):
        source = f"{'loaded' if had_keys else 'generated'} {keyfile} (mode 0600)"
    else:
        source = f"from {app.keyring_source}"
    say(
        f"  keys: {source}: AES-256-GCM encryption + {keyring.signing_algorithm} "
        f"signatures, signer id {keyring.signer_id}"
    )

    try:
        rows, handles = await _enqueue_all(demo, say)
        _show_sealed(db, handles, say)
        forged = _tamper(db, handles["tampered charge"].id, say)
        demo.revoked.add("user:bob")
        say("  revoked user:bob's access after enqueue (the worker re-checks every policy)")
        values = await _work(demo, handles, rows, say, forged=forged)
        ids = {h.id for h in handles.values()}
        dead = await (await app.broker()).dead_letters(app.default_queue)
        reasons = ", ".join(sorted(d.reason for d in dead if d.job_id in ids))
        say(f"  dead letters (envelopes kept sealed): {reasons}")
        leaks = _plaintext_hits(db)
        say(
            f"  after the run: {db.name} and its WAL scanned again (results are sealed too): "
            + ("plaintext found: " + ", ".join(leaks) if leaks else "no plaintext marker found")
        )
    finally:
        await app.aclose()

    if keep:
        _save_report(directory, values.get("report"), say)
    say()
    _print_table(rows, say)
    say()
    result = DemoResult(rows, leaks)
    verdict = "every job ended as expected" if result.ok else "UNEXPECTED outcome: see above"
    say(f"{len(rows)} jobs in {time.monotonic() - started:.1f} s: {verdict}.")
    if result.ok:
        say("Next: README.md (a 20-line app, Redis in production) and docs/security.md.")
    return result


async def _enqueue_all(demo: DemoApp, say: Say) -> tuple[list[Row], dict[str, JobHandle[Any]]]:
    from vaultq._demo_jobs import Charge, Export, Fetch, ReportRequest, Sale
    from vaultq.errors import AuthorizationDenied
    from vaultq.payload import Secret
    from vaultq.principal import Principal

    analyst = Principal("user:ana", roles=frozenset({"analyst"}))
    alice = Principal("user:alice", permissions=frozenset({"payments.charge"}))
    bob = Principal("user:bob", permissions=frozenset({"payments.charge"}))
    mallory = Principal("user:mallory")
    sales = [
        Sale(region, month, amount)
        for region, month, amount in [
            ("EU", "Jan", 4200.0),
            ("EU", "Feb", 3900.5),
            ("US", "Jan", 5100.0),
            ("US", "Feb", 2650.25),
            ("APAC", "Jan", 1800.0),
            ("APAC", "Feb", 2210.75),
        ]
    ]
    rows: list[Row] = []
    handles: dict[str, JobHandle[Any]] = {}
    say()
    say("1. enqueue: each payload is type-checked, authorized, then sealed before it is stored")
    handles["report"] = await demo.report.enqueue(
        ReportRequest(REPORT_TITLE, sales), principal=analyst
    )
    charge = Charge(order_id=1001, amount_cents=4200, card_token=Secret(CARD_ALICE))
    handles["charge for alice"] = await demo.charge.enqueue(charge, principal=alice)
    say(f"  a payload as it prints and logs: {charge!r}")
    try:
        await demo.charge.enqueue(
            Charge(order_id=1002, amount_cents=99900, card_token=Secret(CARD_ALICE)),
            principal=mallory,
        )
        rows.append(Row("charge for mallory", "charge_card", "-", mallory.id, "enqueued", ""))
    except AuthorizationDenied as exc:
        rows.append(
            Row(
                "charge for mallory",
                "charge_card",
                "-",
                mallory.id,
                "denied at enqueue",
                "AuthorizationDenied raised to the caller: lacks payments.charge; nothing enqueued",
            )
        )
        say(f"  charge for user:mallory refused at once: AuthorizationDenied by {exc.policy}")
    handles["charge for bob"] = await demo.charge.enqueue(
        Charge(order_id=1003, amount_cents=1500, card_token=Secret(CARD_BOB)), principal=bob
    )
    handles["slow export"] = await demo.export.enqueue(Export(rows=50_000, seconds_per_1000=0.2))
    handles["flaky fetch"] = await demo.fetch.enqueue(Fetch(FETCH_URL))
    handles["tampered charge"] = await demo.charge.enqueue(
        Charge(order_id=1004, amount_cents=2500, card_token=Secret(CARD_ALICE)), principal=alice
    )
    say(f"  {len(handles)} jobs enqueued; the worker has not started yet")
    return rows, handles


def _show_sealed(db: Path, handles: dict[str, JobHandle[Any]], say: Say) -> None:
    say()
    say("2. what the broker stores: sealed envelopes (msgpack header + AES-GCM body + signature)")
    ids = {h.id: label for label, h in handles.items()}
    with _connect(db, readonly=True) as conn:
        stored = conn.execute("SELECT job_id, envelope FROM vaultq_jobs").fetchall()
    for job_id, envelope in stored:
        label = ids.get(job_id)
        if label is None:
            continue
        blob = bytes(envelope)
        hits = [m for m in _markers() if m.encode() in blob]
        say(
            f"  {label:<18} job {job_id}  {len(blob):>4} bytes  "
            + ("PLAINTEXT: " + ", ".join(hits) if hits else "no plaintext")
        )
    leaks = _plaintext_hits(db)
    say(
        f"  raw scan of {db.name} and its WAL for the card tokens, principal ids, report "
        "title and URL: " + ("FOUND " + ", ".join(leaks) if leaks else "none found")
    )


def _tamper(db: Path, job_id: str, say: Say) -> bytes:
    """Flip one byte of a stored envelope, as anyone with write access to the broker could;
    returns the forged envelope."""
    with _connect(db, readonly=False) as conn:
        (envelope,) = conn.execute(
            "SELECT envelope FROM vaultq_jobs WHERE job_id = ?", (job_id,)
        ).fetchone()
        forged = bytearray(envelope)
        forged[len(forged) // 2] ^= 0x01
        conn.execute(
            "UPDATE vaultq_jobs SET envelope = ? WHERE job_id = ?", (bytes(forged), job_id)
        )
    say()
    say(f"3. attacker's move: flipped one byte of job {job_id}'s envelope in {db.name}")
    return bytes(forged)


async def _work(
    demo: DemoApp,
    handles: dict[str, JobHandle[Any]],
    rows: list[Row],
    say: Say,
    *,
    forged: bytes,
) -> dict[str, Any]:
    """Run a worker until every job has an outcome; returns the successful results."""
    import anyio

    from vaultq.errors import JobError
    from vaultq.runtime.worker import Worker

    worker = Worker(demo.app, concurrency=4, grace=1.0, block=0.1)
    say()
    say(f"4. worker: in-process, concurrency {worker.concurrency}; waiting for every result")
    results: dict[str, Row] = {}
    values: dict[str, Any] = {}
    async with anyio.create_task_group() as tg:
        ready = anyio.Event()
        tg.start_soon(lambda: worker.run(started=ready))
        await ready.wait()
        try:
            for label, handle in handles.items():
                if label == "tampered charge":
                    results[label] = await _rejected_row(demo, label, handle, forged)
                    continue
                value: Any = None
                with contextlib.suppress(JobError):  # the outcome below says why
                    value = await handle.result(timeout=20)
                results[label] = await _row(label, handle, value)
                if value is not None:
                    values[label] = value
        finally:
            worker.stop()
    for label in handles:
        rows.append(results[label])
    rows.sort(key=lambda r: list(EXPECTED).index(r.label) if r.label in EXPECTED else 99)
    return values


async def _rejected_row(demo: DemoApp, label: str, handle: JobHandle[Any], forged: bytes) -> Row:
    """The tampered job: it failed authentication, so the worker writes no outcome under
    the id it names (junk must not answer for an honest job); its dead letter shows it."""
    import anyio

    from vaultq.envelope import open_job
    from vaultq.errors import EnvelopeError

    broker = await demo.app.broker()
    task = (handle.task_name or "?").rsplit(".", 1)[-1]
    with anyio.move_on_after(20):
        while True:
            letters = await broker.dead_letters(demo.app.default_queue)
            if any(d.job_id == handle.id for d in letters):
                break
            await anyio.sleep(0.05)  # polled: the broker has no "dead letter added" event
        try:  # what the worker's audit log names; the dead letter says only "unauthenticated"
            open_job(
                forged,
                demo.app.keyring,
                app=demo.app.name,
                tasks=demo.app.tasks,
                now=time.time(),
                skew=math.inf,
            )
        except EnvelopeError as exc:
            why = exc.reason
        else:  # pragma: no cover - a flipped byte never opens
            why = "unexpectedly valid"
        return Row(
            label,
            task,
            handle.id,
            "user:alice",
            "rejected",
            f"envelope {why}: never ran, dead-lettered; no outcome written under its id",
            "1",
        )
    return Row(label, task, handle.id, "user:alice", "unfinished", "no dead letter within 20 s")


async def _row(label: str, handle: JobHandle[Any], value: Any) -> Row:
    from vaultq._demo_jobs import Receipt, Report

    body = await handle.outcome()
    principal = {
        "report": "user:ana",
        "charge for alice": "user:alice",
        "charge for bob": "user:bob",
        "tampered charge": "user:alice",
    }.get(label, "-")
    task = (handle.task_name or "?").rsplit(".", 1)[-1]
    if body is None:
        return Row(label, task, handle.id, principal, "unfinished", "no result within 20 s")
    detail: str
    if isinstance(value, Report):
        detail = (
            f"{value.regions} regions, total {value.total:,.2f}, best {value.best_region}; "
            f"CSV {len(value.csv)} B, SVG {len(value.svg)} B"
        )
    elif isinstance(value, Receipt):
        detail = (
            f"order {value.order_id}: charged {value.charged_cents / 100:.2f} "
            f"to card ...{value.card_last4}"
        )
    elif value is not None:
        detail = str(value)
    elif body.status == "denied":
        detail = "policy re-checked in the worker: access revoked after enqueue; never ran"
    elif body.status == "rejected":
        detail = f"envelope {body.error}: never ran, dead-lettered"
    elif body.status == "timed_out":
        detail = f"{body.error}; cancelled"
    else:
        detail = body.error or body.error_type or body.status
    seconds = "-"
    if body.started_at is not None and body.finished_at is not None:
        seconds = f"{body.finished_at - body.started_at:.2f}s"
    attempts = str(body.attempts) if body.attempts else "-"
    return Row(label, task, handle.id, principal, body.status, detail, attempts, seconds)


def _save_report(directory: Path, report: Any, say: Say) -> None:
    from vaultq._demo_jobs import Report

    if not isinstance(report, Report):
        return
    (directory / "report.csv").write_text(report.csv, encoding="utf-8")
    (directory / "report.svg").write_text(report.svg, encoding="utf-8")
    say(f"  report saved: {directory / 'report.csv'} and {directory / 'report.svg'}")


# -- helpers ---------------------------------------------------------------------------------


def _markers() -> list[str]:
    return [CARD_ALICE, CARD_BOB, REPORT_TITLE, FETCH_URL, *PRINCIPAL_IDS]


def _plaintext_hits(db: Path) -> list[str]:
    """Markers found anywhere in the database file or its WAL (raw bytes, free pages too)."""
    found: list[str] = []
    blobs = [p.read_bytes() for p in (db, db.with_name(db.name + "-wal")) if p.exists()]
    for marker in _markers():
        if any(marker.encode() in blob for blob in blobs):
            found.append(marker)
    return found


class _connect:
    """A short-lived sqlite3 connection to the demo's database (closed on exit)."""

    def __init__(self, db: Path, *, readonly: bool) -> None:
        uri = f"file:{db}?mode=ro" if readonly else f"file:{db}"
        self.conn = sqlite3.connect(uri, uri=True, timeout=10)

    def __enter__(self) -> sqlite3.Connection:
        return self.conn

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self.conn.commit()
        finally:
            self.conn.close()


def _print_table(rows: list[Row], say: Say) -> None:
    headers = ("job", "task", "principal", "status", "tries", "time", "result or reason")
    cells = [
        (r.label, r.task, r.principal, r.status, r.attempts, r.seconds, r.detail) for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers[:-1])]

    def line(values: tuple[str, ...]) -> str:
        head = "  ".join(v.ljust(w) for v, w in zip(values[:-1], widths, strict=True))
        return f"{head}  {values[-1]}"

    say(line(headers))
    say(line((*("-" * w for w in widths), "-" * 16)))
    for c in cells:
        say(line(c))
