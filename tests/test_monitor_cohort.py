"""`kgrid outcomes import` and `kgrid monitor` end to end on the synthetic cohort, SQLite and PostgreSQL."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pytest
from click.testing import CliRunner
from pg import capture_url, pg_url  # noqa: F401 - fixtures
from sksurv.nonparametric import cumulative_incidence_competing_risks

from kgrid_py.cli import cli
from kgrid_py.learning.cohort import call_records, kfre_cohort, outcome_rows
from kgrid_py.learning.store import CaptureStore
from kgrid_py.learning.subjects import SubjectKeyer

SECRET = "s" * 48


@pytest.fixture(scope="module")
def cohort():
    return kfre_cohort(seed=2024)


def _import_site(runner, url, csv, site):
    args = [
        "outcomes",
        "import",
        str(csv),
        "--store",
        url,
        "--site",
        site,
        "--outcome",
        "kidney_failure",
        "--subject-col",
        "patient_id",
        "--event-col",
        "kidney_failure",
        "--event-date-col",
        "kf_date",
        "--followup-col",
        "last_seen",
        "--competing-col",
        "died",
        "--competing-date-col",
        "death_date",
    ]
    return runner.invoke(cli, args, env={"KGRID_SUBJECT_SECRET": SECRET})


def test_monitor_alerts_on_the_miscalibrated_site_only(cohort, capture_url, tmp_path):  # noqa: F811
    with CaptureStore.open(capture_url) as store:
        store.write_calls(call_records(cohort, SubjectKeyer(SECRET), refused_every=20))
    runner = CliRunner()
    sites = cohort.column("site")
    for site in ("calibrated", "underpredicted", "small-a", "small-b"):
        rows = pa.table(outcome_rows(cohort.filter(pc.equal(sites, site))))
        csv = tmp_path / f"{site}.csv"
        pacsv.write_csv(rows, csv)
        result = _import_site(runner, capture_url, csv, site)
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["inserted"] == rows.num_rows
    # importing the same file again changes nothing
    again = json.loads(_import_site(runner, capture_url, tmp_path / "small-a.csv", "small-a").output)
    assert (again["inserted"], again["duplicates"]) == (0, 30)

    out_json, out_html = tmp_path / "r.json", tmp_path / "r.html"
    result = runner.invoke(
        cli,
        [
            "monitor",
            "kfre@1",
            "four-variable",
            "--store",
            capture_url,
            "--json",
            str(out_json),
            "--html",
            str(out_html),
        ],
    )
    assert result.exit_code == 3, result.output
    report = json.loads(out_json.read_text())
    assert report["rules"]["estimator"] == "aalen-johansen"
    alerted = {a["site"] for a in report["alerts"]}
    assert "underpredicted" in alerted
    assert "calibrated" not in alerted
    by_site = {s["site"]: s for s in report["sites"]}
    assert by_site["calibrated"]["refused"] == 200
    for small in ("small-a", "small-b"):
        for perf in by_site[small]["performance"]:
            assert perf["observed_expected"] == {"status": "insufficient data"}
            assert perf["c_index"] == {"status": "insufficient data"}
    # the linked observed risk equals scikit-survival's Aalen-Johansen on the generator's own times
    for site in ("calibrated", "underpredicted"):
        rows = cohort.filter(pc.equal(sites, site))
        times, cif = cumulative_incidence_competing_risks(
            rows["cause"].to_numpy().astype(int), rows["time_days"].to_numpy().astype(float)
        )
        for perf in by_site[site]["performance"]:
            expected = cif[1][np.searchsorted(times, perf["horizon_days"], side="right") - 1]
            assert perf["observed_risk"]["value"] == pytest.approx(expected, abs=1e-12)
            assert perf["events"] == int(
                np.sum((rows["cause"].to_numpy() == 1) & (rows["time_days"].to_numpy() <= perf["horizon_days"]))
            )
    html = out_html.read_text()
    assert html.count("data:image/png;base64,") >= 6 and "http://" not in html.split("<body>")[1].split("src=")[0]
    assert "insufficient data" in html and "Aalen-Johansen" in html

    one = runner.invoke(cli, ["monitor", "kfre@1", "four-variable", "--store", capture_url, "--site", "calibrated"])
    assert one.exit_code == 0, one.output
