"""The embedded broker's cross-process wake-up: an enqueue in one process ends the idle
wait of a fetch in another at once (a datagram to its socket beside the database); when
the channel is broken (its socket removed, its directory unusable) the fetch still finds
the job by polling. Waits here are liveness bounds, not timings: the waiting process
polls only once an hour in the delivery tests, so only a wake-up can end its wait."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from support.workers import make_app, worker_env

import vaultq
from vaultq.brokers.sqlite_wake import WakeSender, wake_dir

pytestmark = pytest.mark.anyio

WAITER = textwrap.dedent(
    """
    import asyncio, sys
    import vaultq.brokers.sqlite as sqlite
    from vaultq.brokers.sqlite import SqliteBroker

    db, poll, namespace = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    if poll:
        sqlite.POLL_MIN = sqlite.POLL_MAX = poll  # only a wake-up ends the wait early

    async def main() -> None:
        broker = SqliteBroker("sqlite:///" + db, namespace=namespace)
        await broker.connect()
        print("ready", flush=True)
        got = await broker.fetch(["default"], 1, consumer="c", lease=30, block=600)
        print("got", *[d.job_id for d in got], flush=True)
        await broker.close()

    asyncio.run(main())
    """
)


class Item(msgspec.Struct, frozen=True):
    n: int


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "q.db"


def _start_waiter(db: Path, poll: float, namespace: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WAITER, str(db), str(poll), namespace],
        stdout=subprocess.PIPE,
        text=True,
        env=worker_env(),
    )


def _line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().strip()


def _sockets(db: Path, bound: bool = True, within: float = 30.0) -> list[Path]:
    """The sockets in the wake directory, once at least one is there (``bound``)."""
    deadline = time.monotonic() + within
    while True:
        found = sorted(wake_dir(db).glob("*.sock")) if wake_dir(db).is_dir() else []
        if found or not bound or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def _finish(proc: subprocess.Popen[str], within: float = 60.0) -> str:
    try:
        out, _ = proc.communicate(timeout=within)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return out.strip()


@pytest.fixture
def app(db: Path, unique_name: str) -> Iterator[vaultq.App]:
    app = make_app(unique_name, f"sqlite:///{db}")
    yield app
    app.close()


def test_a_sync_enqueue_wakes_a_fetch_waiting_in_another_process(app: vaultq.App, db: Path) -> None:
    @app.task(name="wake.item")
    def item(job: Item) -> None:
        return None

    waiter = _start_waiter(db, 3600, app.name)
    assert _line(waiter) == "ready"
    assert _sockets(db), "the waiting fetch bound no wake-up socket"
    handle = item.enqueue_sync(Item(1))
    assert _finish(waiter) == f"got {handle.id}"
    # It tidied its socket away on close.
    assert _sockets(db, bound=False) == []


async def test_an_async_enqueue_wakes_a_fetch_waiting_in_another_process(
    app: vaultq.App, db: Path
) -> None:
    @app.task(name="wake.item")
    def item(job: Item) -> None:
        return None

    await (await app.broker()).connect()
    waiter = _start_waiter(db, 3600, app.name)
    assert _line(waiter) == "ready"
    assert _sockets(db)
    handle = await item.enqueue(Item(1))
    assert _finish(waiter) == f"got {handle.id}"


def test_with_its_socket_removed_the_fetch_still_finds_the_job_by_polling(
    app: vaultq.App, db: Path
) -> None:
    @app.task(name="wake.item")
    def item(job: Item) -> None:
        return None

    waiter = _start_waiter(db, 0, app.name)  # vaultq's own polling schedule
    assert _line(waiter) == "ready"
    for path in _sockets(db):
        path.unlink()  # the channel is broken: no sender can reach the waiter
    handle = item.enqueue_sync(Item(1))
    assert _finish(waiter) == f"got {handle.id}"


def test_with_no_usable_wake_directory_the_fetch_polls(app: vaultq.App, db: Path) -> None:
    @app.task(name="wake.item")
    def item(job: Item) -> None:
        return None

    db.parent.mkdir(parents=True, exist_ok=True)
    wake_dir(db).write_bytes(b"")  # a file where the directory would go: no socket
    waiter = _start_waiter(db, 0, app.name)
    assert _line(waiter) == "ready"
    handle = item.enqueue_sync(Item(1))
    assert _finish(waiter) == f"got {handle.id}"
    assert wake_dir(db).is_file()


def test_a_socket_left_by_a_dead_listener_is_removed_by_the_next_sender(db: Path) -> None:
    directory = wake_dir(db)
    directory.mkdir(parents=True, mode=0o700)
    stale = directory / "deadbeef0000.sock"
    left = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    left.bind(str(stale))
    left.close()  # as a killed worker leaves it: bound once, nobody reading
    live_path = directory / "cafe00000000.sock"
    live = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    live.bind(str(live_path))
    try:
        WakeSender(db).wake()
        assert not stale.exists()
        assert live.recv(16) == b"w"  # the live listener heard it
    finally:
        live.close()
        os.unlink(live_path)
