"""kfre 1.0.0: graphs vs torch, vs the independent reference, vs the PyPI `kfre` package, rebuilds."""

from __future__ import annotations

import itertools
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from clinical_support import graph_inputs
from clinical_support import import_source as _import
from clinical_support import raw_session as _session

import kgrid_py

REPO = Path(__file__).resolve().parent.parent
SHELF = REPO / "knowledge_objects"
KO = SHELF / "kfre" / "1.0.0"
MODELS = {"four-variable": "four_variable.onnx", "eight-variable": "eight_variable.onnx"}
REGIONS = ["north_american", "non_north_american"]
N = 3000


def _graph_inputs(function: str) -> list[str]:
    return graph_inputs(KO, function)


def _random_feeds(names: list[str], n: int = N, seed: int = 0) -> dict[str, np.ndarray]:
    """Valid graph feeds, deliberately wider than the intended population (eGFR 1-150)."""
    rng = np.random.default_rng(seed)
    columns = {
        "age": rng.uniform(18, 110, n),
        "sex": rng.integers(0, 2, n).astype(np.float64),
        "egfr": rng.uniform(1, 150, n),
        "uacr": np.exp(rng.uniform(np.log(0.1), np.log(50000), n)),
        "albumin": rng.uniform(1.5, 5.5, n),
        "phosphate": rng.uniform(1.5, 9.0, n),
        "bicarbonate": rng.uniform(10, 40, n),
        "calcium": rng.uniform(6.0, 13.0, n),
        "region": rng.integers(0, 2, n).astype(np.float64),
    }
    return {name: columns[name] for name in names}


def _reference_risks(function: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    ref = _import(KO / "src" / "reference.py")
    base = (feeds["age"], feeds["sex"], feeds["egfr"], feeds["uacr"])
    if function == "four-variable":
        lp, variables = ref.lp_four(*base), 4
    else:
        labs = (feeds["albumin"], feeds["phosphate"], feeds["bicarbonate"], feeds["calcium"])
        lp, variables = ref.lp_eight(*base, *labs), 8
    na = feeds["region"] < 0.5
    return {
        f"risk_{y}y": np.where(na, ref.risk(lp, variables, y, True), ref.risk(lp, variables, y, False)) for y in (2, 5)
    }


@pytest.mark.parametrize("function", list(MODELS))
def test_torch_matches_onnx_runtime(function: str) -> None:
    torch = pytest.importorskip("torch", reason="the parity test runs the torch source module")
    torch.set_num_threads(1)
    model = _import(KO / "src" / "model.py")
    module = model.FUNCTIONS[function][1]()
    names = _graph_inputs(function)
    feeds = _random_feeds(names)
    with torch.no_grad():
        expected = [t.numpy() for t in module(*(torch.from_numpy(feeds[n]) for n in names))]
    got = _session(KO / MODELS[function]).run(["risk_2y", "risk_5y"], feeds)
    for name, a, b in zip(("risk_2y", "risk_5y"), expected, got, strict=True):
        diff = np.abs(a - b)
        print(f"kfre {function} {name}: torch vs ORT max abs diff {diff.max():.3e}")
        assert b.dtype == np.float64
        assert np.all(diff <= 1e-12 * b)


@pytest.mark.parametrize("function", list(MODELS))
def test_onnx_matches_reference(function: str) -> None:
    feeds = _random_feeds(_graph_inputs(function), seed=1)
    got = dict(
        zip(("risk_2y", "risk_5y"), _session(KO / MODELS[function]).run(["risk_2y", "risk_5y"], feeds), strict=True)
    )
    for name, want in _reference_risks(function, feeds).items():
        rel = np.abs(got[name] - want) / want
        print(
            f"kfre {function} {name}: ORT vs reference max rel diff {rel.max():.3e} "
            f"(risks {want.min():.1e} to {want.max():.3f})"
        )
        assert rel.max() <= 1e-12


def test_small_risks_keep_their_relative_precision() -> None:
    # Young, high eGFR, tiny UACR: risk ~1e-8, where 1 - S0**exp(LP) would lose ~8 digits.
    feeds = {
        "age": np.array([18.0]),
        "sex": np.array([0.0]),
        "egfr": np.array([150.0]),
        "uacr": np.array([0.1]),
        "region": np.array([1.0]),
    }
    risk_2y, _ = _session(KO / MODELS["four-variable"]).run(None, feeds)
    want = _reference_risks("four-variable", feeds)["risk_2y"]
    assert want[0] < 1e-6
    assert risk_2y[0] == pytest.approx(want[0], rel=1e-13)


def _kfre_grid(function: str) -> dict[str, np.ndarray]:
    ages = [18, 30, 42, 54, 66, 78, 90, 102]
    egfrs = [10, 15, 22.5, 30, 45, 59.9]
    uacrs = [0.5, 3, 30, 300, 3000, 20000]
    rows = list(itertools.product(ages, ["female", "male"], egfrs, uacrs))
    grid = {name: np.array([r[i] for r in rows]) for i, name in enumerate(("age", "sex", "egfr", "uacr"))}
    if function == "eight-variable":
        rng = np.random.default_rng(3)
        n = len(rows)
        grid["albumin"] = rng.uniform(2.5, 5.0, n)
        grid["phosphate"] = rng.uniform(2.5, 7.0, n)
        grid["bicarbonate"] = rng.uniform(15, 32, n)
        grid["calcium"] = rng.uniform(7.5, 11.0, n)
    return grid


@pytest.mark.parametrize("function", list(MODELS))
@pytest.mark.parametrize("region", REGIONS)
def test_agrees_with_the_pypi_kfre_package(function: str, region: str) -> None:
    kfre = pytest.importorskip("kfre", reason="kfre is a test-only dependency")
    pd = pytest.importorskip("pandas")
    grid = _kfre_grid(function)
    n = len(grid["age"])
    assert n >= 500  # per equation, region and horizon
    ko = kgrid_py.load("kfre@1", shelf=SHELF)
    out = ko.call_batch(function, {**grid, "region": np.array([region] * n, dtype=object)})
    assert all(e is None for e in out.errors)
    df = pd.DataFrame({"age": grid["age"], "sex": grid["sex"], "egfr": grid["egfr"], "uacr": grid["uacr"]})
    columns = {"age": "age", "sex": "sex", "eGFR": "egfr", "uACR": "uacr"}
    extra: dict[str, Any] = {}
    if function == "eight-variable":
        for name, col in (
            ("albumin", "albumin"),
            ("phosphorous", "phosphate"),
            ("bicarbonate", "bicarbonate"),
            ("calcium", "calcium"),
        ):
            df[col] = grid[col]
            columns[name] = col
        extra = {"use_extra_vars": True, "num_vars": 8}
    worst = 0.0
    for years in (2, 5):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # kfre warns about its own scope checks
            theirs = np.asarray(
                kfre.predict_kfre(df, columns, years, is_north_american=region == "north_american", **extra),
                dtype=np.float64,
            )
        ours = out[f"risk_{years}y"]
        rel = np.abs(ours - theirs) / theirs
        worst = max(worst, float(rel.max()))
        assert rel.max() <= 1e-9, f"{years}y: max rel diff {rel.max():.3e}"
    print(f"kfre {function} {region}: {n} inputs x 2 horizons, max rel diff vs kfre {worst:.3e}")


def test_kfre_person_agrees_on_the_calculator_examples() -> None:
    kfre = pytest.importorskip("kfre", reason="kfre is a test-only dependency")
    ko = kgrid_py.load("kfre@1", shelf=SHELF)
    for age, sex, egfr, uacr in ((63, "female", 45, 30), (55, "male", 38, 150)):
        result = ko.call("four-variable", {"age": age, "sex": sex, "egfr": egfr, "uacr": uacr})
        for years in (2, 5):
            theirs = kfre.kfre_person(age, sex == "male", egfr, uacr, True, years=years)
            assert result.result[f"risk_{years}y"] == pytest.approx(float(theirs), rel=1e-9)
        assert result.warnings == []


def test_calculator_example_through_the_cli() -> None:
    from click.testing import CliRunner

    from kgrid_py.cli import cli

    patient = json.dumps({"age": 63, "sex": "female", "egfr": 45, "uacr": 30})
    run = CliRunner().invoke(cli, ["run", "kfre", "four-variable", "--input", patient, "--shelf", str(SHELF)])
    assert run.exit_code == 0, run.output
    result = json.loads(run.output)["result"]
    assert 0.004 <= result["risk_2y"] < 0.005  # calculator: 0.4 %
    assert 0.013 <= result["risk_5y"] < 0.014  # calculator: 1.3 %


def test_uacr_in_mg_per_mmol_is_converted() -> None:
    ko = kgrid_py.load("kfre@1", shelf=SHELF)
    base = {"age": 60, "sex": "male", "egfr": 30}
    a = ko.call("four-variable", {**base, "uacr": {"value": 10, "unit": "mg/mmol"}}).result
    b = ko.call("four-variable", {**base, "uacr": 88.4}).result
    assert a["risk_5y"] == pytest.approx(b["risk_5y"], rel=1e-12)


def test_out_of_population_egfr_warns_and_still_answers() -> None:
    ko = kgrid_py.load("kfre@1", shelf=SHELF)
    for egfr in (65, 8):
        out = ko.call("four-variable", {"age": 60, "sex": "male", "egfr": egfr, "uacr": 30})
        assert 0 < out.result["risk_5y"] < 1
        assert [w.field for w in out.warning_details] == ["egfr"]


def test_own_vectors_pass() -> None:
    ko = kgrid_py.load("kfre@1.0.0", shelf=SHELF)
    failed = [f"{o.vector.name}: {o.detail}" for o in ko.test() if not o.passed]
    assert failed == []


def test_fresh_build_computes_the_committed_graphs(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="rebuilding exports from the torch source")
    torch.set_num_threads(1)
    build = _import(KO / "src" / "build.py")
    summary = build.build(tmp_path)
    assert sorted(summary["models"]) == sorted(MODELS.values())
    for function, filename in MODELS.items():
        feeds = _random_feeds(_graph_inputs(function), n=500, seed=2)
        fresh = _session(tmp_path / filename).run(None, feeds)
        committed = _session(KO / filename).run(None, feeds)
        for a, b in zip(fresh, committed, strict=True):
            assert np.array_equal(a, b)
    # The vectors' expected values come from the float64 reference, whose exp and log may round
    # the last bit differently on another CPU (1-ulp differences seen between two VMs): the same
    # vectors, numbers equal to within 4 ulp.
    fresh_vectors = json.loads((tmp_path / "tests.json").read_text())
    committed_vectors = json.loads((KO / "tests.json").read_text())
    assert _within_ulps(fresh_vectors, committed_vectors)


def _within_ulps(a: Any, b: Any, ulps: int = 4) -> bool:
    """``a == b`` as JSON, except that floats may differ by ``ulps`` units in the last place."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= ulps * np.spacing(max(abs(a), abs(b)))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_within_ulps(a[k], b[k], ulps) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_within_ulps(x, y, ulps) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b
