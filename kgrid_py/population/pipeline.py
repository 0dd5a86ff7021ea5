"""Overlap reading, scoring and writing: one read-ahead thread and one write-behind thread.

    with ReadAhead(reader.batches(columns)) as batches, WriteBehind(writer.write) as out:
        for batch in batches:
            out.put(score(batch), token)      # blocks while the previous batch is still being written
            for token in out.written(): ...   # batches already on disk, in order
        for token in out.finish(): ...

Parquet decoding and encoding release the GIL, so while the main thread scores batch k (Python
and ONNX Runtime) one thread decodes batch k+1 and another encodes batch k-1. Each side holds at
most ``depth`` batches beyond the one the main thread is working on (default 1), so memory stays
bounded by the batch size. Items keep their order. An error on either thread is raised in the main
thread at its next call; :meth:`close` (also on leaving the ``with`` block) stops and joins the
thread, so a caller can safely remove a partial file once it returns. The main thread only ever
waits in short timed waits, so SIGINT and SIGTERM handlers still run promptly.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Generic, TypeVar

__all__ = ["ReadAhead", "WriteBehind"]

T = TypeVar("T")
_POLL_S = 0.05  # how often a blocked thread checks for a stop request
_END = object()


class _Failure:
    """An exception raised on a worker thread, carried to the main thread."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class ReadAhead(Generic[T]):
    """Iterates ``items`` on a thread, at most ``depth`` items ahead of the consumer."""

    def __init__(self, items: Iterator[T], depth: int = 1, name: str = "kgrid-read-ahead") -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self._items = items
        self._slots = threading.Semaphore(depth)  # one per item being read or waiting to be taken
        self._queue: queue.Queue[Any] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while self._acquire():
                try:
                    item = next(self._items)
                except StopIteration:
                    self._queue.put(_END)
                    return
                self._queue.put(item)
        except BaseException as exc:  # carried to the consumer, raised there
            self._queue.put(_Failure(exc))
        finally:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()  # a generator's own cleanup (closing its stream) runs on this thread, now

    def _acquire(self) -> bool:
        while not self._stop.is_set():
            if self._slots.acquire(timeout=_POLL_S):
                return True
        return False

    def __iter__(self) -> Iterator[T]:
        while True:
            try:
                entry = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if entry is _END:
                return
            if isinstance(entry, _Failure):
                raise entry.error
            self._slots.release()
            yield entry

    def close(self) -> None:
        """Stop reading and wait for the thread (at most the rest of the item being read)."""
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> ReadAhead[T]:
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.close()


class WriteBehind(Generic[T]):
    """Calls ``write`` on each item, in order, on a thread, at most ``depth`` items behind :meth:`put`.

    Each item comes with a token; :meth:`written` and :meth:`finish` return the tokens of the items
    written so far, in order, so the caller reports progress only for what is really written.
    """

    def __init__(self, write: Callable[[T], None], depth: int = 1, name: str = "kgrid-write-behind") -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self._write = write
        self._slots = threading.Semaphore(depth)  # one per item queued or being written
        self._todo: queue.Queue[Any] = queue.Queue()
        self._done: queue.Queue[Any] = queue.Queue()
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                entry = self._todo.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if entry is _END:
                return
            item, token = entry
            try:
                self._write(item)
            except BaseException as exc:  # raised in the main thread at its next call
                self._error = exc
                return
            finally:
                del item, entry
            self._done.put(token)
            self._slots.release()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, item: T, token: Any) -> None:
        """Queue ``item``; blocks while ``depth`` items are still unwritten. Raises a write's error."""
        while not self._slots.acquire(timeout=_POLL_S):
            self._check()
            if not self._thread.is_alive():
                raise RuntimeError("the writer thread has stopped")
        self._check()
        self._todo.put((item, token))

    def written(self) -> list[Any]:
        """Tokens of the items written since the last call, in order (never blocks)."""
        self._check()
        tokens = []
        while True:
            try:
                tokens.append(self._done.get_nowait())
            except queue.Empty:
                return tokens

    def finish(self) -> list[Any]:
        """Wait until every item is written; the remaining tokens. Raises a write's error."""
        self._todo.put(_END)
        while self._thread.is_alive():
            self._thread.join(timeout=_POLL_S)
        self._check()
        return self.written()

    def close(self) -> None:
        """Stop after the item being written (if any) and wait for the thread."""
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> WriteBehind[T]:
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.close()
