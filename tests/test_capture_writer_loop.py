"""The activator's capture writer commits a loop tick's records on the loop where a commit costs no
fsync (SQLite, synchronous=normal), and falls back to its thread when another writer holds the lock.

Real SQLite files, a real event loop and a second real connection holding the write lock.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
from test_capture_store_writer import _count, _rows

import activator.capture as capture_module
from activator.capture import CaptureWriter
from kgrid_py.learning.store import CaptureStore


def _writer(path: Path, query: str = "") -> tuple[CaptureStore, CaptureWriter, list[int]]:
    store = CaptureStore.open(f"sqlite:///{path}{query}")
    sizes: list[int] = []
    return store, CaptureWriter(store, on_commit=sizes.append), sizes


async def _commit_many(writer: CaptureWriter, n: int, start_us: int) -> None:
    rows = _rows(start_us, n)
    await asyncio.gather(*(writer.commit(lambda row=row: [row], 1) for row in rows))


@pytest.mark.parametrize(("query", "on_loop"), [("", True), ("?synchronous=full", False)])
def test_a_ticks_records_are_committed_together(tmp_path: Path, query: str, on_loop: bool) -> None:
    store, writer, sizes = _writer(tmp_path / "c.sqlite3", query)
    try:
        assert writer.on_loop is on_loop
        asyncio.run(_commit_many(writer, 50, 1_700_000_000_000_000))
        assert _count(store) == 50 and sum(sizes) == 50
        if on_loop:
            assert sizes == [50]  # one tick queued them all: one transaction
    finally:
        writer.close()


def test_a_locked_store_neither_blocks_the_loop_nor_loses_a_record(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    store, writer, sizes = _writer(path)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another process's writer, say `kgrid capture prune`

        async def main() -> float:
            commits = asyncio.ensure_future(_commit_many(writer, 20, 1_700_000_000_000_000))
            began = time.perf_counter()
            await asyncio.sleep(0.05)  # the loop keeps turning while the records wait for the lock
            ticked = time.perf_counter() - began
            await asyncio.sleep(0.5)
            assert not commits.done() and _count(store) == 0
            holder.execute("COMMIT")
            await asyncio.wait_for(commits, 15)
            return ticked

        assert asyncio.run(main()) < 0.5
        assert _count(store) == 20 and sum(sizes) == 20
    finally:
        holder.close()
        writer.close()


def test_records_committed_on_the_loop_get_the_wal_checkpointed_by_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(capture_module, "CHECKPOINT_EVERY_RECORDS", 10)
    store, writer, _ = _writer(tmp_path / "c.sqlite3")
    checkpoints: list[float] = []
    original = store.checkpoint

    def counted() -> None:
        checkpoints.append(time.perf_counter())
        original()

    monkeypatch.setattr(store, "checkpoint", counted)
    try:
        for n in range(3):
            asyncio.run(_commit_many(writer, 12, 1_700_000_000_000_000 + n * 1_000_000))
        deadline = time.monotonic() + 5
        while len(checkpoints) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(checkpoints) == 3
        assert _count(store) == 36
    finally:
        writer.close()


def test_a_request_refused_for_a_locked_store_leaves_no_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Scaled down: a 0.3 s busy timeout, requests that wait 0.5 s. The writer must give its verdict
    # within the requests' wait, so a refused request's record is never committed afterwards (a
    # second try on SQLite would wait out the lock again and commit after the 503).
    import kgrid_py.learning.store as store_module

    monkeypatch.setattr(store_module, "SQLITE_BUSY_TIMEOUT_MS", 300)
    monkeypatch.setattr(capture_module, "COMMIT_WAIT_S", 0.5)
    path = tmp_path / "c.sqlite3"
    store, writer, _ = _writer(path, "?synchronous=full")  # the writer thread's path
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        asyncio.run(_commit_many(writer, 1, 1_600_000_000_000_000))  # the writer's connection is now kept
        holder.execute("BEGIN IMMEDIATE")

        async def main() -> None:
            attempt = asyncio.ensure_future(_commit_many(writer, 1, 1_700_000_000_000_000))
            await asyncio.sleep(0.55)
            holder.execute("COMMIT")
            with pytest.raises(capture_module.StoreError):
                await attempt

        asyncio.run(main())
        time.sleep(0.5)  # whatever the writer would still do
        assert _count(store) == 1  # the warm-up record only
    finally:
        holder.close()
        writer.close()
