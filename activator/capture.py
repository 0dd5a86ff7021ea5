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
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.requests import Request

from activator.problems import Problem
from kgrid_py.ko import CallEvent, KnowledgeObject
from kgrid_py.learning.capture import encode_json, rows_from_event
from kgrid_py.learning.ids import id_from_uuid
from kgrid_py.learning.records import COLUMNS
from kgrid_py.learning.store import CaptureStore, StoreError
from kgrid_py.learning.subjects import SubjectKeyer, SubjectSecretError

__all__ = ["POLICIES", "Capture", "CaptureWriter", "Captured", "refused_event", "run_captured", "subject_of"]

log = logging.getLogger("activator.capture")

POLICIES = ("fail-closed", "best-effort")
MAX_QUEUED_RECORDS = 50_000  # past this a request is refused at once rather than queued
COMMIT_WAIT_S = 15.0
CHECKPOINT_EVERY_RECORDS = 2_000  # records committed on the loop between WAL checkpoints (on the thread)
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


Row = tuple[Any, ...]
Build = Callable[[], list[Row]]
_STATUS, _ERROR = COLUMNS.index("status"), COLUMNS.index("error")


class CaptureWriter:
    """One commit thread; ``await commit(build)`` returns once ``build()``'s rows are committed.

    ``build`` runs on the writer thread, so encoding records (JSON, HMAC, ids) costs the event
    loop nothing; a build that raises fails only its own request (StoreError), never the group.
    A group's waiters are woken with one callback per event loop, not one each: every
    cross-thread wake-up is a write to the loop's self-pipe and a turn of the loop.
    """

    def __init__(self, store: CaptureStore, on_commit: Callable[[int], None] | None = None) -> None:
        self.store = store
        self.on_commit = on_commit  # told each commit's record count
        # Where a commit costs no fsync (SQLite, synchronous=normal) the records of one event-loop
        # tick are committed on the loop itself, after the tick's callbacks: ~0.1 ms, less than the
        # two thread hops it saves. A busy store (another writer holds the lock) or any other
        # store falls back to the writer thread, which may wait; it also checkpoints the WAL.
        self.on_loop = store.writes_without_fsync
        self._tick: list[tuple[Build, int, asyncio.Future[None]]] = []
        self._since_checkpoint = 0
        self._queue: list[tuple[Build, int, asyncio.Future[None], asyncio.AbstractEventLoop]] = []
        self._queued = 0
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._closed = False
        self._checkpoint_due = False
        self.commits = 0
        self._thread = threading.Thread(target=self._run, name="kgrid-capture-writer", daemon=True)
        self._thread.start()

    async def commit(self, build: Build, count: int) -> None:
        """Queue ``build`` (about ``count`` rows) and wait until its rows are committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if self.on_loop:
            if self._closed:
                raise StoreError("the capture writer is closed")
            if not self._tick:
                loop.call_soon(self._commit_tick, loop)
            self._tick.append((build, count, future))  # settled by _commit_tick, or by the thread when busy
        else:
            self._enqueue(build, count, future, loop)
        await self._wait(future)

    def _enqueue(self, build: Build, count: int, future: asyncio.Future[None], loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            if self._closed:
                raise StoreError("the capture writer is closed")
            if self._queued + count > MAX_QUEUED_RECORDS:
                raise StoreError(f"{self._queued} records already wait for the capture store")
            self._queue.append((build, count, future, loop))
            self._queued += count
            self._ready.notify()

    async def _wait(self, future: asyncio.Future[None]) -> None:
        # asyncio.timeout, not wait_for(shield(...)), which costs a task and a second future per
        # request. A request that times out or is cancelled cancels its future; the writer skips it.
        try:
            async with asyncio.timeout(COMMIT_WAIT_S):
                await future
        except TimeoutError:
            raise StoreError(f"the capture store did not commit within {COMMIT_WAIT_S:g} s") from None

    def _commit_tick(self, loop: asyncio.AbstractEventLoop) -> None:
        """Commit every record this loop tick queued, on the loop; a busy store hands them to the thread."""
        group, self._tick = self._tick, []
        rows: list[Row] = []
        built: list[tuple[list[Row], int, asyncio.Future[None]]] = []
        for build, count, future in group:
            if future.done():  # cancelled (the client went away): not answered, so no record
                continue
            own, error = _build(build)
            if error is not None:
                _settle([(future, error)])
                continue
            rows.extend(own)
            built.append((own, count, future))
        if not rows:
            return
        try:
            committed = self.store.write_rows_now(rows)
        except StoreError as exc:
            _settle([(future, exc) for _, _, future in built])
            return
        if not committed:  # another writer holds the lock: the thread waits for it, the loop does not
            for own, count, future in built:
                try:
                    self._enqueue(lambda own=own: own, count, future, loop)
                except StoreError as exc:
                    _settle([(future, exc)])
            return
        self._committed(len(rows))
        _settle([(future, None) for _, _, future in built])
        self._since_checkpoint += len(rows)
        if self._since_checkpoint >= CHECKPOINT_EVERY_RECORDS:
            self._since_checkpoint = 0
            with self._lock:
                self._checkpoint_due = True
                self._ready.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closed and not self._checkpoint_due:
                    self._ready.wait()
                checkpoint, self._checkpoint_due = self._checkpoint_due, False
                if not self._queue and self._closed:
                    return
                group, self._queue, self._queued = self._queue, [], 0
            if checkpoint:  # outside the lock: it writes pages and fsyncs, and requests must still queue
                self._checkpoint()
            if not group:
                continue
            rows: list[Row] = []
            settle: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[None], BaseException | None]]] = {}
            built = []
            for build, _, future, loop in group:
                if future.done():  # its request timed out or went away: it was not answered, so no record
                    continue
                own, error = _build(build)
                if error is not None:
                    settle.setdefault(loop, []).append((future, error))
                    continue
                rows.extend(own)
                built.append((future, loop))
            failure: BaseException | None = None
            try:
                if rows:
                    self.store.write_rows(rows)
                    self._committed(len(rows))
            except Exception as exc:  # every waiter learns of it; none is told "committed"
                failure = exc if isinstance(exc, StoreError) else StoreError(str(exc))
            for future, loop in built:
                settle.setdefault(loop, []).append((future, failure))
            for loop, outcomes in settle.items():
                with contextlib.suppress(RuntimeError):  # that loop is closed: no one waits there any more
                    loop.call_soon_threadsafe(_settle, outcomes)

    def _committed(self, records: int) -> None:
        self.commits += 1
        if self.on_commit is not None:
            self.on_commit(records)

    def _checkpoint(self) -> None:
        try:
            self.store.checkpoint()
        except StoreError as exc:  # the next commit will say whether the store is really gone
            log.warning("capture: WAL checkpoint failed: %s", exc)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._ready.notify_all()
        self._thread.join(timeout=30)
        self.store.close()


def _build(build: Build) -> tuple[list[Row], StoreError | None]:
    """One request's rows, or the error that refuses that request alone (never its group)."""
    try:
        return build(), None
    except Exception as exc:
        log.exception("capture: a call's record could not be built")
        return [], StoreError(f"its record could not be built: {exc}")


def _settle(outcomes: list[tuple[asyncio.Future[None], BaseException | None]]) -> None:
    for future, error in outcomes:
        if future.done():  # timed out or cancelled: its request has gone
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


class Capture:
    """The activator's capture: site, subject keyer, policy, writer; built in the lifespan."""

    def __init__(
        self,
        store: CaptureStore,
        *,
        site: str,
        keyer: SubjectKeyer | None,
        policy: str,
        on_lost: Callable[[int], None],
        on_commit: Callable[[int], None] | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"capture policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.site = site
        self.keyer = keyer
        self.policy = policy
        self.writer = CaptureWriter(store, on_commit)
        self.on_lost = on_lost
        if keyer is None:
            log.warning(
                "capture: no subject secret (--subject-secret-file or $KGRID_SUBJECT_SECRET): CDS Hooks calls "
                "are recorded without a subject key, and X-Subject-Id is refused"
            )

    def patient_of(self, patient_id: str) -> str | None:
        """A CDS ``context.patientId`` to key (checked now, 400 if unusable); None without a secret."""
        if self.keyer is None:
            return None
        try:
            self.keyer.key(patient_id)
        except SubjectSecretError as exc:
            raise Problem(400, f"context.patientId: {exc}") from None
        return patient_id

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
        not_answered: str | None = None,
    ) -> None:
        """Commit the records of ``captured``'s events (built on the writer thread). Fail-closed: 503.

        ``not_answered`` marks rows computed but withheld (an OIP batch refused whole for its other
        rows): they are stored as refused with that reason, so no one counts them as answered.
        """
        site, keyer = self.site, self.keyer
        events = captured.events

        def build() -> list[Row]:  # on the writer thread
            rows: list[Row] = []
            for i, event in enumerate(events):
                rows.extend(
                    rows_from_event(
                        event,
                        site=site,
                        channel=channel,
                        caller=caller,
                        keyer=keyer,
                        subject=subject,
                        inputs=inputs if len(events) == 1 else None,
                        capture_id=capture_id if i == 0 else None,
                    )
                )
            if not_answered is not None:
                reason = not_answered[:4000]
                for n, row in enumerate(rows):
                    if row[_STATUS] == "ok":
                        rows[n] = (*row[:_STATUS], "refused", *row[_STATUS + 1 : _ERROR], reason, *row[_ERROR + 1 :])
            return rows

        count = sum(e.result.n_rows if e.batch and e.result is not None else 1 for e in events)  # type: ignore[union-attr]
        try:
            await self.writer.commit(build, count)
        except StoreError as exc:
            if self.policy == "best-effort":
                self.on_lost(count)
                log.warning("capture: %d record(s) lost (best-effort): %s", count, exc)
                return
            raise Problem(
                503,
                f"this answer cannot be given: its audit record was not stored (capture store: {exc})",
                headers={"Retry-After": "5"},
            ) from None

    async def record_feedback(self, entries: list[dict[str, Any]], *, caller: str, ko_id: str, function: str) -> None:
        """CDS feedback into the store's ``feedback`` table, each row linked to the call its card is.

        A card that is not the record of a call to this KO function is a 422 naming it; a store
        that fails is a 503 (the EHR retries), whatever the capture policy: nothing was answered.
        """
        ids: list[str] = []
        for n, entry in enumerate(entries):
            try:
                ids.append(id_from_uuid(entry["card"]))
            except ValueError:
                card = entry["card"][:64]
                raise Problem(422, f"feedback[{n}].card {card!r} is not a card this server issued") from None
        store = self.writer.store
        try:
            known = await anyio.to_thread.run_sync(store.calls_by_id, ids, ("ko_id", "function"))
            for n, capture_id in enumerate(ids):
                call = known.get(capture_id)
                if call is None or (call["ko_id"], call["function"]) != (ko_id, function):
                    card = entries[n]["card"][:64]
                    raise Problem(422, f"feedback[{n}].card {card!r} is not a card this service answered with")
            rows = [
                {
                    "capture_id": capture_id,
                    "site": self.site,
                    "caller": caller,
                    "kind": entry["outcome"],
                    "override_reason": encode_json(entry["overrideReason"]) if entry.get("overrideReason") else None,
                    "detail": entry,
                }
                for capture_id, entry in zip(ids, entries, strict=True)
            ]
            await anyio.to_thread.run_sync(store.write_feedback_rows, rows)
        except StoreError as exc:
            raise Problem(
                503, f"the feedback was not stored (capture store: {exc})", headers={"Retry-After": "5"}
            ) from None

    def close(self) -> None:
        self.writer.close()


def refused_event(ko: KnowledgeObject, function: str, inputs: Any, error: str, subject: Any = None) -> Captured:
    """A refused call the KO never saw (a CDS card that could not be computed), as a Captured to record."""
    now = time.time_ns()
    # _provenance_for is the core's own fallback for events about a call that did not run.
    event = CallEvent(ko._provenance_for(function), inputs, None, None, "refused", error, now, 0, subject)
    return Captured(True, None, [event])


def subject_of(request: Request) -> str | None:
    """The patient id a caller sent in ``X-Subject-Id`` (keyed before storing; never logged)."""
    value = request.headers.get(SUBJECT_HEADER)
    return value if value else None
