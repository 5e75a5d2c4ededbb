"""Redis-specific behaviour of RedisBroker: key layout, bounded memory, errors, URLs."""

from __future__ import annotations

import hashlib
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
import redis
import redis.asyncio as aioredis
from redis.crc import key_slot

from vaultq.brokers import broker_from_url, redis_layout
from vaultq.brokers.base import Ack, Bury, Delivery, EnqueueItem, Retry
from vaultq.brokers.redis import ENQUEUE_DEDUP_WINDOW, GROUP, QueueKeys, RedisBroker
from vaultq.brokers.redis_layout import load_script
from vaultq.errors import BrokerError, BrokerUnavailable, ConfigurationError

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

Q = "jobs"


@pytest.fixture
async def broker(
    redis_url: str, unique_name: str, anyio_backend: str
) -> AsyncIterator[RedisBroker]:
    b = RedisBroker(redis_url, namespace=unique_name)
    await b.connect()
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


def _keys_of(raw: redis.Redis, namespace: str) -> list[bytes]:
    return sorted(raw.scan_iter(match=f"vaultq:{{{namespace}:*", count=1000))


async def _one(b: RedisBroker, consumer: str = "c1", lease: float = 5.0) -> Delivery:
    (d,) = await b.fetch([Q], 1, consumer=consumer, lease=lease, block=1.0)
    return d


# -- key layout --------------------------------------------------------------------------


async def test_every_key_of_a_queue_shares_one_hash_slot(
    broker: RedisBroker, raw: redis.Redis, unique_name: str
) -> None:
    now = time.time()
    await broker.enqueue(
        [EnqueueItem(Q, f"k{i}", b"e") for i in range(4)]
        + [EnqueueItem(Q, "later", b"e", not_before=now + 60)]
    )
    running = await _one(broker)  # claim key
    done, retried, buried = (await broker.fetch([Q], 3, consumer="c1", lease=5, block=0))[:3]
    await broker.settle(
        [
            Ack(done, b"result", 60, now + 3600),  # result + finished-id set + index
            Retry(retried, now + 60),  # delayed + delayed data
            Bury(buried, "failed", "x", None, 60, None),  # dead stream
        ]
    )
    await broker.cancel(Q, "k9", ttl=60)  # cancel marker
    keys = _keys_of(raw, unique_name)
    tag = f"{{{unique_name}:{Q}}}".encode()
    assert len(keys) >= 9
    assert all(k.startswith(b"vaultq:" + tag + b":") for k in keys)
    assert {key_slot(k) for k in keys} == {key_slot(tag[1:-1])}
    k = broker.keys(Q)
    names = {x.decode() for x in keys}
    hour = int((now + 3600) // 3600)
    expected = {
        k.stream,
        k.delayed,
        k.delayed_data,
        k.dead,
        k.done_index,
        k.done(hour),
        k.result(done.job_id),
        k.claim(running.job_id),
        k.cancel("k9"),
    }
    assert expected <= names
    assert raw.type(k.stream) == b"stream" and raw.type(k.delayed) == b"zset"
    assert raw.xinfo_groups(k.stream)[0]["name"] == GROUP.encode()


def test_key_names_are_built_in_one_place() -> None:
    k = QueueKeys("shop", "emails")
    assert k.stream == "vaultq:{shop:emails}:stream"
    assert k.claim("J1") == "vaultq:{shop:emails}:claim:J1"
    assert k.result("J1") == "vaultq:{shop:emails}:result:J1"
    assert k.cancel("J1") == "vaultq:{shop:emails}:cancel:J1"
    assert k.done(500000) == "vaultq:{shop:emails}:done:500000"
    # The Lua header derives the same names from the prefix.
    header = QueueKeys.lua_header()
    assert "'claim:'" in header and "'result:'" in header and f"'{GROUP}'" in header


_DEFINES = re.compile(r"^local (?:function )?(\w+)", re.M)


def test_scripts_carry_only_the_helpers_they_use() -> None:
    # Redis runs a script's whole text on every call: the enqueue script (the one-by-one
    # producer's whole server cost) carries none of the settlement helpers, and every
    # helper or key name a script refers to is defined in it (Redis scripts cannot read
    # undefined globals; each script also runs in this suite).
    lua = Path(redis_layout.__file__).parent / "lua"
    defined = set(_DEFINES.findall((lua / "common.lua").read_text(encoding="utf-8")))
    defined |= set(_DEFINES.findall(QueueKeys.lua_header()))
    enqueue = load_script("enqueue")
    assert "add_dead" not in enqueue and "CLAIM" not in enqueue
    assert "local function finished_flags" in enqueue
    for path in sorted(lua.glob("*.lua")):
        if path.name == "common.lua":
            continue
        body = path.read_text(encoding="utf-8")
        text = load_script(path.stem)
        assert text.endswith(body)
        head = text[: len(text) - len(body)]
        used = set(re.findall(r"[A-Za-z_]\w*", text)) & defined
        assert used <= set(_DEFINES.findall(head)), path.name


@pytest.mark.parametrize(
    ("namespace", "queue"), [("a:b", "q"), ("ns", "q{x}"), ("", "q"), ("ns", "")]
)
def test_names_that_would_break_the_layout_are_refused(namespace: str, queue: str) -> None:
    with pytest.raises(ConfigurationError):
        RedisBroker("redis://localhost/0", namespace=namespace).keys(queue)


# -- memory stays bounded ----------------------------------------------------------------


async def test_settled_jobs_leave_nothing_behind(
    broker: RedisBroker, raw: redis.Redis, unique_name: str
) -> None:
    n = 50
    now = time.time()
    await broker.enqueue([EnqueueItem(Q, f"m{i}", b"x" * 100) for i in range(n)])
    await broker.enqueue([EnqueueItem(Q, f"d{i}", b"y", not_before=now + 0.2) for i in range(5)])
    got: list[Delivery] = []
    with anyio.fail_after(5):
        while len(got) < n + 5:
            got += await broker.fetch([Q], 100, consumer="c1", lease=5, block=0.5)
    await broker.settle([Ack(d, None, 60, now + 60) for d in got])
    k = broker.keys(Q)
    assert raw.xlen(k.stream) == 0
    assert raw.xpending(k.stream, GROUP)["pending"] == 0
    assert raw.zcard(k.delayed) == 0 and raw.hlen(k.delayed_data) == 0
    assert list(raw.scan_iter(match=k.prefix + "claim:*")) == []
    left = {x.decode() for x in _keys_of(raw, unique_name)}
    # The enqueue retry markers expire by themselves within the dedup window.
    markers = {x for x in left if x.startswith(k.prefix + k.ENQUEUED)}
    assert len(markers) == n + 5
    assert all(0 < raw.pttl(m) <= ENQUEUE_DEDUP_WINDOW * 1000 for m in markers)
    # Otherwise only the stream (with its group) and the finished-id memory remain.
    assert left - markers == {k.stream, k.done_index, k.done(int((now + 60) // 3600))}


async def test_finished_id_memory_expires_by_hour(broker: RedisBroker, raw: redis.Redis) -> None:
    await broker.enqueue([EnqueueItem(Q, "f", b"e")])
    d = await _one(broker)
    until = time.time() + 2 * 3600
    await broker.settle([Ack(d, b"r", 30, until)])
    k = broker.keys(Q)
    hour = int(until // 3600)
    assert raw.sismember(k.done(hour), "f")
    expire_at = time.time() + raw.ttl(k.done(hour))
    # Never shorter than asked, at most two hours longer.
    assert until - 2 <= expire_at <= until + 2 * 3600 + 2
    assert 0 < raw.pttl(k.result("f")) <= 30_000
    assert raw.ttl(k.done_index) > 0


async def test_result_waiters_do_not_consume(broker: RedisBroker, raw: redis.Redis) -> None:
    await broker.enqueue([EnqueueItem(Q, "w", b"e")])
    d = await _one(broker)
    await broker.settle([Ack(d, b"r", 30, time.time() + 60)])
    for _ in range(3):
        assert await broker.wait_result(Q, "w", 1.0) == b"r"
    k = broker.keys(Q)
    assert raw.llen(k.result("w")) == 1
    assert raw.pttl(k.result("w")) > 0


async def test_dead_letter_holds_ids_and_sealed_envelope_only(
    broker: RedisBroker, raw: redis.Redis
) -> None:
    await broker.enqueue([EnqueueItem(Q, "dl", b"sealed-bytes")])
    d = await _one(broker)
    await broker.settle([Bury(d, "denied", "policy said no", None, 60, None)])
    entries = raw.xrange(broker.keys(Q).dead)
    assert entries
    ((_, fields),) = entries
    assert fields is not None
    assert set(fields) == {b"id", b"reason", b"detail", b"att", b"at", b"size", b"env"}
    assert fields[b"env"] == b"sealed-bytes"
    assert fields[b"size"] == b"12"


async def test_closing_forgets_consumers_that_hold_nothing(
    redis_url: str, unique_name: str, raw: redis.Redis
) -> None:
    b = RedisBroker(redis_url, namespace=unique_name)
    await b.enqueue([EnqueueItem(Q, "a", b"e"), EnqueueItem(Q, "b", b"e")])
    await b.fetch([Q], 1, consumer="busy", lease=5, block=0)
    (d,) = await b.fetch([Q], 1, consumer="done", lease=5, block=0)
    await b.settle([Ack(d, None, 60, time.time() + 60)])
    stream = b.keys(Q).stream
    assert {c["name"] for c in raw.xinfo_consumers(stream, GROUP)} == {b"busy", b"done"}
    await b.close()
    # "busy" still holds an entry, so it stays: nothing pending is ever dropped.
    assert {c["name"] for c in raw.xinfo_consumers(stream, GROUP)} == {b"busy"}


# -- scripts, errors, URLs ---------------------------------------------------------------


async def test_script_cache_flush_is_survived(broker: RedisBroker, raw: redis.Redis) -> None:
    await broker.enqueue([EnqueueItem(Q, f"s{i}", b"e") for i in range(3)])
    ds = await broker.fetch([Q], 3, consumer="c1", lease=5, block=0)
    raw.script_flush()
    await broker.extend(ds, consumer="c1", lease=5)
    raw.script_flush()
    await broker.settle([Ack(d, None, 60, time.time() + 60) for d in ds])
    raw.script_flush()
    assert (await broker.stats(Q)).running == 0
    assert await broker.fetch([Q], 3, consumer="c1", lease=5, block=0) == []


async def test_foreign_stream_entries_are_dropped(broker: RedisBroker, raw: redis.Redis) -> None:
    await broker.enqueue([EnqueueItem(Q, "real", b"e")])
    await broker.fetch([Q], 1, consumer="c1", lease=5, block=0)
    raw.xadd(broker.keys(Q).stream, {"junk": "1"})
    assert await broker.fetch([Q], 5, consumer="c1", lease=5, block=0) == []
    assert raw.xlen(broker.keys(Q).stream) == 1  # only "real" (running) is left


async def test_unreachable_server_raises_broker_unavailable(unique_name: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connection refused
        b = RedisBroker(f"redis://127.0.0.1:{port}/0", namespace=unique_name)
        with pytest.raises(BrokerUnavailable, match="check the URL"):
            await b.connect()
        with pytest.raises(BrokerUnavailable):
            await b.fetch([Q], 1, consumer="c", lease=1, block=0)
        with pytest.raises(BrokerUnavailable):
            await b.enqueue([EnqueueItem(Q, "x", b"e")])
        await b.close()


def _start_server(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    assert binary, "redis-server is needed (see tests/conftest.py)"
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
    client.close()
    return proc


async def test_server_restart_is_a_transient_error(tmp_path: Path, unique_name: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _start_server(port, tmp_path)
    b = RedisBroker(f"redis://127.0.0.1:{port}/0", namespace=unique_name)
    try:
        await b.connect()
        await b.enqueue([EnqueueItem(Q, "before", b"e")])
        proc.terminate()
        proc.wait(timeout=10)
        with pytest.raises(BrokerUnavailable):
            await b.fetch([Q], 1, consumer="c", lease=1, block=0)
        proc = _start_server(port, tmp_path)  # empty again, and without our scripts
        await b.enqueue([EnqueueItem(Q, "after", b"e")])
        (d,) = await b.fetch([Q], 1, consumer="c", lease=1, block=0)
        assert d.job_id == "after"
        await b.settle([Ack(d, b"r", 60, time.time() + 60)])
        assert await b.get_result(Q, "after") == b"r"
    finally:
        await b.close()
        proc.terminate()
        proc.wait(timeout=10)


async def test_redis_errors_become_broker_errors(broker: RedisBroker, raw: redis.Redis) -> None:
    raw.set(broker.keys(Q).stream, "not a stream")
    with pytest.raises(BrokerError) as info:
        await broker.fetch([Q], 1, consumer="c", lease=1, block=0)
    assert not isinstance(info.value, BrokerUnavailable)


def test_url_masks_the_password() -> None:
    b = RedisBroker("redis://worker:s3cret@redis.internal:6380/2", namespace="shop")
    assert b.url == "redis://worker:***@redis.internal:6380/2"
    assert "s3cret" not in repr(b)
    assert b.clone().url == b.url
    assert b.shared
    tls = RedisBroker("rediss://:pw@h/0", namespace="shop")
    assert "pw" not in tls.url


def test_url_schemes() -> None:
    assert isinstance(broker_from_url("redis://localhost/0", namespace="a"), RedisBroker)
    assert isinstance(broker_from_url("unix:///tmp/redis.sock", namespace="a"), RedisBroker)
    # Cluster and Sentinel URLs are accepted (tests/test_redis_topologies.py runs them).
    for url in ("redis+sentinel://h:26379/mymaster", "redis+cluster://h1:7000,h2:7001/"):
        assert isinstance(broker_from_url(url, namespace="a"), RedisBroker)
    with pytest.raises(ConfigurationError, match="redis\\+sentinel://"):
        RedisBroker("memcached://h/0", namespace="a")


async def test_injected_client_is_used_and_left_open(
    redis_url: str, unique_name: str, anyio_backend: str
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        b = RedisBroker("redis+sentinel://ignored/", namespace=unique_name, client=client)
        await b.enqueue([EnqueueItem(Q, "inj", b"e")])
        assert (await b.stats(Q)).ready == 1
        await b.close()
        assert await client.ping()
        clone = RedisBroker(
            "redis://unused/0", namespace=unique_name, client_factory=lambda: client
        ).clone()
        assert (await clone.stats(Q)).ready == 1
    finally:
        await client.aclose()


async def test_clone_is_unconnected(broker: RedisBroker) -> None:
    clone = broker.clone()
    assert clone is not broker and clone.namespace == broker.namespace
    assert clone._client is None
    await clone.connect()
    await clone.connect()
    await clone.close()
    await clone.close()


async def test_blocking_reads_fit_in_a_short_socket_timeout(
    redis_url: str, unique_name: str, anyio_backend: str
) -> None:
    b = RedisBroker(redis_url + "?socket_timeout=0.3", namespace=unique_name)
    try:
        start = time.monotonic()
        assert await b.wait_result(Q, "none", 0.8) is None
        assert await b.fetch([Q], 1, consumer="c", lease=1, block=0.8) == []
        assert 1.5 <= time.monotonic() - start < 4.0
    finally:
        await b.close()


@pytest.mark.anyio
async def test_enqueue_is_idempotent_per_job_id(redis_url: str, unique_name: str) -> None:
    # A producer that retries after an unreadable reply sends the same sealed batch
    # again: inside the dedup window the second write is a no-op, not a second entry.
    from vaultq.brokers.base import EnqueueItem
    from vaultq.brokers.redis import RedisBroker

    broker = RedisBroker(redis_url, namespace=unique_name)
    await broker.connect()
    try:
        batch = [
            EnqueueItem(queue="q", job_id="a", envelope=b"1"),
            EnqueueItem(queue="q", job_id="b", envelope=b"2", not_before=time.time() + 60),
            EnqueueItem(queue="r", job_id="c", envelope=b"3"),
        ]
        await broker.enqueue(batch)
        await broker.enqueue(batch)
        q, r = await broker.stats("q"), await broker.stats("r")
        assert (q.ready, q.delayed, r.ready) == (1, 1, 1)
        # The same id sealed anew (other bytes) is a new write, as before.
        await broker.enqueue([EnqueueItem(queue="q", job_id="a", envelope=b"1 again")])
        assert (await broker.stats("q")).ready == 2
    finally:
        await broker.close()


async def test_enqueue_retry_is_skipped_while_running_and_written_once_finished(
    broker: RedisBroker, raw: redis.Redis
) -> None:
    # The marker holds the producer's digest of the sealed bytes (SHA-1, 20 bytes).
    job = EnqueueItem(queue=Q, job_id="r1", envelope=b"sealed-bytes")
    await broker.enqueue([job])
    marker = broker.keys(Q).enqueued("r1")
    assert raw.get(marker) == hashlib.sha1(b"sealed-bytes", usedforsecurity=False).digest()
    d = await _one(broker)
    await broker.enqueue([job])  # a retry while the job runs: no second entry
    assert (await broker.stats(Q)).ready == 0
    await broker.settle([Ack(d, b"res", 60, time.time() + 60)])
    # A copy of the finished job is written, and the worker sees it as finished.
    await broker.enqueue([job])
    (copy,) = await broker.fetch([Q], 5, consumer="c1", lease=5, block=0)
    assert copy.job_id == "r1" and copy.completed
    # A delayed retry is skipped the same way, and written when sealed anew.
    later = EnqueueItem(queue=Q, job_id="r2", envelope=b"x", not_before=time.time() + 60)
    await broker.enqueue([later, later])
    await broker.enqueue([EnqueueItem(Q, "r2", b"y", not_before=time.time() + 60)])
    assert (await broker.stats(Q)).delayed == 2
