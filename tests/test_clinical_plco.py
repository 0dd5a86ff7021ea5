"""plcom2012 1.0.0: graph vs torch, vs the independent reference, rebuild, loader checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from clinical_support import import_source as _import
from clinical_support import raw_session as _session

import kgrid_py
from kgrid_py.errors import InputError

REPO = Path(__file__).resolve().parent.parent
SHELF = REPO / "knowledge_objects"
KO = SHELF / "plcom2012" / "1.0.0"
OUTPUTS = ["risk_6y", "screening_recommended"]
N = 3000
# The public implementation's worked example: risk 0.01750922.
WORKED_EXAMPLE = {
    "age": 62,
    "race": "white",
    "education": 4,
    "bmi": 27,
    "copd": False,
    "personal_cancer_history": False,
    "family_lung_cancer_history": False,
    "smoking_status": "former",
    "cigarettes_per_day": 80,
    "smoking_years": 27,
    "years_since_quit": 10,
}


def _metadata() -> dict[str, Any]:
    return json.loads((KO / "metadata.json").read_text())


def _random_feeds(n: int = N, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    current = rng.integers(0, 2, n).astype(np.float64)  # 1 -> index 0 ("current")
    feeds = {
        "age": rng.uniform(40, 90, n),
        "race": rng.integers(0, 6, n).astype(np.float64),
        "education": rng.integers(1, 7, n).astype(np.float64),
        "bmi": rng.uniform(14, 60, n),
        "copd": rng.integers(0, 2, n).astype(np.float64),
        "personal_cancer_history": rng.integers(0, 2, n).astype(np.float64),
        "family_lung_cancer_history": rng.integers(0, 2, n).astype(np.float64),
        "smoking_status": 1.0 - current,
        "cigarettes_per_day": np.exp(rng.uniform(np.log(1), np.log(100), n)),
        "smoking_years": rng.uniform(1, 70, n),
        "years_since_quit": np.where(current > 0, 0.0, rng.uniform(0, 50, n)),
        "threshold": rng.choice([0.0151, 0.017, 0.02, 0.05], n),
    }
    return {f["name"]: feeds[f["name"]] for f in _metadata()["functions"][0]["inputs"]}


def _reference_risk(feeds: dict[str, np.ndarray]) -> np.ndarray:
    ref = _import(KO / "src" / "reference.py")
    races = _metadata()["functions"][0]["inputs"][1]["enum"]
    out = np.empty(len(feeds["age"]))
    for i in range(len(out)):
        out[i] = ref.risk_6y(
            age=feeds["age"][i],
            race=races[int(feeds["race"][i])],
            education=feeds["education"][i],
            bmi=feeds["bmi"][i],
            copd=bool(feeds["copd"][i]),
            personal_cancer_history=bool(feeds["personal_cancer_history"][i]),
            family_lung_cancer_history=bool(feeds["family_lung_cancer_history"][i]),
            current_smoker=feeds["smoking_status"][i] == 0.0,
            cigarettes_per_day=feeds["cigarettes_per_day"][i],
            smoking_years=feeds["smoking_years"][i],
            years_since_quit=feeds["years_since_quit"][i],
        )
    return out


def test_torch_matches_onnx_runtime() -> None:
    torch = pytest.importorskip("torch", reason="the parity test runs the torch source module")
    torch.set_num_threads(1)
    model = _import(KO / "src" / "model.py")
    feeds = _random_feeds()
    with torch.no_grad():
        risk_t, flag_t = model.PLCOm2012()(*(torch.from_numpy(feeds[n]) for n in model.INPUTS))
    risk_o, flag_o = _session(KO / "risk.onnx").run(OUTPUTS, feeds)
    diff = np.abs(risk_t.numpy() - risk_o)
    print(f"plcom2012 risk_6y: torch vs ORT max abs diff {diff.max():.3e}")
    assert risk_o.dtype == np.float64
    assert np.all(diff <= 1e-12 * risk_o)
    assert np.array_equal(flag_t.numpy(), flag_o)


def test_onnx_matches_reference() -> None:
    feeds = _random_feeds(seed=1)
    risk, flag = _session(KO / "risk.onnx").run(OUTPUTS, feeds)
    want = _reference_risk(feeds)
    rel = np.abs(risk - want) / want
    print(
        f"plcom2012 risk_6y: ORT vs reference max rel diff {rel.max():.3e} (risks {want.min():.1e} to {want.max():.3f})"
    )
    assert rel.max() <= 1e-12
    assert np.array_equal(flag, want >= feeds["threshold"])


def test_tiny_risks_keep_their_relative_precision() -> None:
    # ONNX Runtime's float64 Sigmoid is ~1e-3 off at logit -30; the graph avoids it.
    feeds = {name: col[:1] for name, col in _random_feeds(n=1).items()}
    feeds.update(
        age=np.array([18.0]),
        education=np.array([6.0]),
        bmi=np.array([60.0]),
        race=np.array([2.0]),
        cigarettes_per_day=np.array([0.3]),
        smoking_years=np.array([1.0]),
        smoking_status=np.array([1.0]),
        years_since_quit=np.array([60.0]),
        copd=np.zeros(1),
        personal_cancer_history=np.zeros(1),
        family_lung_cancer_history=np.zeros(1),
    )
    risk, _ = _session(KO / "risk.onnx").run(OUTPUTS, feeds)
    want = _reference_risk(feeds)
    assert want[0] < 1e-20
    assert risk[0] == pytest.approx(want[0], rel=1e-12)


def test_published_examples_through_the_loader() -> None:
    ko = kgrid_py.load("plcom2012", shelf=SHELF)
    person = WORKED_EXAMPLE
    out = ko.call("risk", person)
    assert out.result["risk_6y"] == pytest.approx(0.01750922, abs=5e-9)
    assert out.result["screening_recommended"] is True
    assert out.warnings == []
    anchor = ko.call("risk", {**person, "cigarettes_per_day": 10 / 0.4021541613})
    assert anchor.result["risk_6y"] == pytest.approx(0.0106393, abs=5e-8)
    strict = ko.call("risk", {**person, "threshold": 0.02})
    assert strict.result["screening_recommended"] is False


def test_current_smoker_with_years_since_quit_is_an_error() -> None:
    ko = kgrid_py.load("plcom2012", shelf=SHELF)
    person = {
        **WORKED_EXAMPLE,
        "race": "black",
        "education": 2,
        "bmi": 24,
        "copd": True,
        "family_lung_cancer_history": True,
        "smoking_status": "current",
        "cigarettes_per_day": 20,
        "smoking_years": 40,
        "years_since_quit": 3,
    }
    with pytest.raises(InputError) as caught:
        ko.call("risk", person)
    assert [e.field for e in caught.value.errors] == ["years_since_quit"]
    assert ko.call("risk", {**person, "years_since_quit": 0}).result["risk_6y"] > 0


def test_ages_outside_55_to_74_warn() -> None:
    ko = kgrid_py.load("plcom2012", shelf=SHELF)
    person = {
        **WORKED_EXAMPLE,
        "race": "asian",
        "education": 5,
        "bmi": 22,
        "cigarettes_per_day": 15,
        "smoking_years": 30,
        "years_since_quit": 5,
    }
    for age, warned in ((50, ["age"]), (55, []), (74, []), (80, ["age"])):
        out = ko.call("risk", {**person, "age": age})
        assert [w.field for w in out.warning_details] == warned


def test_own_vectors_pass() -> None:
    ko = kgrid_py.load("plcom2012@1.0.0", shelf=SHELF)
    failed = [f"{o.vector.name}: {o.detail}" for o in ko.test() if not o.passed]
    assert failed == []


def test_fresh_build_computes_the_committed_graph(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="rebuilding exports from the torch source")
    torch.set_num_threads(1)
    build = _import(KO / "src" / "build.py")
    assert build.build(tmp_path)["models"] == ["risk.onnx"]
    feeds = _random_feeds(n=500, seed=2)
    fresh = _session(tmp_path / "risk.onnx").run(None, feeds)
    committed = _session(KO / "risk.onnx").run(None, feeds)
    for a, b in zip(fresh, committed, strict=True):
        assert np.array_equal(a, b)
    assert json.loads((tmp_path / "tests.json").read_text()) == json.loads((KO / "tests.json").read_text())


def test_years_smoked_and_since_quitting_cannot_exceed_age_in_call_and_batch() -> None:
    ko = kgrid_py.load("plcom2012", shelf=SHELF)
    person = {**WORKED_EXAMPLE, "age": 60, "cigarettes_per_day": 20, "smoking_years": 40, "years_since_quit": 20}
    assert ko.call("risk", person).result["risk_6y"] > 0  # 40 + 20 = 60: possible
    impossible = {**person, "years_since_quit": 21}
    with pytest.raises(InputError, match="cannot exceed age"):
        ko.call("risk", impossible)
    out = ko.call_batch("risk", {k: [person[k], impossible[k]] for k in person})
    assert out.errors[0] is None
    assert out.errors[1] is not None and "cannot exceed age" in out.errors[1]
