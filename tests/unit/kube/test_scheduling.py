import asyncio
import time

from clusterpki.kube.scheduling import Scheduler


def recorder() -> tuple[list, object]:
    fired: list = []

    async def fire(key):
        fired.append(key)
    return fired, fire


async def run_for(scheduler: Scheduler, seconds: float) -> None:
    task = asyncio.create_task(scheduler.run())
    await asyncio.sleep(seconds)
    task.cancel()


async def test_fires_each_key_once_at_its_time():
    fired: list[tuple[str, float]] = []
    start = time.time()

    async def fire(key):
        fired.append((key, time.time() - start))

    scheduler = Scheduler(fire)
    scheduler.at("b", start + 0.2)
    scheduler.at("a", start + 0.1)
    await run_for(scheduler, 0.4)
    assert [k for k, _ in fired] == ["a", "b"]
    assert 0.09 <= fired[0][1] < 0.18 and 0.19 <= fired[1][1] < 0.28


async def test_requests_coalesce_to_the_earliest():
    fired, fire = recorder()
    scheduler = Scheduler(fire)
    for delay in (0.3, 0.05, 0.1, 0.05):
        scheduler.after("x", delay)
    await run_for(scheduler, 0.45)
    assert fired == ["x"]


async def test_replace_moves_the_time_later_and_none_cancels():
    fired, fire = recorder()
    scheduler = Scheduler(fire)
    scheduler.after("x", 0.05)
    scheduler.replace("x", time.time() + 10)
    scheduler.after("y", 0.05)
    scheduler.replace("y", None)
    await run_for(scheduler, 0.2)
    assert fired == []
    assert scheduler.due("x") is not None and scheduler.due("y") is None


async def test_a_new_earlier_time_wakes_the_sleeping_loop():
    fired, fire = recorder()
    scheduler = Scheduler(fire)
    scheduler.after("late", 100)
    task = asyncio.create_task(scheduler.run())
    await asyncio.sleep(0.05)
    scheduler.after("soon", 0.05)
    await asyncio.sleep(0.2)
    task.cancel()
    assert fired == ["soon"]


async def test_a_cancellation_that_meets_a_new_due_time_still_stops_the_loop():
    """Seen in CI: the operator did not stop, its Scheduler loop cancelled yet waiting. Python 3.11's
    ``asyncio.wait_for`` returns the inner result when the cancellation arrives as the inner wait
    completes, so a loop built on it never ended. The cancellation must win."""
    scheduler = Scheduler(_never)
    scheduler.after("late", 1000)  # the loop waits with a timeout
    task = asyncio.create_task(scheduler.run())
    await asyncio.sleep(0)
    scheduler.after("k", 500)   # the event is set ...
    task.cancel()               # ... and the cancellation arrives in the same step
    done, _ = await asyncio.wait({task}, timeout=2)
    assert done and task.cancelled()


async def _never(key):
    raise AssertionError(f"nothing is due yet, but {key} fired")
