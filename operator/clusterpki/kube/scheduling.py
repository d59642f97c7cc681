"""When to look at a ClusterPKI again: one heap of due times for the whole fleet.

A ClusterPKI is reconciled again at its ``status.nextRenewal`` (to the second), or shortly after
something asks for it (a drifted Secret). One task sleeps until the earliest due time, so the cost
is O(log n) per ClusterPKI and nothing polls. Requests for the same ClusterPKI coalesce: only the
earliest due time counts, so a burst of Secret events makes one reconcile.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Awaitable, Callable, Hashable


class Scheduler:
    def __init__(self, fire: Callable[[Hashable], Awaitable[None]], clock: Callable[[], float] = time.time,
                 retry_after: float = 10.0) -> None:
        self._fire = fire
        self._retry_after = retry_after
        self._clock = clock
        self._due: dict[Hashable, float] = {}
        self._heap: list[tuple[float, int, Hashable]] = []
        self._counter = 0
        self._changed = asyncio.Event()
        self._running: set[asyncio.Task] = set()

    def at(self, key: Hashable, when: float) -> None:
        """Fire ``key`` at ``when`` (a Unix time), unless it is already due earlier."""
        if key in self._due and self._due[key] <= when:
            return
        self._due[key] = when
        self._counter += 1
        heapq.heappush(self._heap, (when, self._counter, key))
        self._changed.set()

    def replace(self, key: Hashable, when: float | None) -> None:
        """Make ``when`` the one due time of ``key`` (None: nothing due)."""
        self._due.pop(key, None)
        if when is not None:
            self.at(key, when)

    def after(self, key: Hashable, delay: float) -> None:
        self.at(key, self._clock() + delay)

    def forget(self, key: Hashable) -> None:
        self._due.pop(key, None)

    def due(self, key: Hashable) -> float | None:
        return self._due.get(key)

    async def stop(self, task: asyncio.Task) -> None:
        """Cancel the loop ``task`` running :meth:`run` and every fire still running, and wait."""
        tasks = [task, *self._running]
        for each in tasks:
            each.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _guarded(self, key: Hashable) -> None:
        """Fire ``key``; an unexpected failure is logged and the key is tried again later, so that
        nothing ever falls off the schedule."""
        try:
            await self._fire(key)
        except asyncio.CancelledError:
            raise
        except Exception:
            logging.getLogger("clusterpki.kube.scheduling").exception(f"Scheduled work for {key} failed; retrying")
            self.after(key, self._retry_after)

    async def run(self) -> None:
        """Fire keys as they fall due, forever (until cancelled)."""
        while True:
            self._changed.clear()
            now = self._clock()
            while self._heap and self._heap[0][0] <= now:
                when, _, key = heapq.heappop(self._heap)
                if self._due.get(key) == when:  # else superseded by an earlier or replaced time
                    del self._due[key]
                    task = asyncio.create_task(self._guarded(key))
                    self._running.add(task)
                    task.add_done_callback(self._running.discard)
            timeout = self._heap[0][0] - now if self._heap else None
            try:  # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
                async with asyncio.timeout(timeout):  # meets the event being set, and this loop never ends
                    await self._changed.wait()
            except TimeoutError:
                pass
