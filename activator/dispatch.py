"""Where a KO call runs: inline on the event loop when its measured cost is tiny, else in the pool.

A thread hop (queueing, waking an inference thread, waking the loop) costs more than a small
model's whole run: about 150 µs of latency against a ~40 µs KFRE call. So each served function
(a key such as ``(id, version, endpoint)``) is timed on every call, and runs inline on the loop
while the median of its recent calls stays under ``inline_budget`` seconds; otherwise, and for
its first calls (nothing measured yet), it runs in the bounded thread pool. The choice follows
the measurement, not the name: the brain classifier (tens of milliseconds) stays in the pool; a
risk equation goes inline after its first few calls.

An inline call cannot be interrupted, so inline time is bounded by demotion instead: one call
over ``stall_limit`` seconds, or a median drifting over twice the budget, sends the function back
to the pool at once, where it is still timed and comes back once its median is under the budget
again. Batches always run in the pool, as jobs of their own.

Pool calls of one loop tick go to the pool as **one** job, which runs them in order and hands
each result back: under load that amortises the hop over every request that arrived together.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["Dispatcher"]

T = TypeVar("T")
_Job = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]", "_Cost | None"]

# A call that costs less than this runs inline: a thread hop would cost it more than it saves
# anything, and another request waits at most this long behind it.
INLINE_BUDGET_S = 0.0005
# One inline call this slow (the loop stalled for it) sends its function back to the pool at once.
STALL_LIMIT_S = 0.005
# Calls measured before a function may go inline, and the window its median is taken over.
_SAMPLES = 8


class _Cost:
    """The recent costs of one function's calls, and whether it runs inline now.

    A cost is the calling thread's CPU time: wall time in the pool would count the wait for the
    GIL (up to the 5 ms switch interval), and a busy machine's preemption, as the function's own.
    The stall check uses the wall time an inline call held the loop."""

    __slots__ = ("inline", "recent")

    def __init__(self) -> None:
        self.recent: deque[float] = deque(maxlen=_SAMPLES)
        self.inline = False

    def add(self, cpu: float, wall: float, budget: float, stall: float) -> None:
        self.recent.append(cpu)
        if wall > stall or cpu > stall:
            self.inline = False
            return
        if len(self.recent) < _SAMPLES:
            return
        median = statistics.median(self.recent)
        # Hysteresis: in under the budget, out over twice it, so a cost near it does not flap.
        self.inline = median < (2 * budget if self.inline else budget)


def _run_all(jobs: list[_Job]) -> list[tuple[bool, Any, float]]:
    """Each job's outcome (ok, value or exception) and its CPU time on this thread."""
    outcomes: list[tuple[bool, Any, float]] = []
    for function, args, _, _ in jobs:
        started = time.thread_time()
        try:
            outcomes.append((True, function(*args), time.thread_time() - started))
        except Exception as exc:  # handed to the awaiting request, which decides what it means
            outcomes.append((False, exc, time.thread_time() - started))
    return outcomes


class Dispatcher:
    """Runs blocking calls inline or in a bounded thread pool, from each function's measured cost."""

    def __init__(
        self,
        threads: int,
        max_batch: int = 64,
        inline_budget: float = INLINE_BUDGET_S,
        stall_limit: float = STALL_LIMIT_S,
    ) -> None:
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kgrid-inference")
        self.max_batch = max_batch
        self.inline_budget = inline_budget
        self.stall_limit = stall_limit
        self._costs: dict[Hashable, _Cost] = {}
        self._pending: list[_Job] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def is_inline(self, key: Hashable | None) -> bool:
        """Whether calls of ``key`` run inline now (they start in the pool until measured)."""
        cost = self._costs.get(key) if key is not None else None
        return cost is not None and cost.inline

    async def call(self, key: Hashable | None, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)``, inline or on an inference thread as ``key``'s measured cost says.

        ``key`` names what is called (a KO version's function), so its cost is learnt across
        requests; None: always the pool, unmeasured. Its exception, if any, is raised here
        either way."""
        if key is None:
            return await self._queue(function, args, None)
        cost = self._costs.get(key)
        if cost is None:
            cost = self._costs[key] = _Cost()
        if not cost.inline:
            return await self._queue(function, args, cost)
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return function(*args)
        finally:
            cpu = time.thread_time() - cpu
            cost.add(cpu, time.perf_counter() - wall, self.inline_budget, self.stall_limit)

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on an inference thread; its exception, if any, is raised here."""
        return await self._queue(function, args, None)

    async def run_alone(self, function: Callable[..., T], *args: Any) -> T:
        """Like :meth:`run`, as a job of its own: for long calls (batches) that should not hold others up."""
        loop = self._loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._submit(loop, [(function, args, future, None)])
        return await future

    async def _queue(self, function: Callable[..., T], args: tuple[Any, ...], cost: _Cost | None) -> T:
        loop = self._loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((function, args, future, cost))
        if len(self._pending) >= self.max_batch:
            self._flush()
        return await future

    def _flush(self) -> None:
        jobs, self._pending = self._pending, []
        if jobs:
            assert self._loop is not None
            self._submit(self._loop, jobs)

    def _submit(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job]) -> None:
        done = self.executor.submit(_run_all, jobs)
        done.add_done_callback(lambda f: loop.call_soon_threadsafe(self._deliver, jobs, f))

    def _deliver(self, jobs: list[_Job], done: Future[list[tuple[bool, Any, float]]]) -> None:
        if done.cancelled():  # shutting down: the requests waiting on these jobs end now, not never
            for _, _, future, _ in jobs:
                if not future.done():
                    future.cancel()
            return
        exc = done.exception()
        outcomes = done.result() if exc is None else [(False, exc, 0.0)] * len(jobs)
        for (_, _, future, cost), (ok, value, seconds) in zip(jobs, outcomes, strict=True):
            if cost is not None and exc is None:
                cost.add(seconds, seconds, self.inline_budget, self.stall_limit)
            if future.done():  # the request went away (client disconnected)
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
