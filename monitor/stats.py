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
    result = stats.binomtest(successes, trials, threshold, alternative=alternative)
    ci = result.proportion_ci(confidence_level=confidence, method="exact")
    p_value = float(result.pvalue)
    return TestResult(
        method=f"binomial exact one-sided ({alternative})",
        estimate=successes / trials,
        p_value=p_value,
        significant=p_value < 1.0 - confidence,
        interval=(float(ci.low), float(ci.high)),
        samples=trials,
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
