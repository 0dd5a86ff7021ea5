"""Reading a site's calls and outcomes fast must not change what is read.

A site holding most of the calls table is scanned in storage order and sorted by SQLite, a small
one is read through the index; the calls here are written out of time order so the two differ.
On a large store the outcomes are read by a child process: the evidence must be bit for bit the
one read in this process.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import kgrid_py
from kgrid_py.learning import monitor as mon
from kgrid_py.learning.cohort import OUTCOME_FILE_COLUMNS, Site, call_records, kfre_cohort, outcome_rows
from kgrid_py.learning.outcomes import import_rows, rows_from_table
from kgrid_py.learning.recalibration import RecalibrationError
from kgrid_py.learning.store import CaptureStore
from kgrid_py.learning.store_evidence import evidence_from_store
from kgrid_py.learning.subjects import SubjectKeyer

SECRET = "r" * 48
HORIZONS = {"risk_2y": 730.0, "risk_5y": 1826.0}
SITES = (Site("alpha", 2500), Site("beta", 1500, risk_ratio=2.0), Site("gamma", 300))


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("reading") / "capture.sqlite3"
    keyer = SubjectKeyer(SECRET)
    cohort = kfre_cohort(seed=11, sites=SITES)
    records = call_records(cohort, keyer, refused_every=17)
    rng = np.random.default_rng(3)
    shuffled = [records[i] for i in rng.permutation(len(records))]  # storage order is not time order
    # Ties in time (same microsecond) at every site, so the id decides the order of some calls.
    for i in range(0, len(shuffled) - 1, 9):
        shuffled[i + 1].ts_us = shuffled[i].ts_us
    with CaptureStore.open(f"sqlite:///{path}") as store:
        store.write_calls(shuffled)
        for site in SITES:
            part = cohort.filter(pc.equal(cohort.column("site"), site.name))
            rows = rows_from_table(pa.table(outcome_rows(part)), OUTCOME_FILE_COLUMNS)
            import_rows(store, rows, site=site.name, outcome="kidney_failure", keyer=keyer, source="test")
    return path


def _in_index_order(path, site, ok_only):
    ok = " AND status = 'ok'" if ok_only else ""
    sql = (
        "SELECT subject_key, ts_us, status FROM calls WHERE ko_id = 'kfre' AND version = '1.0.0' "
        f"AND function = 'four-variable' AND site = ?{ok} ORDER BY ts_us, id"
    )
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, (site,)).fetchall()


@pytest.mark.parametrize("ok_only", [False, True])
def test_scanned_and_indexed_sites_come_in_time_then_id_order(store_path, ok_only):
    ko = kgrid_py.load("kfre@1", shelf="knowledge_objects")
    spec = ko.metadata.function("four-variable")
    with CaptureStore.open(f"sqlite:///{store_path}") as store:
        with sqlite3.connect(store_path) as conn:
            cursor = conn.cursor()
            key = [ko.id, ko.version, "four-variable"]
            (top,) = cursor.execute("SELECT max(rowid) FROM calls").fetchone()
            assert mon._site_is_most_of_calls(cursor, key, "alpha", top)  # read by a scan
            assert not mon._site_is_most_of_calls(cursor, key, "gamma", top)  # read through the index
        for site in ("alpha", "gamma"):
            table = mon.calls_numbers(store, ko.id, ko.version, spec, site=site, ok_only=ok_only)
            expected = _in_index_order(store_path, site, ok_only)
            assert len(expected) > 200
            got = list(
                zip(
                    table.column("subject_key").to_pylist(),
                    table.column("ts_us").to_pylist(),
                    [mon.STATUS_CODES[s] for s in table.column("status").to_pylist()],
                    strict=True,
                )
            )
            assert got == expected


def test_outcomes_read_in_a_child_process_give_the_same_evidence(store_path):
    ko = kgrid_py.load("kfre@1", shelf="knowledge_objects")
    with CaptureStore.open(f"sqlite:///{store_path}") as store:
        here = evidence_from_store(store, ko, "four-variable", "beta", "time-to-event", HORIZONS, processes=False)
        child = evidence_from_store(store, ko, "four-variable", "beta", "time-to-event", HORIZONS, processes=True)
    assert here.n > 1000 and np.sum(here.cause == 1) > 20
    for name in ("time", "cause", "site", "day"):
        assert np.array_equal(getattr(here, name), getattr(child, name)), name
    for output in HORIZONS:
        assert np.array_equal(here.predicted[output], child.predicted[output])


def test_a_failing_outcomes_reader_is_a_clear_error(store_path, tmp_path):
    broken = tmp_path / "no-outcomes.sqlite3"
    shutil.copy(store_path, broken)
    ko = kgrid_py.load("kfre@1", shelf="knowledge_objects")
    with CaptureStore.open(f"sqlite:///{broken}") as store:
        with sqlite3.connect(broken) as conn:  # the calls are still there; the child cannot read outcomes
            conn.execute("DROP TABLE outcomes")
        with pytest.raises(RecalibrationError, match=r"the outcomes reader failed: .*no such table: outcomes"):
            evidence_from_store(store, ko, "four-variable", "beta", "time-to-event", HORIZONS, processes=True)


def test_the_outcomes_worker_reports_a_bad_request_in_one_line():
    done = subprocess.run(
        [sys.executable, "-m", "kgrid_py.learning.outcomes_worker"], input=b"{}", capture_output=True, check=False
    )
    assert done.returncode == 1
    assert done.stderr.decode().strip() == "KeyError: 'url'"


def test_the_outcomes_worker_never_creates_a_store(tmp_path):
    missing = tmp_path / "typo.sqlite3"
    request = {"url": f"sqlite:///{missing}", "outcome": "kidney_failure", "site": "beta", "columns": ["event"]}
    done = subprocess.run(
        [sys.executable, "-m", "kgrid_py.learning.outcomes_worker"],
        input=json.dumps(request).encode(),
        capture_output=True,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.decode().strip().endswith("no such SQLite file")
    assert not missing.exists()
