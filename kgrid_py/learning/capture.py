"""Capture: turn the core's CallEvents into CallRecords and commit them in groups.

:func:`records_from_event` is the one translation, used by the library recorder here, by
``kgrid score`` and by the activator (which adds its own channel, caller and subject).
:class:`Capture` is the library's recorder (``kgrid_py.load(..., capture=...)``): a call only
queues its event, and a background thread encodes everything queued and commits it in one
transaction, so the caller pays neither the encoding nor a commit. Durability (``capture_policy``):

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
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

import numpy as np

from kgrid_py.ko import CallEvent
from kgrid_py.learning.ids import new_id
from kgrid_py.learning.records import CallRecord
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
    """What JSON cannot encode as it is: numpy scalars as their number, big arrays by shape, else text."""
    if isinstance(value, np.generic):
        item = value.item()
        return None if isinstance(item, float) and not math.isfinite(item) else item
    if isinstance(value, np.ndarray):
        return {"shape": list(value.shape), "dtype": str(value.dtype)} if value.size > 64 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


# The C encoder the json module builds on every dumps() call, built once: most of a small
# document's encoding time is that set-up. No circular-reference markers (they would be shared
# across threads): a self-referencing value ends in RecursionError, and the checked path below.
_checked = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=_plain).encode
_fast = (
    c_make_encoder(None, _plain, encode_basestring_ascii, None, ":", ",", False, False, False)
    if c_make_encoder is not None
    else None
)


def _compact(value: Any) -> str:
    return "".join(_fast(value, 0)) if _fast is not None else _checked(value)


def encode_json(value: Any) -> str:
    """Compact JSON; NaN/inf as null, arrays beyond 64 values by shape; over 64 KiB by digest and size."""
    if not value and isinstance(value, list):
        return "[]"
    try:
        text = _compact(value)
    except (ValueError, RecursionError):  # a NaN or infinity (or a cycle): redo with them as null
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
    rows = rows_from_event(
        event,
        site=site,
        channel=channel,
        caller=caller,
        keyer=keyer,
        subject=subject,
        inputs=inputs,
        capture_id=capture_id,
    )
    return [CallRecord(*row) for row in rows]


def rows_from_event(
    event: CallEvent,
    *,
    site: str,
    channel: str,
    caller: str,
    keyer: SubjectKeyer | None,
    subject: Any = None,
    inputs: Any = None,
    capture_id: str | None = None,
) -> list[tuple[Any, ...]]:
    """:func:`records_from_event` as ``calls`` rows in :data:`COLUMNS` order: what the writers commit.

    Tuples, not :class:`CallRecord`\\ s: a writer builds thousands a second, and the channel and
    status come from this package's own constants.
    """
    if event.batch:  # a library call_batch is channel "batch"; OIP keeps its own
        return _batch_rows(event, site, "batch" if channel == "library" else channel, caller, keyer)
    result = event.result
    outputs = warnings = None
    if result is not None:
        outputs, warnings = result.result, result.warning_details  # type: ignore[union-attr]
    received = event.inputs if inputs is None else inputs
    subject = event.subject if subject is None else subject
    return [_row(event, site, channel, caller, _key(keyer, subject), received, outputs, warnings, capture_id)]


def _row(
    event: CallEvent,
    site: str,
    channel: str,
    caller: str,
    subject_key: str | None,
    received: Any,
    outputs: Any,
    warnings: Any,
    capture_id: str | None,
) -> tuple[Any, ...]:
    """One call's ``calls`` row, in :data:`COLUMNS` order (kept in step with CallRecord's fields).

    ``outputs`` and ``warnings`` (InputWarnings) are the result's, or copies taken at the call.
    """
    p = event.provenance
    error = event.error
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
        encode_json(dict(received) if isinstance(received, Mapping) else received),
        encode_json(event.used) if event.used is not None else "null",
        encode_json([str(w) for w in warnings]) if warnings else "[]",
        event.status,
        event.latency_ns // 1000,
        subject_key,
        encode_json(outputs) if outputs is not None else None,
        error[:4000] if error else None,
    )


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


def _batch_rows(
    event: CallEvent, site: str, channel: str, caller: str, keyer: SubjectKeyer | None
) -> list[tuple[Any, ...]]:
    """One row per table row; a refused table is one row with its error."""
    p = event.provenance
    ms = event.started_ns // 1_000_000
    ts_us = event.started_ns // 1000
    head = (site, channel, caller, p.ko_id, p.version, p.content_digest, p.model_digest, p.function)
    result = event.result
    if result is None:  # the whole table was refused
        error = (event.error or "")[:4000]
        return [
            (new_id(ms), ts_us, *head, "null", "null", "[]", event.status, event.latency_ns // 1000, None, None, error)
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
    rows = []
    for row in range(n):
        ok = bool(valid[row])
        at = int(position[row])
        error = result.errors[row]  # type: ignore[union-attr]
        rows.append(
            (
                new_id(ms),
                ts_us,
                *head,
                encode_json({name: col[row] for name, col in received.items()}),
                encode_json({name: col[at] for name, col in used.items()}) if ok else "null",
                encode_json(list(result.warnings[row])),  # type: ignore[union-attr]
                "ok" if error is None else "refused",
                latency,
                _key(keyer, subjects[row]),
                encode_json({name: col[row] for name, col in outputs.items()}) if ok else None,
                error[:4000] if error else None,
            )
        )
    return rows


def keyer_for(secret: str | bytes | os.PathLike[str] | None) -> SubjectKeyer | None:
    """The keyer from secret bytes, a secret file's path, or (None) ``$KGRID_SUBJECT_SECRET``."""
    if isinstance(secret, bytes):
        return SubjectKeyer(secret)
    return SubjectKeyer.resolve(secret)


class Capture:
    """The library's recorder: ``ko.recorder = Capture(store, site=...)``; see the module docstring.

    On the calling thread (policy ``group``) a call only checks its subject and appends the event
    to a deque; the writer thread turns queued events into rows (JSON, HMAC, ids) and commits
    them in one transaction per group. The inputs mapping, the result dict and its warnings list
    are copied (shallowly) at the call, so a caller changing them afterwards does not change the
    record; nothing else is built on the caller's thread.
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
        self._events: collections.deque[tuple[CallEvent, Any, Any, Any]] = collections.deque()
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
        if event.batch:  # its columns were built for this call; the caller gets a BatchResult of its own
            self._events.append((event, None, None, None))
        else:  # the caller owns these and may change them once call() returns: copied, shallowly
            inputs = event.inputs
            if type(inputs) is not dict and isinstance(inputs, Mapping):
                inputs = dict(inputs)
            elif type(inputs) is dict:
                inputs = inputs.copy()
            result = event.result
            if result is None:
                self._events.append((event, inputs, None, None))
            else:
                self._events.append((event, inputs, result.result.copy(), result.warning_details.copy()))  # type: ignore[union-attr]
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
        try:
            if not event.batch:
                SubjectKeyer.check(event.subject)
                return
            subjects = event.subject
            if event.result is not None and len(subjects) != event.result.n_rows:  # type: ignore[union-attr]
                raise CaptureError(f"{len(subjects)} subjects for {event.result.n_rows} rows")  # type: ignore[union-attr]
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
        """Build rows for every queued call and commit them with any kept from a failed commit."""
        with self._write_lock:
            events = self._events
            count = len(events)
            rows = self._unwritten
            self._unwritten = []
            for _ in range(count):
                rows.extend(self._rows(*events.popleft()))
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

    def _rows(self, event: CallEvent, inputs: Any, outputs: Any, warnings: Any) -> list[tuple[Any, ...]]:
        """A queued call's rows; ``inputs``/``outputs``/``warnings`` are the copies taken at the call."""
        site, caller = self.site, self.caller
        try:
            if event.batch:
                return rows_from_event(event, site=site, channel="library", caller=caller, keyer=self.keyer)
            key = _key(self.keyer, event.subject)
            return [_row(event, site, "library", caller, key, inputs, outputs, warnings, None)]
        except Exception as exc:  # never drop a call: keep what it was, and why it could not be encoded
            plain = dataclasses.replace(event, inputs=None, used=None, result=None, subject=None, batch=False)
            plain = dataclasses.replace(plain, status="error", error=f"capture could not encode this call: {exc}")
            return rows_from_event(plain, site=site, channel="library", caller=caller, keyer=None)

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
