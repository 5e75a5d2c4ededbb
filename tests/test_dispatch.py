"""The worker's hand-off of fetched slots to its consumers (vaultq/runtime/dispatch.py):
a batch goes out with one pending wake-up at a time, yet a job that awaits never holds
up the rest of its batch, a consumer cancelled while woken passes its wake-up on, and
closing ends every consumer once the slots are taken. The worker tests run it end to
end; these pin the cases a drain of no-op jobs would not reach."""

from __future__ import annotations

import anyio
import pytest

from vaultq.brokers.base import Delivery
from vaultq.runtime.dispatch import Dispatch
from vaultq.runtime.slots import JobSlot

pytestmark = pytest.mark.anyio


def slot(tag: str) -> JobSlot:
    return JobSlot(Delivery(queue="q", job_id=tag, envelope=b"", attempt=1, tag=tag))


async def test_jobs_that_await_run_side_by_side() -> None:
    # Each "job" waits until every slot of the batch is taken: only if a consumer that
    # takes a slot wakes another one for the rest can all three finish.
    dispatch = Dispatch()
    taken: list[str] = []
    all_taken = anyio.Event()
    done: list[str] = []

    async def consumer() -> None:
        while (s := await dispatch.get()) is not None:
            taken.append(s.delivery.tag)
            if len(taken) == 3:
                all_taken.set()
            await all_taken.wait()
            done.append(s.delivery.tag)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(consumer)
            await anyio.sleep(0.01)  # every consumer idle
            dispatch.put([slot("a"), slot("b"), slot("c")])
            await all_taken.wait()
            dispatch.close()
    assert sorted(done) == ["a", "b", "c"]


async def test_a_consumer_that_does_not_await_takes_the_batch_without_waking_others() -> None:
    dispatch = Dispatch()
    runs: dict[int, list[str]] = {0: [], 1: []}

    async def consumer(me: int) -> None:
        while (s := await dispatch.get()) is not None:
            runs[me].append(s.delivery.tag)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consumer, 0)
            tg.start_soon(consumer, 1)
            await anyio.sleep(0.01)
            dispatch.put([slot(str(i)) for i in range(50)])
            await anyio.sleep(0.01)
            dispatch.close()
    # All 50 ran, each once; the first consumer woken took them in order without a
    # task switch in between, so the other one got none of them.
    taken = runs[0] + runs[1]
    assert sorted(taken, key=int) == [str(i) for i in range(50)]
    assert [len(runs[0]), len(runs[1])] in ([50, 0], [0, 50])


async def test_a_woken_consumer_cancelled_before_it_runs_passes_the_wake_up_on() -> None:
    dispatch = Dispatch()
    got: list[tuple[str, str]] = []

    async def consumer(me: str) -> None:
        while (s := await dispatch.get()) is not None:
            got.append((me, s.delivery.tag))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as first:
                async with anyio.create_task_group() as inner:
                    inner.start_soon(consumer, "first")  # idle first: the one woken below
                    await anyio.sleep(0.01)
                    tg.start_soon(consumer, "second")
                    await anyio.sleep(0.01)
                    # Cancel the first consumer, then wake it before it could resume.
                    first.cancel()
                    dispatch.put([slot("x")])
            await anyio.sleep(0.05)
            taken_before_close = list(got)
            dispatch.close()
    assert taken_before_close == [("second", "x")]


async def test_close_lets_consumers_take_what_is_left_then_end() -> None:
    dispatch = Dispatch()
    dispatch.put([slot("a"), slot("b")])
    dispatch.close()
    assert len(dispatch) == 2
    with anyio.fail_after(5):
        assert (await dispatch.get()) is not None
        assert (await dispatch.get()) is not None
        assert await dispatch.get() is None
        assert await dispatch.get() is None
