"""Recalibration evidence from a site's capture store: its captured calls linked to their outcomes.

The same rules as ``kgrid monitor`` (it reuses monitor's linkage, so the two never disagree): the
index call is each subject's first successful call of the KO version's function; time zero is its
UTC date; outcome rows combine per subject; a competing event is cause 2. The risks are the ones
the KO returned at the time (the stored outputs), which are what its graph computes.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from kgrid_py.ko import KnowledgeObject
from kgrid_py.learning.monitor import (
    _fetch_rows,
    calls_numbers,
    combined_outcomes,
    link_outcomes,
    outcome_columns,
    outcome_outputs,
    outcomes_table,
)
from kgrid_py.learning.recalibration import Evidence, Kind, RecalibrationError
from kgrid_py.learning.store import CaptureStore, StoreError, store_url
from kgrid_py.learning.workers import WorkerFailed, run_worker

# Reading outcomes in a child process pays from this many rows in the outcomes table.
PARALLEL_MIN_OUTCOMES = 200_000

__all__ = ["NoLinkedCalls", "concat", "evidence_from_sites", "evidence_from_store", "open_existing"]


class NoLinkedCalls(RecalibrationError):
    """A site has no call of this KO version's function linked to an outcome."""


def open_existing(url: str) -> CaptureStore:
    """Open a capture store that must already exist: reading evidence never creates an empty SQLite file.

    :meth:`CaptureStore.open` creates (and migrates) a missing store, which is right for writers; a
    mistyped path given to a reader would otherwise leave a new empty database behind.
    """
    try:
        full = store_url(url)
        if full.startswith("sqlite"):
            path = sa.engine.make_url(full).database
            if not path or path == ":memory:" or not Path(path).is_file():
                raise RecalibrationError(f"capture store {url!r}: no such SQLite file")
        return CaptureStore.open(url)
    except StoreError as exc:
        raise RecalibrationError(str(exc)) from None


def _outcomes_are_large(store: CaptureStore) -> bool:
    """Whether reading the outcomes in a child process pays (SQLite, at least 200,000 outcome rows).

    A child costs about 1 s of the other core to start (imports); reading 1,000,000 outcome rows
    costs 2 to 3 s. ``max(rowid)`` bounds the row count without counting.
    """
    if store.engine.dialect.name != "sqlite":
        return False
    ((top,),) = _fetch_rows(store, "SELECT max(rowid) FROM outcomes", [], "counting outcomes")
    return (top or 0) >= PARALLEL_MIN_OUTCOMES


def _outcomes_in_process(store: CaptureStore, outcome: str, site: str, columns: list[str]) -> pa.Table:
    """:func:`combined_outcomes` of the site's outcome rows, read by ``kgrid_py.learning.outcomes_worker``."""
    request = {
        "url": store.engine.url.render_as_string(hide_password=False),
        "outcome": outcome,
        "site": site,
        "columns": columns,
    }
    try:
        return pa.ipc.open_stream(run_worker("kgrid_py.learning.outcomes_worker", request)).read_all()
    except WorkerFailed as exc:
        raise StoreError(f"site {site!r}: the outcomes reader failed: {exc}") from exc


def evidence_from_store(
    store: CaptureStore,
    ko: KnowledgeObject,
    function: str,
    site: str,
    kind: Kind,
    horizons: dict[str, float],
    *,
    processes: bool | None = None,
) -> Evidence:
    """One row per linked index call of ``ko``'s ``function`` at ``site``.

    ``processes``: read the outcomes in a child process while the calls are read here; None
    decides by the store (SQLite with a large outcomes table).
    """
    spec = ko.function(function)
    if spec.outcome is None:
        raise RecalibrationError(f"{ko.ref} {function} declares no outcome: its calls cannot be linked")
    # Successful calls only, their outcome outputs extracted as numbers (monitor's fast reader);
    # on a large SQLite store, the outcomes are read meanwhile by a child process.
    columns = list(outcome_columns(spec.outcome))
    try:
        if processes is None:
            processes = _outcomes_are_large(store)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="kgrid-outcomes") as pool:
            pending = pool.submit(_outcomes_in_process, store, spec.outcome.name, site, columns) if processes else None
            ok_calls = calls_numbers(store, ko.id, ko.version, spec, site=site, ok_only=True, with_inputs=False)
            if pending is not None:
                outcomes = pending.result()
            else:
                outcomes = combined_outcomes(outcomes_table(store, spec.outcome.name, site, columns))
    except StoreError as exc:
        raise RecalibrationError(str(exc)) from None
    if ok_calls.num_rows == 0:
        raise NoLinkedCalls(f"{store!r} holds no call of {ko.ref} {function} at site {site!r} that succeeded")
    outputs = pa.table({o: ok_calls.column(f"out:{o}") for o in outcome_outputs(spec.outcome)})
    linked = link_outcomes(ok_calls, outputs, spec.outcome, outcomes, site)
    n = len(linked["time"])
    if n == 0:
        raise NoLinkedCalls(f"site {site!r}: no call of {ko.ref} {function} is linked to an outcome")
    missing = [o for o in horizons if o not in linked["predicted"]]
    if missing:
        raise RecalibrationError(f"the stored calls have no output {missing}")
    return Evidence(
        kind,
        dict(horizons),
        {o: np.asarray(linked["predicted"][o], dtype=np.float64) for o in horizons},
        np.asarray(linked["time"], dtype=np.float64),
        np.asarray(linked["cause"], dtype=np.int64),
        np.full(n, site),
        np.asarray(linked["call_day"], dtype=np.float64),
    )


def concat(parts: Sequence[Evidence]) -> Evidence:
    """The rows of every part, in order (each keeps its site, so per-site summaries stay right)."""
    first = parts[0]
    if any(p.kind != first.kind or p.horizons != first.horizons for p in parts):
        raise RecalibrationError("the parts are not for the same outcome kind and horizons")
    days = [p.day for p in parts]
    return Evidence(
        first.kind,
        dict(first.horizons),
        {o: np.concatenate([p.predicted[o] for p in parts]) for o in first.horizons},
        np.concatenate([p.time for p in parts]),
        np.concatenate([p.cause for p in parts]),
        np.concatenate([p.site for p in parts]),
        None if any(d is None for d in days) else np.concatenate(days),  # type: ignore[arg-type]
    )


def store_sites(store: CaptureStore, ko: KnowledgeObject, function: str) -> list[str]:
    """The sites (sorted) with at least one call of ``ko``'s version and ``function``."""
    column = store.calls_table(ko_id=ko.id, version=ko.version, function=function, columns=["site"]).column("site")
    return sorted(str(s) for s in pc.unique(column).to_pylist() if s is not None)


def evidence_from_sites(
    store: CaptureStore,
    ko: KnowledgeObject,
    function: str,
    sites: Sequence[str],
    kind: Kind,
    horizons: dict[str, float],
) -> Evidence:
    """Every named site's evidence, combined in the order given; no ``sites``: each site with linked calls.

    A named site without linked calls is an error (the curator asked for it); when the sites are
    discovered, those without linked calls are skipped, and none at all is an error.
    """
    try:
        if sites:
            return concat([evidence_from_store(store, ko, function, s, kind, horizons) for s in dict.fromkeys(sites)])
        found = store_sites(store, ko, function)
        parts = []
        for site in found:
            try:
                parts.append(evidence_from_store(store, ko, function, site, kind, horizons))
            except NoLinkedCalls:
                continue
    except StoreError as exc:
        raise RecalibrationError(str(exc)) from None
    if not parts:
        where = f"sites {found}" if found else "no site"
        raise NoLinkedCalls(f"{store!r}: no call of {ko.ref} {function} is linked to an outcome ({where} with calls)")
    return concat(parts)
