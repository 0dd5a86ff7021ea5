"""The ``kgrid_monitor_alert`` gauge on a real ``kgrid serve --capture`` (SQLite store).

The store holds the synthetic cohort's KFRE calls and outcomes at two sites (``calibrated``, and
``underpredicted`` whose true risk is twice KFRE's), dated within the last two years so they fall
in the default window. The gauge must say exactly what ``monitor()`` run here on the same store
says (1 for each declared range left, 0 for each kept), and a ``POST /outcomes`` must bring a
fresh pass that adds the server's own site.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.compute as pc
from activator_server import Server
from browser import ADMIN_TOKEN, build_ui_shelf, write_tokens
from prometheus_client.parser import text_string_to_metric_families

from activator.monitoring import default_since
from kgrid_py import load
from kgrid_py.learning.cohort import OUTCOME_FILE_COLUMNS, Site, call_records, kfre_cohort, outcome_rows
from kgrid_py.learning.monitor import monitor
from kgrid_py.learning.outcomes import import_rows, rows_from_table
from kgrid_py.learning.store import CaptureStore
from kgrid_py.learning.subjects import SubjectKeyer

SECRET = secrets.token_hex(32)


def _recent(cohort: pa.Table) -> pa.Table:
    """The cohort with every date moved so its calls fall in the last ~13 months."""
    shift = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=400)) - dt.date(2020, 1, 1)
    for name in ("call_date", "event_date", "death_date", "followup_date"):
        moved = [d + shift if d is not None else None for d in cohort.column(name).to_pylist()]
        cohort = cohort.set_column(cohort.schema.get_field_index(name), name, pa.array(moved, pa.date32()))
    return cohort


def _gauge(server: Server) -> tuple[dict[tuple[str, ...], float], float]:
    text = httpx.get(f"{server.url}/metrics").text
    series: dict[tuple[str, ...], float] = {}
    refreshed = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "kgrid_monitor_alert":
                labels = sample.labels
                key = tuple(labels[k] for k in ("ko", "version", "function", "site", "metric", "horizon"))
                series[key] = sample.value
            elif sample.name == "kgrid_monitor_alert_refreshed":
                refreshed = sample.value
    return series, refreshed


def _wait(server: Server, done, timeout: float = 180.0) -> tuple[dict[tuple[str, ...], float], float]:
    deadline = time.monotonic() + timeout
    while True:
        series, refreshed = _gauge(server)
        if done(series, refreshed):
            return series, refreshed
        assert time.monotonic() < deadline, f"the gauge never got there: {series} {refreshed}"
        time.sleep(0.5)


def test_alert_gauge_matches_monitor_and_refreshes_after_new_outcomes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'capture.sqlite3'}"
    keyer = SubjectKeyer(SECRET)
    cohort = _recent(kfre_cohort(seed=7, sites=(Site("calibrated", 2500), Site("underpredicted", 2500, 2.0))))
    with CaptureStore.open(url) as store:
        store.write_calls(call_records(cohort, keyer))
        for site in ("calibrated", "underpredicted"):
            part = cohort.filter(pc.equal(cohort.column("site"), site))
            rows = rows_from_table(pa.table(outcome_rows(part)), OUTCOME_FILE_COLUMNS)
            assert import_rows(store, rows, site=site, outcome="kidney_failure", keyer=keyer, source="t").refused == 0
        function = load("kfre@1.0.0").metadata.function("four-variable")
        report = monitor(store, "kfre", "1.0.0", function, since=default_since(function))
    ranges = [r.metric for r in function.outcome.ranges]
    expected = {
        ("kfre", "1.0.0", "four-variable", site, metric, horizon.output): 0.0
        for site in ("calibrated", "underpredicted")
        for horizon in function.outcome.horizons
        for metric in ranges
    }
    for alert in report["alerts"]:
        expected[("kfre", "1.0.0", "four-variable", alert["site"], alert["metric"], alert["horizon"])] = 1.0
    assert {a["site"] for a in report["alerts"]} == {"underpredicted"}  # the cohort's truth, as a precondition

    secret = tmp_path / "subject.secret"
    secret.write_text(SECRET)
    shelf = build_ui_shelf(tmp_path)
    args = ["--tokens", str(write_tokens(tmp_path)), "--no-watch", "--no-access-log", "--capture", url]
    server = Server(shelf, *args, "--site", "north", "--subject-secret-file", str(secret), log=tmp_path / "s.log")
    try:
        server.wait_ready()
        series, refreshed = _wait(server, lambda s, r: r > 0)
        assert series == expected
        assert series[("kfre", "1.0.0", "four-variable", "underpredicted", "observed_expected", "risk_5y")] == 1.0
        assert not any(v for k, v in series.items() if k[3] == "calibrated")

        # calls and outcomes at the server's own site: the next pass adds it (too few events: all 0)
        api = f"{server.url}/endpoints/kfre/four-variable?v=1.0.0"
        for i in range(3):
            body = {"age": 60 + i, "sex": "male", "egfr": 30, "uacr": 300}
            assert httpx.post(api, json=body, headers={"X-Subject-Id": f"n-{i}"}).status_code == 200
        end = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=30)).isoformat()
        rows = [{"patient_id": f"n-{i}", "event": 0, "followup_date": end} for i in range(3)]
        posted = httpx.post(
            f"{server.url}/outcomes?ko=kfre&function=four-variable",
            json={"rows": rows},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert posted.status_code == 200 and posted.json()["inserted"] == 3, posted.text
        after, _ = _wait(server, lambda s, r: r > refreshed and any(k[3] == "north" for k in s))
    finally:
        server.stop()
    north = {k: v for k, v in after.items() if k[3] == "north"}
    assert len(north) == len(function.outcome.horizons) * len(ranges) and set(north.values()) == {0.0}
    assert {k: v for k, v in after.items() if k[3] != "north"} == expected
