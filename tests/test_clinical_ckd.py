"""ckd-epi-egfr 1.0.0 and 2.0.0: graphs vs torch, vs the independent reference, rebuilds, loader."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from clinical_support import graph_inputs
from clinical_support import import_source as _import
from clinical_support import raw_session as _session

import kgrid_py
from kgrid_py.errors import InputError
from kgrid_py.ko import read_metadata

REPO = Path(__file__).resolve().parent.parent
SHELF = REPO / "knowledge_objects"
KO = SHELF / "ckd-epi-egfr"
VERSIONS = ["1.0.0", "2.0.0"]
FUNCTIONS = ["egfr-cr", "egfr-cys", "egfr-cr-cys"]
N = 3000


def _build_module(version: str) -> ModuleType:
    return _import(KO / version / "src" / "build.py")  # puts its src/ckd_epi_common on sys.path


def _reference(version: str) -> ModuleType:
    return _import(KO / version / "src" / "reference.py")


def _graph_inputs(version: str, function: str) -> list[str]:
    return graph_inputs(KO / version, function)


def _random_feeds(names: list[str], n: int = N, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    columns = {
        "age": rng.uniform(18, 120, n),
        "sex": rng.integers(0, 2, n).astype(np.float64),
        "creatinine": np.exp(rng.uniform(np.log(0.15), np.log(40), n)),
        "cystatin_c": np.exp(rng.uniform(np.log(0.2), np.log(20), n)),
        "black": rng.integers(0, 2, n).astype(np.float64),
    }
    # Put a tenth of the markers right on and around the knots.
    k = n // 10
    kappa = np.where(columns["sex"][:k] < 0.5, 0.7, 0.9)
    columns["creatinine"][:k] = kappa * (1 + rng.choice([-1e-9, 0.0, 1e-9, -0.01, 0.01], k))
    columns["cystatin_c"][:k] = 0.8 * (1 + rng.choice([-1e-9, 0.0, 1e-9, -0.01, 0.01], k))
    return {name: columns[name] for name in names}


def _model_path(version: str, function: str) -> Path:
    return KO / version / f"{function.replace('-', '_')}.onnx"


def _reference_egfr(version: str, function: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    ref = _reference(version)
    female = feeds["sex"] < 0.5
    extra = [feeds["black"]] if version == "1.0.0" and function != "egfr-cys" else []
    if function == "egfr-cr":
        return ref.egfr_cr(feeds["age"], female, feeds["creatinine"], *extra)
    if function == "egfr-cys":
        return ref.egfr_cys(feeds["age"], female, feeds["cystatin_c"])
    return ref.egfr_cr_cys(feeds["age"], female, feeds["creatinine"], feeds["cystatin_c"], *extra)


def _stage_index(egfr: np.ndarray) -> np.ndarray:
    return 5 - sum((egfr >= edge).astype(np.int64) for edge in (15, 30, 45, 60, 90))


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("function", FUNCTIONS)
def test_torch_matches_onnx_runtime(version: str, function: str) -> None:
    torch = pytest.importorskip("torch", reason="the parity test runs the torch source module")
    torch.set_num_threads(1)
    build = _build_module(version)
    module = build.common.load_module(KO / version / "src" / "model.py").module(function)
    names = _graph_inputs(version, function)
    feeds = _random_feeds(names)
    with torch.no_grad():
        egfr_t, stage_t = module(*(torch.from_numpy(feeds[n]) for n in names))
    egfr_o, stage_o = _session(_model_path(version, function)).run(["egfr", "stage"], feeds)
    diff = np.abs(egfr_t.numpy() - egfr_o)
    print(f"ckd-epi-egfr {version} {function}: torch vs ORT max abs diff {diff.max():.3e}")
    assert egfr_o.dtype == np.float64
    assert np.all(diff <= 1e-12 * np.abs(egfr_o))
    assert np.array_equal(stage_t.numpy(), stage_o)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("function", FUNCTIONS)
def test_onnx_matches_reference(version: str, function: str) -> None:
    names = _graph_inputs(version, function)
    feeds = _random_feeds(names, seed=1)
    egfr, stage = _session(_model_path(version, function)).run(["egfr", "stage"], feeds)
    want = _reference_egfr(version, function, feeds)
    rel = np.abs(egfr - want) / want
    print(f"ckd-epi-egfr {version} {function}: ORT vs reference max rel diff {rel.max():.3e}")
    assert rel.max() <= 1e-12
    assert np.array_equal(stage, _stage_index(want))


def test_stage_edges_apply_to_the_unrounded_egfr() -> None:
    # Scr chosen so that eGFR is just below / at 60 and 90: 59.99 is G3a, not G2.
    session = _session(_model_path("2.0.0", "egfr-cr"))
    ref = _reference("2.0.0")
    age = np.array([50.0, 50.0])
    lo, hi = 0.5, 3.0
    for edge, below_label in ((60.0, 2), (90.0, 1), (15.0, 5)):
        for _ in range(80):  # bisect Scr for eGFR == edge (eGFR falls as Scr rises)
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if ref.egfr_cr(50.0, False, mid) > edge else (lo, mid)
        scr = np.array([hi * 1.0001, lo / 1.0001])
        egfr, stage = session.run(["egfr", "stage"], {"age": age, "sex": np.ones(2), "creatinine": scr})
        assert egfr[0] < edge <= egfr[1]
        assert stage[0] == below_label and stage[1] == below_label - 1
        lo, hi = 0.3, 20.0


@pytest.mark.parametrize("version", VERSIONS)
def test_fresh_build_computes_the_committed_graphs(version: str, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="rebuilding exports from the torch source")
    torch.set_num_threads(1)
    summary = _build_module(version).build(tmp_path)
    assert summary["models"] == ["egfr_cr.onnx", "egfr_cys.onnx", "egfr_cr_cys.onnx"]
    for function in FUNCTIONS:
        feeds = _random_feeds(_graph_inputs(version, function), n=500, seed=2)
        fresh = _session(tmp_path / _model_path(version, function).name).run(None, feeds)
        committed = _session(_model_path(version, function)).run(None, feeds)
        for a, b in zip(fresh, committed, strict=True):
            assert np.array_equal(a, b)
    # The committed vectors are what the reference gives today.
    assert json.loads((tmp_path / "tests.json").read_text()) == json.loads((KO / version / "tests.json").read_text())


@pytest.mark.parametrize("version", VERSIONS)
def test_own_vectors_pass(version: str) -> None:
    ko = kgrid_py.load(f"ckd-epi-egfr@{version}", shelf=SHELF)
    failed = [f"{o.vector.name}: {o.detail}" for o in ko.test() if not o.passed]
    assert failed == []


def test_versions_give_2009_and_2021_results_for_the_same_patient() -> None:
    patient = {"age": 55, "sex": "male", "creatinine": 1.2}
    v1 = kgrid_py.load("ckd-epi-egfr@1", shelf=SHELF).call("egfr-cr", patient).result
    v2 = kgrid_py.load("ckd-epi-egfr@2", shelf=SHELF).call("egfr-cr", patient).result
    assert v1["egfr"] == pytest.approx(float(_reference("1.0.0").egfr_cr(55, False, 1.2, False)), rel=1e-12)
    assert v2["egfr"] == pytest.approx(float(_reference("2.0.0").egfr_cr(55, False, 1.2)), rel=1e-12)
    assert round(v2["egfr"]) == 71  # NKF 2021 calculator
    assert v1["egfr"] == pytest.approx(67.67, abs=0.01)
    assert kgrid_py.load("ckd-epi-egfr", shelf=SHELF).version == "2.0.0"


def test_black_sent_to_the_race_free_refit_is_an_error_that_says_why() -> None:
    ko = kgrid_py.load("ckd-epi-egfr@2", shelf=SHELF)
    with pytest.raises(InputError) as caught:
        ko.call("egfr-cr", {"age": 55, "sex": "male", "creatinine": 1.2, "black": True})
    assert [e.field for e in caught.value.errors] == ["black"]
    assert "race" in str(caught.value)


def test_umol_per_litre_creatinine_is_converted() -> None:
    ko = kgrid_py.load("ckd-epi-egfr@2", shelf=SHELF)
    mg = ko.call("egfr-cr", {"age": 55, "sex": "male", "creatinine": 1.2}).result
    umol = ko.call("egfr-cr", {"age": 55, "sex": "male", "creatinine": {"value": 106.08, "unit": "umol/L"}}).result
    assert umol["egfr"] == pytest.approx(mg["egfr"], rel=1e-12)


def test_titles_say_which_equation_and_year() -> None:
    """Discovery must never show two services with the same title for different equations."""
    titles: dict[str, str] = {}
    for version in VERSIONS:
        for function in read_metadata(KO / version)[1].functions:
            for title in (function.title, function.cds.title if function.cds else None):
                if title is None:
                    continue
                assert re.search(r"\b(2009|2012|2021)\b", title), title
                assert titles.setdefault(title, f"{version}/{function.name}").startswith(version) or (
                    function.name == "egfr-cys"  # the 2012 cystatin C equation is in both versions
                ), title
            if function.name != "egfr-cys":
                race = "race-based" if version == "1.0.0" else "race-free"
                assert race in function.title and race in function.cds.title  # type: ignore[union-attr]
