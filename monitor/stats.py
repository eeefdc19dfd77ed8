"""Statistical tests behind every rate rule (pure; scipy.stats does the distributions).

A rule fires on a rate only when the data say, at the rule's confidence, that the true rate is past
the threshold: a point estimate over a handful of events never fires. All tests are one-sided.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True, slots=True)
class TestResult:
    """What a test saw and concluded; goes into the incident's observation verbatim."""

    method: str
    estimate: float
    p_value: float
    significant: bool
    interval: tuple[float, float]  # the confidence interval at the test's confidence
    samples: int

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form for incidents and evidence."""
        return {
            "method": self.method,
            "estimate": self.estimate,
            "p_value": self.p_value,
            "significant": self.significant,
            "interval": list(self.interval),
            "samples": self.samples,
        }


def rate_above(successes: int, trials: int, threshold: float, confidence: float) -> TestResult:
    """Exact binomial test of H1: true rate > threshold."""
    return _binomial(successes, trials, threshold, confidence, "greater")


def rate_below(successes: int, trials: int, threshold: float, confidence: float) -> TestResult:
    """Exact binomial test of H1: true rate < threshold."""
    return _binomial(successes, trials, threshold, confidence, "less")


def _binomial(
    successes: int, trials: int, threshold: float, confidence: float, alternative: str
) -> TestResult:
    if trials <= 0:
        raise ValueError("a rate test needs at least one trial")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes {successes} outside 0..{trials}")
    threshold = min(max(threshold, 0.0), 1.0)
    # What stats.binomtest(...).proportion_ci(method="exact") returns, from the binomial and beta
    # distributions directly: its interval is found by a root search, ~150 times slower than the
    # beta quantile it converges to (tests/unit/test_stats_and_control.py checks they agree).
    k, n = successes, trials
    if alternative == "greater":
        p_value = float(stats.binom.sf(k - 1, n, threshold))
        low = float(stats.beta.ppf(1.0 - confidence, k, n - k + 1)) if k > 0 else 0.0
        interval = (low, 1.0)
    else:
        p_value = float(stats.binom.cdf(k, n, threshold))
        high = float(stats.beta.ppf(confidence, k + 1, n - k)) if k < n else 1.0
        interval = (0.0, high)
    p_value = min(1.0, p_value)
    return TestResult(
        method=f"binomial exact one-sided ({alternative})",
        estimate=k / n,
        p_value=p_value,
        significant=p_value < 1.0 - confidence,
        interval=interval,
        samples=n,
    )


def difference_above(
    k1: int, n1: int, k2: int, n2: int, margin: float, confidence: float, comparisons: int = 1
) -> TestResult:
    """One-sided z-test of H1: p1 − p2 > margin (unpooled variance), Bonferroni over `comparisons`."""
    if n1 <= 0 or n2 <= 0:
        raise ValueError("a difference test needs samples on both sides")
    p1, p2 = k1 / n1, k2 / n2
    diff = p1 - p2
    # Continuity-free Wald variance, floored so that 0/n or n/n groups do not claim certainty.
    floor1, floor2 = 0.5 / n1, 0.5 / n2
    var = _clip(p1, floor1) * (1 - _clip(p1, floor1)) / n1 + _clip(p2, floor2) * (1 - _clip(p2, floor2)) / n2
    se = math.sqrt(var)
    z = (diff - margin) / se
    p_value = min(1.0, float(stats.norm.sf(z)) * comparisons)
    alpha = 1.0 - confidence
    half = float(stats.norm.ppf(1 - alpha / (2 * comparisons))) * se
    return TestResult(
        method="two-proportion z one-sided" + (f", Bonferroni ×{comparisons}" if comparisons > 1 else ""),
        estimate=diff,
        p_value=p_value,
        significant=p_value < alpha,
        interval=(diff - half, diff + half),
        samples=n1 + n2,
    )


def _clip(p: float, floor: float) -> float:
    return min(max(p, floor), 1 - floor)


def ratio_below(k1: int, n1: int, k2: int, n2: int, ratio: float, confidence: float) -> TestResult:
    """One-sided test of H1: p1 / p2 < ratio (the 80 % rule), as H1: p1 − ratio·p2 < 0.

    The decision uses a Wald z-test on the linear contrast (defined even when p1 is 0); the reported
    interval is Katz's log-ratio interval, with a half-count correction for empty cells.
    """
    if n1 <= 0 or n2 <= 0:
        raise ValueError("a ratio test needs samples on both sides")
    p1, p2 = k1 / n1, k2 / n2
    q1, q2 = _clip(p1, 0.5 / n1), _clip(p2, 0.5 / n2)
    se = math.sqrt(q1 * (1 - q1) / n1 + ratio**2 * q2 * (1 - q2) / n2)
    z = (p1 - ratio * p2) / se
    p_value = float(stats.norm.cdf(z))
    a1, a2 = k1 + 0.5, k2 + 0.5  # Katz with a half-count correction for zero cells
    log_ratio = math.log((a1 / (n1 + 0.5)) / (a2 / (n2 + 0.5)))
    log_se = math.sqrt(1 / a1 - 1 / (n1 + 0.5) + 1 / a2 - 1 / (n2 + 0.5))
    zc = float(stats.norm.ppf(1 - (1 - confidence) / 2))
    return TestResult(
        method="ratio of proportions, one-sided z on p1 − r·p2; Katz log interval",
        estimate=p1 / p2 if p2 > 0 else math.inf,
        p_value=p_value,
        significant=p_value < 1.0 - confidence,
        interval=(math.exp(log_ratio - zc * log_se), math.exp(log_ratio + zc * log_se)),
        samples=n1 + n2,
    )


def shift_beyond(
    now_g: tuple[int, int],
    ref_g: tuple[int, int],
    now_o: tuple[int, int],
    ref_o: tuple[int, int],
    margin: float,
    confidence: float,
) -> TestResult:
    """Test of H1: |(p_now_g − p_ref_g) − (p_now_o − p_ref_o)| > margin (a group moved, the others not).

    Each argument is (successes, trials). One-sided on the magnitude of the difference in differences.
    """
    parts = (now_g, ref_g, now_o, ref_o)
    if any(n <= 0 for _, n in parts):
        raise ValueError("a shift test needs samples in all four cells")
    rates = [k / n for k, n in parts]
    d = (rates[0] - rates[1]) - (rates[2] - rates[3])
    var = sum(_clip(p, 0.5 / n) * (1 - _clip(p, 0.5 / n)) / n for p, (_, n) in zip(rates, parts, strict=True))
    se = math.sqrt(var)
    p_value = float(stats.norm.sf((abs(d) - margin) / se))
    half = float(stats.norm.ppf(1 - (1 - confidence) / 2)) * se
    return TestResult(
        method="difference in differences of proportions, z on |d| − margin",
        estimate=d,
        p_value=p_value,
        significant=p_value < 1.0 - confidence,
        interval=(d - half, d + half),
        samples=sum(n for _, n in parts),
    )


def benjamini_hochberg(p_values: list[float]) -> list[float]:
    """Benjamini–Hochberg adjusted p-values (false-discovery rate), in the input order."""
    if not p_values:
        return []
    return [float(p) for p in stats.false_discovery_control(p_values, method="bh")]
