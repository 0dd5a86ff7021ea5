"""One-shot federated logistic recalibration (ODAL2; Duan et al., JAMIA 2020;27:376).

For networks where several rounds are impractical: one round at θ̄ (the lead site's own estimate),
then the lead site, which holds patient rows, maximises the surrogate of the network's mean
log-likelihood

    L̃(θ) = L_1(θ) + ⟨∇L_N(θ̄) − ∇L_1(θ̄), θ⟩ + ½ (θ − θ̄)ᵀ [∇²L_N(θ̄) − ∇²L_1(θ̄)] (θ − θ̄)

(L_1 the lead's mean log-likelihood, L_N the network's, from the summed messages; ``pda``'s ODAL).
It is not the pooled estimate: the gap is measured in ``tests/test_federation.py`` and stated in the
README (relative gaps of ~1e-3 on the seeded cohort; Duan et al. report < 0.1 % bias in
simulation). Iterated Newton rounds (:mod:`kgrid_py.learning.federation`) are exact; prefer them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from kgrid_py.learning.recalibration import Method, logistic_sums, newton

__all__ = ["odal2"]


def odal2(
    lead_offset: NDArray[np.float64],
    lead_y: NDArray[np.float64],
    method: Method,
    theta_bar: Sequence[float],
    network_gradient: Sequence[float],
    network_hessian: Sequence[Sequence[float]],
    network_n: int,
) -> NDArray[np.float64]:
    """The surrogate maximiser; ``network_*`` are the summed messages at ``theta_bar`` over N patients."""
    bar = np.asarray(theta_bar, dtype=np.float64)
    n1 = len(lead_y)
    _, g1, h1 = logistic_sums(lead_offset, lead_y, bar, method)
    shift = np.asarray(network_gradient) / network_n - g1 / n1
    curve = np.asarray(network_hessian) / network_n - h1 / n1

    def surrogate(theta: NDArray[np.float64]) -> tuple[float, NDArray[np.float64], NDArray[np.float64]]:
        loglik, gradient, hessian = logistic_sums(lead_offset, lead_y, theta, method)
        d = theta - bar
        value = loglik / n1 + float(shift @ theta) + 0.5 * float(d @ curve @ d)
        return value, gradient / n1 + shift + curve @ d, hessian / n1 + curve

    theta, _, _, _ = newton(surrogate, bar, f"ODAL2 logistic {method} surrogate")
    return theta
