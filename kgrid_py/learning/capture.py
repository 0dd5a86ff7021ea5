"""Capture: turn the core's CallEvents into CallRecords and commit them in groups.

:func:`records_from_event` is the one translation, used by the library recorder here, by
``kgrid score`` and by the activator (which adds its own channel, caller and subject).
:class:`Capture` is the library's recorder (``kgrid_py.load(..., capture=...)``): it buffers
records and a background thread commits everything buffered in one transaction, so the added
cost per call is the record's encoding, not a commit. Durability (``capture_policy``):

* ``"group"`` (default): a call returns before its record is committed; the writer commits at
  least every ``flush_interval_s`` (50 ms) and on :meth:`Capture.flush`, :meth:`Capture.close`
  and interpreter exit. A ``kill -9`` or power loss loses at most the records of the last interval.
  A failed commit keeps the records and makes the *next* call raise :class:`CaptureError`.
* ``"sync"``: each call commits its record before it returns (no loss; a commit per call).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import threading
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np

from kgrid_py.ko import CallEvent
from kgrid_py.learning.ids import new_id
from kgrid_py.learning.records import COLUMNS, CallRecord
from kgrid_py.learning.store import CaptureStore, StoreError
from kgrid_py.learning.subjects import SubjectKeyer, SubjectSecretError

__all__ = ["POLICIES", "Capture", "CaptureError", "encode_json", "keyer_for", "records_from_event", "rows_from_event"]

POLICIES = ("group", "sync")
MAX_JSON_CHARS = 65_536  # a larger inputs/outputs document is stored as its digest and size
MAX_PENDING = 100_000  # records waiting for a commit; beyond this calls are refused, not queued
FLUSH_INTERVAL_S = 0.05
GROUP_MAX = 5_000


class CaptureError(RuntimeError):
    """Raised when a call's record cannot be kept (store down, subject without a secret)."""


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, np.ndarray):
        return {"shape": list(value.shape), "dtype": str(value.dtype)} if value.size > 64 else value.tolist()
    return str(value)


_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=_plain).encode  # built once


def encode_json(value: Any) -> str:
    """Compact JSON; NaN/inf as null, arrays beyond 64 values by shape; over 64 KiB by digest and size."""
    if not value and isinstance(value, list):
        return "[]"
    try:
        text = _encode(value)
    except ValueError:  # a NaN or infinity in a plain float: redo with them as null
        text = json.dumps(_finite(value), separators=(",", ":"), default=_plain)
    if len(text) > MAX_JSON_CHARS:
        digest = hashlib.sha256(text.encode()).hexdigest()
        text = json.dumps({"truncated": True, "chars": len(text), "sha256": digest})
    return text


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _received(inputs: Any) -> Any:
    return dict(inputs) if isinstance(inputs, Mapping) else inputs


def records_from_event(
    event: CallEvent,
    *,
    site: str,
    channel: str,
    caller: str,
    keyer: SubjectKeyer | None,
    subject: Any = None,
    inputs: Any = None,
    capture_id: str | None = None,
) -> list[CallRecord]:
    """The record(s) of one event: one for ``call``, one per row for ``call_batch``.

    ``subject``/``inputs`` override the event's (the activator knows the patient from a header
    and the body as sent); ``capture_id`` fixes the id (a CDS card's uuid). A subject with no
    keyer raises :class:`CaptureError`: an id is never stored raw.
    """
    subject = event.subject if subject is None else subject
    if event.batch:  # a library call_batch is channel "batch"; OIP keeps its own
        return _batch_records(event, site, "batch" if channel == "library" else channel, caller, keyer)
    return [CallRecord(*_row(event, site, channel, caller, keyer, subject, inputs, capture_id))]


def _row(
    event: CallEvent,
    site: str,
    channel: str,
    caller: str,
    keyer: SubjectKeyer | None,
    subject: Any,
    inputs: Any,
    capture_id: str | None,
) -> tuple[Any, ...]:
    """One call's ``calls`` row, in :data:`COLUMNS` order (kept in step with CallRecord's fields)."""
    p = event.provenance
    result = event.result
    outputs = None
    warnings = "[]"
    if result is not None:
        outputs = encode_json(result.result)  # type: ignore[union-attr]
        warnings = encode_json(result.warnings)  # type: ignore[union-attr]
    return (
        capture_id or new_id(event.started_ns // 1_000_000),
        event.started_ns // 1000,
        site,
        channel,
        caller,
        p.ko_id,
        p.version,
        p.content_digest,
        p.model_digest,
        p.function,
        encode_json(_received(event.inputs if inputs is None else inputs)),
        encode_json(event.used) if event.used is not None else "null",
        warnings,
        event.status,
        event.latency_ns // 1000,
        _key(keyer, subject),
        outputs,
        event.error[:4000] if event.error else None,
    )


def rows_from_event(
    event: CallEvent, *, site: str, channel: str, caller: str, keyer: SubjectKeyer | None
) -> list[tuple[Any, ...]]:
    """The ``calls`` rows of one event, as tuples: the background writer's fast path."""
    if event.batch:
        records = _batch_records(event, site, "batch" if channel == "library" else channel, caller, keyer)
        return [tuple(getattr(r, name) for name in COLUMNS) for r in records]
    return [_row(event, site, channel, caller, keyer, event.subject, None, None)]


def _key(keyer: SubjectKeyer | None, subject: Any) -> str | None:
    if subject is None:
        return None
    if keyer is None:
        raise CaptureError("a subject was given but capture has no subject secret (--subject-secret-file)")
    try:
        return keyer.key(subject)
    except SubjectSecretError as exc:
        raise CaptureError(str(exc)) from None


def _column_list(column: Any) -> list[Any]:
    if hasattr(column, "to_pylist"):
        return list(column.to_pylist())
    if hasattr(column, "tolist"):
        return list(column.tolist())
    return list(column)


def _batch_records(
    event: CallEvent, site: str, channel: str, caller: str, keyer: SubjectKeyer | None
) -> list[CallRecord]:
    """One record per row; a refused table is one record with its error."""
    p = event.provenance
    ms = event.started_ns // 1_000_000
    common = {
        "ts_us": event.started_ns // 1000,
        "site": site,
        "channel": channel,
        "caller": caller,
        "ko_id": p.ko_id,
        "version": p.version,
        "content_digest": p.content_digest,
        "model_digest": p.model_digest,
        "function": p.function,
    }
    result = event.result
    if result is None:  # the whole table was refused
        return [
            CallRecord(
                id=new_id(ms),
                inputs_received="null",
                inputs_used="null",
                warnings="[]",
                status=event.status,
                latency_us=event.latency_ns // 1000,
                error=(event.error or "")[:4000],
                **common,
            )
        ]
    n = result.n_rows  # type: ignore[union-attr]
    subjects = list(event.subject) if event.subject is not None else [None] * n
    if len(subjects) != n:
        raise CaptureError(f"{len(subjects)} subjects for {n} rows")
    received = {name: _column_list(col) for name, col in event.inputs.items()}
    valid = event.valid if event.valid is not None else np.ones(n, dtype=bool)
    position = np.cumsum(valid) - 1
    used = {name: np.asarray(col).tolist() for name, col in (event.used or {}).items()}
    outputs = {name: _column_list(col) for name, col in result.columns.items()}  # type: ignore[union-attr]
    latency = event.latency_ns // 1000 // max(n, 1)  # the batch's time, shared by its rows
    records = []
    for row in range(n):
        ok = bool(valid[row])
        at = int(position[row])
        error = result.errors[row]  # type: ignore[union-attr]
        records.append(
            CallRecord(
                id=new_id(ms),
                inputs_received=encode_json({name: col[row] for name, col in received.items()}),
                inputs_used=encode_json({name: col[at] for name, col in used.items()}) if ok else "null",
                outputs=encode_json({name: col[row] for name, col in outputs.items()}) if ok else None,
                warnings=encode_json(list(result.warnings[row])),  # type: ignore[union-attr]
                status="ok" if error is None else "refused",
                error=error[:4000] if error else None,
                latency_us=latency,
                subject_key=_key(keyer, subjects[row]),
                **common,
            )
        )
    return records


def keyer_for(secret: str | bytes | os.PathLike[str] | None) -> SubjectKeyer | None:
    """The keyer from secret bytes, a secret file's path, or (None) ``$KGRID_SUBJECT_SECRET``."""
    if isinstance(secret, bytes):
        return SubjectKeyer(secret)
    return SubjectKeyer.resolve(secret)


class Capture:
    """The library's recorder: ``ko.recorder = Capture(store, site=...)``; see the module docstring.

    On the calling thread (policy ``group``) a call only checks its subject and appends the event
    to a deque; the writer thread turns queued events into rows (JSON, HMAC, ids) and commits
    them in one transaction per group. The inputs mapping and the result dict are copied
    (shallowly) at the call, so a caller changing them afterwards does not change the record.
    """

    def __init__(
        self,
        store: CaptureStore | str | os.PathLike[str],
        *,
        site: str,
        keyer: SubjectKeyer | None = None,
        caller: str = "library",
        capture_policy: str = "group",
        flush_interval_s: float = FLUSH_INTERVAL_S,
    ) -> None:
        if capture_policy not in POLICIES:
            raise ValueError(f"capture_policy must be one of {', '.join(POLICIES)}, got {capture_policy!r}")
        if not site or not isinstance(site, str):
            raise ValueError("a capture needs a site name (site=...)")
        self.owns_store = not isinstance(store, CaptureStore)
        self.store = CaptureStore.open(store) if self.owns_store else store  # type: ignore[arg-type]
        self.site = site
        self.keyer = keyer
        self.caller = caller
        self.policy = capture_policy
        self.flush_interval_s = flush_interval_s
        self.committed = 0
        self._events: collections.deque[CallEvent] = collections.deque()
        self._unwritten: list[tuple[Any, ...]] = []  # rows built but not committed (a failed commit)
        self._write_lock = threading.Lock()  # one drain-and-commit at a time (writer or flush)
        self._wake = threading.Event()
        self._failure: BaseException | None = None
        self._closed = False
        self._writer: threading.Thread | None = None
        if capture_policy == "group":
            self._writer = threading.Thread(target=self._run, name="kgrid-capture", daemon=True)
            self._writer.start()
        _open_captures.add(self)

    def __repr__(self) -> str:
        return f"<Capture site={self.site!r} store={self.store.url} policy={self.policy}>"

    def __call__(self, event: CallEvent) -> None:
        if self._failure is not None or self._closed:
            self._raise_pending()
        if event.subject is not None:
            self._check_subjects(event)
        if self.policy == "sync":
            rows = rows_from_event(event, site=self.site, channel="library", caller=self.caller, keyer=self.keyer)
            try:
                self.store.write_rows(rows)
            except StoreError as exc:
                raise CaptureError(f"the call's record was not kept: {exc}") from exc
            self.committed += len(rows)
            return
        if len(self._events) >= MAX_PENDING:
            raise CaptureError(f"{len(self._events)} calls wait for the capture store; refusing more")
        if not event.batch:  # the caller owns these and may change them once call() returns
            result = event.result
            if result is not None:
                result = dataclasses.replace(
                    result, result=dict(result.result), warning_details=list(result.warning_details)
                )  # type: ignore[arg-type]
            inputs = dict(event.inputs) if isinstance(event.inputs, Mapping) else event.inputs
            event = dataclasses.replace(event, inputs=inputs, result=result)
        self._events.append(event)
        if len(self._events) >= GROUP_MAX:
            self._wake.set()

    def _raise_pending(self) -> None:
        if self._closed:
            raise CaptureError("capture is closed")
        failure, self._failure = self._failure, None
        if failure is not None:
            raise CaptureError(f"capture failed to commit earlier records (kept, retrying): {failure}")

    def _check_subjects(self, event: CallEvent) -> None:
        """Refuse now what could not be keyed later: a subject without a secret, an unusable id."""
        if self.keyer is None:
            raise CaptureError("a subject was given but capture has no subject secret (--subject-secret-file)")
        subjects = event.subject if event.batch else (event.subject,)
        if event.batch and event.result is not None and len(subjects) != event.result.n_rows:  # type: ignore[union-attr]
            raise CaptureError(f"{len(subjects)} subjects for {event.result.n_rows} rows")  # type: ignore[union-attr]
        try:
            for subject in subjects:
                if subject is not None:
                    SubjectKeyer.check(subject)
        except SubjectSecretError as exc:
            raise CaptureError(str(exc)) from None

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            if not self._drain() and not self._closed:
                self._wake.wait(max(self.flush_interval_s, 0.5))  # the store failed: back off

    def _drain(self) -> bool:
        """Build rows for every queued event and commit them with any kept from a failed commit."""
        with self._write_lock:
            events = self._events
            count = len(events)
            rows = self._unwritten
            self._unwritten = []
            for _ in range(count):
                rows.extend(self._rows(events.popleft()))
            if not rows:
                return True
            try:
                self.store.write_rows(rows)
            except StoreError as exc:
                self._unwritten = rows  # kept for the next try, oldest first
                self._failure = exc
                return False
            self.committed += len(rows)
            return True

    def _rows(self, event: CallEvent) -> list[tuple[Any, ...]]:
        try:
            return rows_from_event(event, site=self.site, channel="library", caller=self.caller, keyer=self.keyer)
        except Exception as exc:  # never drop a call: keep what it was, and why it could not be encoded
            plain = dataclasses.replace(event, inputs=None, used=None, result=None, subject=None, batch=False)
            plain = dataclasses.replace(plain, status="error", error=f"capture could not encode this call: {exc}")
            return rows_from_event(plain, site=self.site, channel="library", caller=self.caller, keyer=None)

    def flush(self) -> None:
        """Commit every call made so far now; raises :class:`CaptureError` when the store refuses."""
        if self.policy == "sync":
            return
        if not self._drain():  # the failure stays set: the next call is refused too
            failure = self._failure
            raise CaptureError(
                f"capture store {self.store.url}: {len(self._unwritten)} record(s) not committed: {failure}"
            )

    def close(self) -> None:
        """Flush, stop the writer, and close the store if this capture opened it."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._wake.set()
            if self._writer is not None:
                self._writer.join(timeout=30)
            _open_captures.discard(self)
            if self.owns_store:
                self.store.close()


_open_captures: weakref.WeakSet[Capture] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    for capture in list(_open_captures):
        # At exit there is no caller left to tell; what can be lost is what the module docstring says.
        with contextlib.suppress(Exception):
            capture.close()
