"""monitor() on a large SQLite store computes sites in child processes: the report must not change."""

from __future__ import annotations

import json
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
from kgrid_py.learning.store import CaptureStore
from kgrid_py.learning.subjects import SubjectKeyer

SECRET = "p" * 48


@pytest.fixture(scope="module")
def store_url(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('par') / 'capture.sqlite3'}"
    keyer = SubjectKeyer(SECRET)
    sites = (Site("alpha", 3000), Site("beta", 3000, risk_ratio=2.0), Site("gamma", 400))
    cohort = kfre_cohort(seed=7, sites=sites)
    with CaptureStore.open(url) as store:
        store.write_calls(call_records(cohort, keyer, refused_every=25))
        for site in sites:
            part = cohort.filter(pc.equal(cohort.column("site"), site.name))
            rows = rows_from_table(pa.table(outcome_rows(part)), OUTCOME_FILE_COLUMNS)
            import_rows(store, rows, site=site.name, outcome="kidney_failure", keyer=keyer, source="test")
    return url


def _report(url, **kwargs):
    ko = kgrid_py.load("kfre@1", shelf="knowledge_objects")
    with CaptureStore.open(url) as store:
        report = mon.monitor(store, ko.id, ko.version, ko.metadata.function("four-variable"), **kwargs)
    report.pop("generated_at")
    return json.dumps(report, sort_keys=True, allow_nan=False)


def test_sites_in_processes_give_the_same_report_as_one_process(store_url):
    ko = kgrid_py.load("kfre@1", shelf="knowledge_objects")
    with CaptureStore.open(store_url) as store:
        split = mon._parallel_sites(store, ko.id, ko.version, "four-variable", None, None, 2)
        assert split == ["alpha", "beta", "gamma"]
        # too small for the automatic choice, and one process when asked for one or for one site
        assert mon._parallel_sites(store, ko.id, ko.version, "four-variable", None, None, None) is None
        assert mon._parallel_sites(store, ko.id, ko.version, "four-variable", None, None, 1) is None
        assert mon._parallel_sites(store, ko.id, ko.version, "four-variable", "alpha", None, 2) is None
    serial = _report(store_url, workers=1)
    assert json.loads(serial)["alerts"], "the cohort's miscalibrated site must alert"
    assert _report(store_url, workers=2) == serial
    assert _report(store_url, workers=3) == serial


def test_workers_below_one_is_refused(store_url):
    with pytest.raises(mon.MonitorError, match="workers must be at least 1, not 0"):
        _report(store_url, workers=0)


def test_the_worker_reports_a_bad_request_in_one_line():
    done = subprocess.run(
        [sys.executable, "-m", "kgrid_py.learning.monitor_worker"], input=b"{}", capture_output=True, check=False
    )
    assert done.returncode == 1
    assert done.stderr.decode().strip() == "KeyError: 'function'"


@pytest.mark.parametrize(
    ("executable", "reason"),
    [
        pytest.param("/nonexistent/python", "No such file", id="cannot-start"),
        pytest.param("/bin/false", "no message", id="exits-1"),
    ],
)
def test_a_failing_worker_is_a_named_error_not_a_crash(store_url, monkeypatch, executable, reason):
    ko = kgrid_py.load("kfre@1", shelf="knowledge_objects")
    function = ko.metadata.function("four-variable")
    monkeypatch.setattr(sys, "executable", executable)
    with CaptureStore.open(store_url) as store, pytest.raises(mon.MonitorError) as caught:
        mon._sections_in_processes(store, ko.id, ko.version, function, ["alpha", "gamma"], None, 2)
    assert str(caught.value).startswith("site 'alpha': the monitor worker failed: ")
    assert reason in str(caught.value)


@pytest.mark.parametrize(
    "codes",
    [
        pytest.param([0, 1, 0, 2, 1, 3], id="first-seen-order"),
        pytest.param([2, 0, 2, 1, 0, 1], id="other-order"),
        pytest.param([5], id="one"),
        pytest.param([], id="none"),
    ],
)
def test_first_of_each_code(codes):
    arr = np.asarray(codes, dtype=np.int64)
    expected = sorted({c: i for i, c in reversed(list(enumerate(codes)))}.values())
    assert mon._first_of_each(arr).tolist() == expected
