"""The activator's capture: one record per call, committed before the answer leaves (group commit).

Requests hand their records to :class:`CaptureWriter` and await a future; one thread commits
everything queued since its last commit in one transaction, then wakes every waiter. Under load
that is one commit per group of requests, not per request, and no answer is sent whose record is
not committed. When the store fails: ``fail-closed`` (the default) answers 503 problem+json saying
why; ``best-effort`` answers anyway and counts the lost records (``kgrid_capture_lost_records``).

The core reports each call to ``ko.recorder`` (a :class:`kgrid_py.ko.CallEvent`); here every KO's
recorder is :func:`_to_sink`, which hands the event to the request that made the call through a
context variable set by :func:`run_captured` on the inference thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from activator.problems import Problem
from kgrid_py.ko import CallEvent, KnowledgeObject
from kgrid_py.learning.capture import records_from_event
from kgrid_py.learning.records import CallRecord
from kgrid_py.learning.store import CaptureStore, StoreError
from kgrid_py.learning.subjects import SubjectKeyer, SubjectSecretError

__all__ = ["POLICIES", "Capture", "CaptureWriter", "Captured", "run_captured"]

log = logging.getLogger("activator.capture")

POLICIES = ("fail-closed", "best-effort")
MAX_QUEUED_RECORDS = 50_000  # past this a request is refused at once rather than queued
COMMIT_WAIT_S = 15.0
SUBJECT_HEADER = "x-subject-id"

_sink: ContextVar[list[CallEvent] | None] = ContextVar("kgrid_capture_sink", default=None)


def _to_sink(event: CallEvent) -> None:
    events = _sink.get()
    if events is not None:
        events.append(event)


@dataclass
class Captured:
    """What an inference job returns under capture: its value or exception, and the core's events."""

    ok: bool
    value: Any
    events: list[CallEvent]

    def unwrap(self) -> Any:
        if not self.ok:
            raise self.value
        return self.value


def run_captured(ko: KnowledgeObject, function: Callable[..., Any], *args: Any) -> Captured:
    """``function(*args)`` on this thread, collecting the CallEvents ``ko`` reports; never raises."""
    if ko.recorder is not _to_sink:
        ko.recorder = _to_sink
    events: list[CallEvent] = []
    token = _sink.set(events)
    try:
        return Captured(True, function(*args), events)
    except Exception as exc:  # the request decides what it means, after its record is committed
        return Captured(False, exc, events)
    finally:
        _sink.reset(token)


class CaptureWriter:
    """One commit thread; ``await commit(records)`` returns once they are committed (or raises StoreError)."""

    def __init__(self, store: CaptureStore) -> None:
        self.store = store
        self._queue: list[tuple[list[CallRecord], asyncio.Future[None], asyncio.AbstractEventLoop]] = []
        self._queued = 0
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._closed = False
        self.commits = 0
        self._thread = threading.Thread(target=self._run, name="kgrid-capture-writer", daemon=True)
        self._thread.start()

    async def commit(self, records: list[CallRecord]) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._closed:
                raise StoreError("the capture writer is closed")
            if self._queued + len(records) > MAX_QUEUED_RECORDS:
                raise StoreError(f"{self._queued} records already wait for the capture store")
            self._queue.append((records, future, loop))
            self._queued += len(records)
            self._ready.notify()
        try:
            await asyncio.wait_for(asyncio.shield(future), COMMIT_WAIT_S)
        except TimeoutError:
            raise StoreError(f"the capture store did not commit within {COMMIT_WAIT_S:g} s") from None

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if not self._queue and self._closed:
                    return
                group, self._queue, self._queued = self._queue, [], 0
            records = [r for rs, _, _ in group for r in rs]
            error: BaseException | None = None
            try:
                self.store.write_calls(records)
                self.commits += 1
            except Exception as exc:  # every waiter learns of it; none is told "committed"
                error = exc if isinstance(exc, StoreError) else StoreError(str(exc))
            for _, future, loop in group:
                loop.call_soon_threadsafe(_settle, future, error)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._ready.notify_all()
        self._thread.join(timeout=30)
        self.store.close()


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class Capture:
    """The activator's capture: site, subject keyer, policy, writer; built in the lifespan."""

    def __init__(
        self, store: CaptureStore, *, site: str, keyer: SubjectKeyer | None, policy: str, on_lost: Callable[[int], None]
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"capture policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.site = site
        self.keyer = keyer
        self.policy = policy
        self.writer = CaptureWriter(store)
        self.on_lost = on_lost

    def subject_key_of(self, subject: str | None) -> Any:
        """Refuse (400) a subject this server cannot key, before any computing."""
        if subject is None:
            return None
        if self.keyer is None:
            raise Problem(400, "X-Subject-Id was sent, but this server has no subject secret to key it with")
        try:
            self.keyer.key(subject)
        except SubjectSecretError as exc:
            raise Problem(400, f"X-Subject-Id: {exc}") from None
        return subject

    async def record(
        self,
        captured: Captured,
        *,
        channel: str,
        caller: str,
        subject: str | None = None,
        inputs: Any = None,
        capture_id: str | None = None,
    ) -> list[str]:
        """Commit the records of ``captured``'s events; the ids. Fail-closed: 503 if not committed."""
        records: list[CallRecord] = []
        for i, event in enumerate(captured.events):
            records.extend(
                records_from_event(
                    event,
                    site=self.site,
                    channel=channel,
                    caller=caller,
                    keyer=self.keyer,
                    subject=subject,
                    inputs=inputs if len(captured.events) == 1 else None,
                    capture_id=capture_id if i == 0 else None,
                )
            )
        try:
            await self.writer.commit(records)
        except StoreError as exc:
            if self.policy == "best-effort":
                self.on_lost(len(records))
                log.warning("capture: %d record(s) lost (best-effort): %s", len(records), exc)
                return [r.id for r in records]
            raise Problem(
                503,
                f"this answer cannot be given: its audit record was not stored (capture store: {exc})",
                headers={"Retry-After": "5"},
            ) from None
        return [r.id for r in records]

    def close(self) -> None:
        self.writer.close()


def subject_of(request: Request) -> str | None:
    """The patient id a caller sent in ``X-Subject-Id`` (keyed before storing; never logged)."""
    value = request.headers.get(SUBJECT_HEADER)
    return value if value else None
