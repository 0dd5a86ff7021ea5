"""Recalibration evidence from a site's capture store: its captured calls linked to their outcomes.

The same rules as ``kgrid monitor`` (it reuses monitor's linkage, so the two never disagree): the
index call is each subject's first successful call of the KO version's function; time zero is its
UTC date; outcome rows combine per subject; a competing event is cause 2. The risks are the ones
the KO returned at the time (the stored outputs), which are what its graph computes.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from kgrid_py.ko import KnowledgeObject
from kgrid_py.learning.monitor import combined_outcomes, link_outcomes, outcomes_table, parse_json_column
from kgrid_py.learning.recalibration import Evidence, Kind, RecalibrationError
from kgrid_py.learning.store import CaptureStore

__all__ = ["evidence_from_store"]


def evidence_from_store(
    store: CaptureStore, ko: KnowledgeObject, function: str, site: str, kind: Kind, horizons: dict[str, float]
) -> Evidence:
    """One row per linked index call of ``ko``'s ``function`` at ``site``."""
    spec = ko.function(function)
    if spec.outcome is None:
        raise RecalibrationError(f"{ko.ref} {function} declares no outcome: its calls cannot be linked")
    calls = store.calls_table(
        ko_id=ko.id,
        version=ko.version,
        function=function,
        site=site,
        columns=["ts_us", "site", "subject_key", "outputs", "status"],
    )
    if calls.num_rows == 0:
        raise RecalibrationError(f"{store!r} holds no call of {ko.ref} {function} at site {site!r}")
    ok = np.asarray(calls.column("status").to_numpy(zero_copy_only=False)) == "ok"
    ok_calls = calls.filter(pa.array(ok))
    outputs = parse_json_column(ok_calls.column("outputs"))
    outcomes = combined_outcomes(outcomes_table(store, spec.outcome.name, site))
    linked = link_outcomes(ok_calls, outputs, spec.outcome, outcomes, site)
    n = len(linked["time"])
    if n == 0:
        raise RecalibrationError(f"site {site!r}: no call of {ko.ref} {function} is linked to an outcome")
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
    )
