"""Bounds on rates (pure, scipy): anytime-valid intervals for what an incident reports, and exact
one-sided bounds for the baselines a detector's boundary is built from.

- `confidence_sequence`: the beta-binomial mixture confidence sequence (Robbins 1970; Howard,
  Ramdas, McAuliffe & Sekhon 2021, "Time-uniform, nonparametric, nonasymptotic confidence
  sequences", the conjugate-mixture boundary). The mixture of Bernoulli likelihood ratios over a
  Beta(½, ½) prior is a non-negative martingale for every fixed p, so the set of p where it stays
  below 1/α covers the true rate at every sample size at once with probability ≥ 1 − α: the
  interval stays valid however long it is watched, which a fixed-sample interval is not.
- `lower_bounds` / `upper_bounds`: Clopper–Pearson one-sided bounds (the beta quantiles, by the
  inverse regularised incomplete beta function that beta.ppf calls, without its ~40 µs of argument
  handling per call: a refresh computes thousands), for a baseline at the moment it is read. The
  caller spends a per-refresh share of the false-alarm budget on them (a union bound over the
  refreshes).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy import optimize, special

Array = npt.NDArray[np.float64]
_PRIOR = 0.5  # Beta(½, ½), Jeffreys: no preference for rates near 0 or near 1


def _log_mixture(p: float, k: float, n: float) -> float:
    """log of the mixture martingale at rate p after k successes in n trials."""
    mixed = special.betaln(_PRIOR + k, _PRIOR + n - k) - special.betaln(_PRIOR, _PRIOR)
    return float(mixed - special.xlogy(k, p) - special.xlog1py(n - k, -p))


def confidence_sequence(k: float, n: float, alpha: float) -> tuple[float, float]:
    """The rates p not rejected by the beta-binomial mixture at level alpha after k of n: an
    interval that holds, with probability ≥ 1 − alpha, at every n at once."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= k <= n:
        raise ValueError(f"successes {k} outside 0..{n}")
    limit = math.log(1.0 / alpha)
    centre = k / n

    def excess(p: float) -> float:
        return _log_mixture(p, k, n) - limit

    # The log-mixture is convex in p with its minimum at k/n, where it is ≤ 0 < limit.
    low = 0.0 if excess(1e-15) <= 0 else optimize.brentq(excess, 1e-15, max(centre, 1e-15), xtol=1e-12)
    high_edge = 1.0 - 1e-15
    high = (
        1.0
        if excess(high_edge) <= 0
        else optimize.brentq(excess, min(centre, high_edge), high_edge, xtol=1e-12)
    )
    return (float(low), float(high))


def lower_bounds(k: Array, n: Array, delta: float) -> Array:
    """One-sided Clopper–Pearson lower bounds at level delta (0 where k is 0, NaN where n is 0)."""
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        bound = special.betaincinv(k, n - k + 1.0, delta)  # beta.ppf(delta, k, n - k + 1), without its checks
    result: Array = np.where(n <= 0, np.nan, np.where(k <= 0, 0.0, bound))
    return result


def upper_bounds(k: Array, n: Array, delta: float) -> Array:
    """One-sided Clopper–Pearson upper bounds at level delta (1 where k is n, NaN where n is 0)."""
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        bound = special.betaincinv(k + 1.0, n - k, 1.0 - delta)  # beta.ppf(1 - delta, k + 1, n - k)
    result: Array = np.where(n <= 0, np.nan, np.where(k >= n, 1.0, bound))
    return result
