"""Recalibration and bootstrap optimism on simulated rows (issue 15's speed goal: 100,000 rows,
200 resamples, under 60 s), the fit included.

    python benchmarks/recalibration_speed.py [ROWS] [RESAMPLES] [METHOD] [kfre|logistic]

``kfre``: time to event (KFRE's two horizons, Cox slope and baselines); ``logistic``: PLCOm2012-like.
"""

from __future__ import annotations

import sys
import time

import numpy as np

sys.path.insert(0, "tests")
from test_recalibration import simulate_kfre, simulate_logistic

from kgrid_py.learning.closed_testing import bootstrap_optimism

rows = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
resamples = int(sys.argv[2]) if len(sys.argv) > 2 else 200
method = sys.argv[3] if len(sys.argv) > 3 else "auto"
model = sys.argv[4] if len(sys.argv) > 4 else "kfre"
rng = np.random.default_rng(1)
evidence = simulate_kfre(rng, rows) if model == "kfre" else simulate_logistic(rng, rows, 0.4, 0.8)
start = time.perf_counter()
result = bootstrap_optimism(evidence, method, resamples, seed=0)
print(f"{model}: {rows} rows, {resamples} resamples, method {method}: {time.perf_counter() - start:.1f} s")
