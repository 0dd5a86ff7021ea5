"""One-shot federated logistic recalibration (ODAL2; Duan et al., JAMIA 2020;27:376).

For networks where several rounds are impractical: one round at θ̄ (the lead site's own estimate),
then the lead site, which holds patient rows, maximises the surrogate of the network's mean
log-likelihood

    L̃(θ) = L_1(θ) + ⟨∇L_N(θ̄) − ∇L_1(θ̄), θ⟩ + ½ (θ − θ̄)ᵀ [∇²L_N(θ̄) − ∇²L_1(θ̄)] (θ − θ̄)

(L_1 the lead's mean log-likelihood, L_N the network's, from the summed messages; ``pda``'s ODAL).
It is not the pooled estimate: the gap is measured in ``tests/test_federation.py`` (arrays) and
``tests/test_odal_cli_mailbox.py`` (``kgrid federate plan --lead`` / ``kgrid federate odal`` through
the mailbox) and stated in the README (within 2 % and a quarter of a standard error on the seeded
cohorts; Duan et al. report < 0.1 % bias in simulation). Iterated Newton rounds
(:mod:`kgrid_py.learning.federation`) are exact; prefer them. Logistic only: the Cox analogue
(ODAC) needs risk-set sums the mailbox messages do not carry.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from kgrid_py.learning.recalibration import Method, RecalibrationError, Update, logistic_sums, newton

__all__ = ["odal2", "odal2_update"]


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
    return odal2_update(lead_offset, lead_y, method, theta_bar, network_gradient, network_hessian, network_n).estimates


def odal2_update(
    lead_offset: NDArray[np.float64],
    lead_y: NDArray[np.float64],
    method: Method,
    theta_bar: Sequence[float],
    network_gradient: Sequence[float],
    network_hessian: Sequence[Sequence[float]],
    network_n: int,
) -> Update:
    """The surrogate fit as an :class:`Update` a version can be written from.

    Its covariance is the inverse of N times the surrogate's curvature at the estimate (the lead's
    Hessian there plus the network's correction at θ̄): a model-based approximation of the pooled
    information, not Duan et al.'s sandwich (that needs a second round). Its ``loglik`` is N·L̃(θ̃),
    the surrogate's, not a pooled log-likelihood.
    """
    bar = np.asarray(theta_bar, dtype=np.float64)
    n1 = len(lead_y)
    if n1 == 0 or network_n < n1:
        raise RecalibrationError(
            f"ODAL2: the lead has {n1} rows, the network {network_n}: the lead is one of the sites"
        )
    _, g1, h1 = logistic_sums(lead_offset, lead_y, bar, method)
    shift = np.asarray(network_gradient, dtype=np.float64) / network_n - g1 / n1
    curve = np.asarray(network_hessian, dtype=np.float64) / network_n - h1 / n1
    if shift.shape != bar.shape or curve.shape != (len(bar), len(bar)):
        raise RecalibrationError(f"ODAL2: the network sums do not have the shape of {len(bar)} parameter(s)")

    def surrogate(theta: NDArray[np.float64]) -> tuple[float, NDArray[np.float64], NDArray[np.float64]]:
        loglik, gradient, hessian = logistic_sums(lead_offset, lead_y, theta, method)
        d = theta - bar
        value = loglik / n1 + float(shift @ theta) + 0.5 * float(d @ curve @ d)
        return value, gradient / n1 + shift + curve @ d, hessian / n1 + curve

    theta, value, hessian, iterations = newton(surrogate, bar, f"ODAL2 logistic {method} surrogate")
    information = -network_n * hessian
    try:
        covariance = np.linalg.inv(information)
    except np.linalg.LinAlgError:
        raise RecalibrationError("ODAL2: the surrogate's information is singular") from None
    if not np.all(np.isfinite(covariance)) or np.any(np.diag(covariance) <= 0):
        raise RecalibrationError("ODAL2: the surrogate's information is not positive definite")
    names = ["a"] if method == "intercept" else ["a", "b"]
    return Update("logistic", method, names, theta, covariance, network_n * value, int(iterations))
