"""RedisBroker on a real Redis Cluster (3 masters) and behind a real Sentinel.

The servers are started once per module on free loopback ports (never 6379), without
persistence, in a temporary directory; ``redis-server`` and ``redis-cli`` come from PATH
(Debian's ``redis-server`` package ships both).

The cluster runs the whole broker conformance suite (imported from
``test_broker_contract``, with its ``make_broker`` fixture overridden below), plus the
cluster-specific cases: enqueue batches and idle fetches across queues on different
masters, a worker serving two such queues end to end, and concurrency/rate limits,
unique keys and tick claims on two such queues (their keys in each queue's slot).
Sentinel gets an end-to-end worker round trip through a ``redis+sentinel://`` URL.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import anyio
import msgspec
import pytest
import redis
from redis.cluster import RedisCluster as SyncCluster
from redis.crc import key_slot
from support.workers import make_app, running_worker

# The conformance suite, run here against the cluster through the fixtures below.
from test_broker_contract import *  # noqa: F403
from test_broker_contract import Q, ack, fetch, item

import vaultq
from vaultq.brokers.base import Broker, EnqueueItem
from vaultq.brokers.redis import QueueKeys, RedisBroker
from vaultq.errors import BrokerUnavailable, ConfigurationError
from vaultq.jobs import JobStatus
from vaultq.runtime.scheduler import Scheduler

# Replaces the imported module's marks.
pytestmark = [pytest.mark.anyio, pytest.mark.redis]

SERVICE = "vqmaster"
PASSWORD = "m4ster-pw"


# -- servers -------------------------------------------------------------------------------


def _binary(name: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.fail(
            f"{name} not found on PATH: install Debian's redis-server package "
            "(apt-get install -y redis-server), which ships redis-server and redis-cli"
        )
    return path


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cluster_port(taken: set[int]) -> int:
    """A free port P whose cluster bus port P + 10000 is free too."""
    for _ in range(200):
        port = random.randint(20000, 29999)  # noqa: S311 - not security relevant
        if port not in taken and port != 6379 and _bindable(port) and _bindable(port + 10000):
            taken.add(port)
            return port
    pytest.fail("no free loopback port pair for a cluster node")


def _start(args: list[str], workdir: Path, log: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*args, "--logfile", str(workdir / log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _server_args(port: int, workdir: Path) -> list[str]:
    return [
        _binary("redis-server"),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(workdir),
    ]  # fmt: skip


def _wait(check: Callable[[], bool], what: str, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            pytest.fail(f"{what} did not come up (logs in the test's temporary directory)")
        time.sleep(0.05)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _ping(port: int) -> bool:
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    finally:
        client.close()


@pytest.fixture(scope="module")
def cluster_ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """A 3-master Redis Cluster on loopback; yields the masters' ports."""
    cli = _binary("redis-cli")
    workdir = tmp_path_factory.mktemp("cluster")
    taken: set[int] = set()
    ports = [_cluster_port(taken) for _ in range(3)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            args = _server_args(port, workdir) + [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(workdir / f"nodes-{port}.conf"),
                "--cluster-node-timeout", "5000",
            ]  # fmt: skip
            procs.append(_start(args, workdir, f"redis-{port}.log"))
        for port in ports:
            _wait(lambda port=port: _ping(port), f"cluster node {port}", procs)  # type: ignore[misc]
        create = subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports)]
            + ["--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if create.returncode != 0:
            pytest.fail(f"redis-cli --cluster create failed:\n{create.stdout[-2000:]!r}")

        def ready() -> bool:
            for port in ports:
                client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
                try:
                    info = client.cluster("info")
                finally:
                    client.close()
                if info.get("cluster_state") != "ok":
                    return False
            return True

        _wait(ready, "cluster_state:ok", procs)
        yield ports
    finally:
        _stop(procs)


@pytest.fixture(scope="module")
def cluster_url(cluster_ports: list[int]) -> str:
    # Two startup nodes of three: the client discovers the third from CLUSTER SLOTS.
    return f"redis+cluster://127.0.0.1:{cluster_ports[0]},127.0.0.1:{cluster_ports[1]}/"


class SentinelSetup(NamedTuple):
    url: str
    sentinel: int
    replica: int
    master_process: subprocess.Popen[bytes]


def _client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, password=PASSWORD, socket_connect_timeout=0.5)


@pytest.fixture(scope="module")
def sentinel_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSetup]:
    """A password-protected master, its replica and one Sentinel watching them."""
    workdir = tmp_path_factory.mktemp("sentinel")
    taken: set[int] = set()
    master, replica, sentinel = (_cluster_port(taken) for _ in range(3))
    procs: list[subprocess.Popen[bytes]] = []
    auth = ["--requirepass", PASSWORD, "--masterauth", PASSWORD]
    try:
        procs.append(_start(_server_args(master, workdir) + auth, workdir, "master.log"))
        args = _server_args(replica, workdir) + auth + ["--replicaof", "127.0.0.1", str(master)]
        procs.append(_start(args, workdir, "replica.log"))

        def replicating() -> bool:
            client = _client(master)
            try:
                return int(client.info("replication")["connected_slaves"]) == 1
            finally:
                client.close()

        # Started after the replica is attached, the Sentinel sees it in its first INFO.
        _wait(replicating, "the replica", procs)
        conf = workdir / "sentinel.conf"
        conf.write_text(
            f"port {sentinel}\nbind 127.0.0.1\ndir {workdir}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {master} 1\n"
            f"sentinel auth-pass {SERVICE} {PASSWORD}\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
        )
        procs.append(_start([_binary("redis-server"), str(conf), "--sentinel"], workdir, "s.log"))

        def known() -> bool:
            client = redis.Redis(host="127.0.0.1", port=sentinel, socket_connect_timeout=0.5)
            try:
                addr = client.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", SERVICE)
                replicas = client.execute_command("SENTINEL REPLICAS", SERVICE)
            finally:
                client.close()
            return bool(addr) and int(addr[1]) == master and len(replicas) == 1

        _wait(known, "redis sentinel", procs)
        url = f"redis+sentinel://:{PASSWORD}@127.0.0.1:{sentinel}/{SERVICE}/0"
        yield SentinelSetup(url, sentinel, replica, procs[0])
    finally:
        _stop(procs)


@pytest.fixture(scope="module")
def sentinel_url(sentinel_setup: SentinelSetup) -> str:
    return sentinel_setup.url


# -- the conformance suite on the cluster --------------------------------------------------


@pytest.fixture  # type: ignore[no-redef]  # overrides the imported fixture on purpose
def make_broker(cluster_url: str, unique_name: str) -> Callable[[str], Broker]:
    """Overrides test_broker_contract's: every imported contract test runs on the cluster."""
    return lambda suffix: RedisBroker(cluster_url, namespace=unique_name + suffix)


# -- cluster specifics ---------------------------------------------------------------------


def _node_of(ports: list[int], key: str) -> int:
    """The port of the master serving ``key``'s slot."""
    client = SyncCluster(host="127.0.0.1", port=ports[0])
    try:
        node = client.get_node_from_key(key)
        assert node is not None
        return int(node.port)
    finally:
        client.close()


def _two_queues_on_two_masters(ports: list[int], namespace: str) -> tuple[str, str]:
    first = "qa"
    home = _node_of(ports, QueueKeys(namespace, first).stream)
    for i in range(100):
        other = f"qb{i}"
        if _node_of(ports, QueueKeys(namespace, other).stream) != home:
            return first, other
    raise AssertionError("no queue name found on another master")


@pytest.fixture
async def cluster_broker(
    cluster_url: str, unique_name: str, anyio_backend: str
) -> AsyncIterator[RedisBroker]:
    b = RedisBroker(cluster_url, namespace=unique_name)
    await b.connect()
    try:
        yield b
    finally:
        await b.close()


async def test_cluster_url_gives_a_cluster_client(cluster_broker: RedisBroker) -> None:
    from redis.asyncio.cluster import RedisCluster

    assert isinstance(cluster_broker._client, RedisCluster)
    assert cluster_broker.url.startswith("redis+cluster://127.0.0.1:")


async def test_batch_and_idle_wait_across_masters(
    cluster_broker: RedisBroker, cluster_ports: list[int], unique_name: str
) -> None:
    qa, qb = _two_queues_on_two_masters(cluster_ports, unique_name)
    slots = {key_slot(cluster_broker.keys(q).stream.encode()) for q in (qa, qb)}
    assert len(slots) == 2
    # one batch over both masters, a delayed job included: written per slot
    await cluster_broker.enqueue(
        [
            EnqueueItem(qa, "a1", b"ea"),
            EnqueueItem(qb, "b1", b"eb"),
            EnqueueItem(qb, "b2", b"eb2", not_before=time.time() + 60),
        ]
    )
    assert (await cluster_broker.stats(qa)).ready == 1
    stats_b = await cluster_broker.stats(qb)
    assert (stats_b.ready, stats_b.delayed) == (1, 1)
    got = await fetch(cluster_broker, 10, queues=(qa, qb), lease=30)
    assert sorted(d.job_id for d in got) == ["a1", "b1"]
    await cluster_broker.settle([ack(d) for d in got])  # one settle batch over two masters
    assert [await cluster_broker.get_result(d.queue, d.job_id) for d in got] == [b"ok", b"ok"]

    # an idle fetch over both queues wakes on an entry in either slot (concurrent waits)
    for target, job in ((qb, "b3"), (qa, "a3")):
        producer = cluster_broker.clone()
        await producer.connect()
        woke: list[float] = []

        async def waiter() -> None:
            start = time.monotonic()
            found = await fetch(cluster_broker, 1, queues=(qa, qb), block=5.0, lease=30)
            woke.append(time.monotonic() - start)
            assert [d.job_id for d in found] == [job]  # noqa: B023 - awaited in the loop

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await anyio.sleep(0.3)
                await producer.enqueue([item(job, queue=target)])  # noqa: B023
        finally:
            await producer.close()
        assert 0.25 <= woke[0] < 2.0, woke
    # the connections dropped by cancelled waits are reopened on demand
    await cluster_broker.enqueue([item("a4", queue=qa)])
    assert [d.job_id for d in await fetch(cluster_broker, 5, queues=(qb, qa), lease=30)] == ["a4"]
    assert await fetch(cluster_broker, 5, queues=(qa, qb), block=0.3) == []


class Job(msgspec.Struct, frozen=True):
    n: int


async def test_worker_serves_two_queues_on_two_masters(
    cluster_url: str, cluster_ports: list[int], unique_name: str, anyio_backend: str
) -> None:
    qa, qb = _two_queues_on_two_masters(cluster_ports, unique_name)
    app = make_app(unique_name, cluster_url)
    seen: list[tuple[str, int]] = []

    @app.task(name="t.double", queue=qa)
    async def double(job: Job) -> int:
        seen.append((qa, job.n))
        return job.n * 2

    @app.task(name="t.square", queue=qb)
    def square(job: Job) -> int:
        seen.append((qb, job.n))
        return job.n * job.n

    try:
        async with running_worker(app, queues=[qa, qb], block=0.5):
            doubles = await double.enqueue_many([Job(n) for n in range(5)])
            squares = await square.enqueue_many([Job(n) for n in range(5)])
            # let the worker go idle, then wake it through the second master
            await anyio.sleep(0.8)
            late = await square.enqueue(Job(9))
            assert [await h.result(timeout=10) for h in doubles] == [0, 2, 4, 6, 8]
            assert [await h.result(timeout=10) for h in squares] == [0, 1, 4, 9, 16]
            assert await late.result(timeout=10) == 81
            assert await late.status() == JobStatus.SUCCEEDED
    finally:
        await app.aclose()
    assert sorted(seen) == sorted(
        [(qa, n) for n in range(5)] + [(qb, n) for n in range(5)] + [(qb, 9)]
    )
    # the jobs really lived on two different masters
    assert _node_of(cluster_ports, QueueKeys(unique_name, qa).stream) != _node_of(
        cluster_ports, QueueKeys(unique_name, qb).stream
    )


# -- issue 14's keys on the cluster: limits, unique keys, schedule marks ----------------------


class Work(msgspec.Struct, frozen=True):
    n: int = 0


def _keys_under(ports: list[int], prefix: str) -> list[str]:
    """Every key named ``<prefix>*`` across the cluster's masters."""
    client = SyncCluster(host="127.0.0.1", port=ports[0])
    try:
        return sorted(k.decode() for k in client.scan_iter(match=prefix + "*", count=1000))
    finally:
        client.close()


async def test_limits_unique_keys_and_ticks_on_queues_on_two_masters(
    cluster_url: str, cluster_ports: list[int], unique_name: str, anyio_backend: str
) -> None:
    """The Lua scripts of max_concurrency slots, the GCRA rate, unique-key locks and tick
    claims touch several keys each: all of them carry their queue's hash tag, so each
    script runs in one slot, here with two queues on two masters."""
    qa, qb = _two_queues_on_two_masters(cluster_ports, unique_name)
    app = make_app(unique_name, cluster_url)
    running = peak = 0
    paced_starts: list[float] = []
    ticks_ran: list[str] = []

    @app.task(name="t.pair", queue=qa, max_concurrency=2)
    async def pair(job: Work) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.1)
        running -= 1
        return job.n

    @app.task(name="t.paced", queue=qb, rate_limit="20/s")
    async def paced(job: Work) -> int:
        paced_starts.append(time.monotonic())
        return job.n

    @app.task(name="t.once", queue=qb, unique=lambda job: f"invoice:{job.n}")
    async def once(job: Work) -> int:
        return job.n

    @app.task(name="t.beat-a", queue=qa, policy=vaultq.require_role("vaultq:scheduler"))
    async def beat_a(job: Work) -> None:
        ticks_ran.append(vaultq.current_job().job_id)

    @app.task(name="t.beat-b", queue=qb, policy=vaultq.require_role("vaultq:scheduler"))
    async def beat_b(job: Work) -> None:
        ticks_ran.append(vaultq.current_job().job_id)

    app.schedule(beat_a, every=10, name="beat-a")
    app.schedule(beat_b, every=10, name="beat-b")
    try:
        # Unique keys: a second enqueue while the first job is queued returns it.
        first = await once.enqueue(Work(1))
        assert (await once.enqueue(Work(1))).id == first.id
        (lock,) = _keys_under(cluster_ports, QueueKeys(unique_name, qb).unique(""))
        assert key_slot(lock.encode()) == key_slot(QueueKeys(unique_name, qb).stream.encode())

        # Tick claims: two schedulers (two apps, two connections) race on a driven clock.
        now = [datetime(2026, 12, 1, 10, 0, 3, tzinfo=UTC).timestamp()]
        other = make_app(unique_name, cluster_url, app.keyring)
        for task in (beat_a, beat_b):
            other.schedule(
                other.task(name=task.name, queue=task.queue)(_nothing),
                every=10,
                name=task.name.removeprefix("t."),
            )
        racers = [Scheduler(a, clock=lambda: now[0]) for a in (app, other)]
        await racers[0].run_pass()  # first start: the marks are set
        now[0] += 10
        async with anyio.create_task_group() as tg:
            for racer in racers:
                tg.start_soon(racer.run_pass)
        assert racers[0].fired + racers[1].fired == 2  # one tick per schedule, once
        await other.aclose()

        async with running_worker(app, queues=[qa, qb], concurrency=8, schedules=False):
            pairs = await pair.enqueue_many([Work(n) for n in range(8)])
            paceds = await paced.enqueue_many([Work(n) for n in range(10)])
            assert [await h.result(timeout=30) for h in pairs] == list(range(8))
            assert [await h.result(timeout=30) for h in paceds] == list(range(10))
            assert await first.result(timeout=30) == 1
            with anyio.fail_after(30):
                while len(ticks_ran) < 2:
                    await anyio.sleep(0.05)
        # The settled job freed its key: the next enqueue makes a new job.
        assert (await once.enqueue(Work(1))).id != first.id
    finally:
        await app.aclose()
    assert peak == 2
    gaps = [b - a for a, b in zip(paced_starts, paced_starts[1:])]
    # 20/s: one start per 0.05 s (9 gaps; a little early is the clock estimate)
    assert paced_starts[-1] - paced_starts[0] >= 0.4, gaps
    assert sorted(ticks_ran) == ["tick:beat-a:20261201T100010Z", "tick:beat-b:20261201T100010Z"]
    # Every key the features wrote sits in its queue's slot (on that queue's master).
    for queue, kinds in ((qa, ("limit:c:", "schedules")), (qb, ("limit:r:", "schedules"))):
        keys = QueueKeys(unique_name, queue)
        home = key_slot(keys.stream.encode())
        for kind in kinds:
            found = _keys_under(cluster_ports, keys.prefix + kind)
            assert found, (queue, kind)
            assert {key_slot(k.encode()) for k in found} == {home}


def _nothing(job: Work) -> None: ...


# -- sentinel -------------------------------------------------------------------------------


async def test_sentinel_url_round_trip(
    sentinel_url: str, unique_name: str, anyio_backend: str
) -> None:
    broker = RedisBroker(sentinel_url, namespace=unique_name)
    assert PASSWORD not in broker.url and PASSWORD not in repr(broker)
    app = make_app(unique_name, sentinel_url)

    @app.task(name="t.echo")
    async def echo(job: Job) -> int:
        return job.n + 1

    try:
        async with running_worker(app):
            handles = await echo.enqueue_many([Job(n) for n in range(3)])
            assert [await h.result(timeout=10) for h in handles] == [1, 2, 3]
        stats = await (await app.broker()).stats(app.default_queue)
        assert (stats.ready, stats.running) == (0, 0)
    finally:
        await app.aclose()
        await broker.close()


@pytest.mark.parametrize(
    "bad",
    [
        "redis+cluster://127.0.0.1:7000/3",  # a cluster has only db 0
        "redis+cluster://127.0.0.1/",  # startup nodes need a port
        "redis+sentinel://127.0.0.1:26379/",  # no service name
    ],
)
async def test_topology_url_errors(bad: str, anyio_backend: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid Redis URL"):
        await RedisBroker(bad, namespace="x").connect()


async def test_sentinel_failover_moves_the_broker_to_the_new_master(
    sentinel_setup: SentinelSetup, unique_name: str, anyio_backend: str
) -> None:
    """The master dies; the Sentinel promotes the replica and the broker follows it.
    Runs last in this module (it kills the master)."""
    broker = RedisBroker(sentinel_setup.url, namespace=unique_name)
    sentinel = redis.Redis(host="127.0.0.1", port=sentinel_setup.sentinel)
    try:
        await broker.enqueue([item("before")])
        (d,) = await fetch(broker, lease=30)
        await broker.settle([ack(d)])
        sentinel_setup.master_process.kill()
        sentinel_setup.master_process.wait()

        def promoted() -> bool:
            addr = sentinel.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", SERVICE)
            return int(addr[1]) == sentinel_setup.replica

        _wait(promoted, "the failover", [])
        # Until the pool reconnects the broker reports the outage as BrokerUnavailable
        # (the worker backs off and retries); then it works on the new master.
        with anyio.fail_after(20):
            while True:
                try:
                    await broker.enqueue([item("after")])
                    break
                except BrokerUnavailable:
                    await anyio.sleep(0.2)
        (d,) = await fetch(broker, lease=30, block=2.0)
        assert d.job_id == "after"
        await broker.settle([ack(d)])
        assert await broker.get_result(Q, "after") == b"ok"
        new_master = _client(sentinel_setup.replica)
        try:
            assert new_master.info("replication")["role"] == "master"
            assert new_master.lindex(broker.keys(Q).result("after"), 0) == b"ok"
        finally:
            new_master.close()
    finally:
        sentinel.close()
        await broker.close()


# -- enqueue_sync through the synchronous writer ---------------------------------------------


async def test_enqueue_sync_writes_through_cluster_and_sentinel_clients(
    cluster_url: str, sentinel_url: str, unique_name: str, anyio_backend: str
) -> None:
    from vaultq.brokers.redis_writes import RedisSyncWriter

    for url in (cluster_url, sentinel_url):
        app = make_app(unique_name, url)

        @app.task(name="t.sync_echo")
        async def echo(job: Job) -> int:
            return job.n + 1

        try:
            assert isinstance(app.sync_writer(), RedisSyncWriter)
            one = echo.enqueue_sync(Job(1), unique_key="k")
            same = echo.enqueue_sync(Job(2), unique_key="k")
            assert one.id == same.id
            many = echo.enqueue_many_sync([Job(n) for n in range(3)])
            later = echo.enqueue_sync(Job(9), delay=3600)
            async with running_worker(app):
                results = [await h.result(timeout=10) for h in (one, *many)]
            assert results == [2, 1, 2, 3]
            stats = await (await app.broker()).stats(app.default_queue)
            assert (stats.ready, stats.delayed) == (0, 1), later.id
        finally:
            await app.aclose()
            app.close()
