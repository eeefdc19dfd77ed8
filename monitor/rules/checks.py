"""Cross-field checks of a rules file: what one key allows depends on another (a threshold on its metric
and compare, a ladder on its direction, metric-specific keys), each problem at its path."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

from monitor.rules.access import access_problems
from monitor.rules.durations import format_duration, parse_duration
from monitor.rules.fairness import fairness_problems
from monitor.rules.kinds import (
    BASELINE_COMPARES,
    BASELINE_REASONS,
    CATEGORY_METRICS,
    COMPARE_BASELINES,
    DOWN_COMPARES,
    KEY_METRICS,
    METRIC_BASELINES,
    METRIC_COMPARES,
    METRIC_KEYS,
    MIN_COUNT_THRESHOLD,
    NO_LADDER_COMPARES,
    NO_ROLLBACK_METRICS,
    RATE_METRICS,
    REQUIRED_KEY_METRICS,
    SECURITY_METRICS,
    VOLUME_METRICS,
    kind,
)
from monitor.rules.schema import (
    FORMAT_VERSION,
    MAX_WINDOW_S,
    MIN_FALSE_ALARM_EVERY_S,
    MIN_WINDOW_S,
    RULE_ID_PATTERN,
    SEVERITY_RANK,
    FileSpec,
    Loc,
    RuleSpec,
)


def _got(value: object) -> str:
    return f"(got {str(value).lower()})" if isinstance(value, bool) else f"(got {value!r})"


def _threshold_problem(metric: str, compare: str, value: object) -> str | None:
    """Why `value` is no threshold for this numeric compare, or None (the ranges of the contract)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number {_got(value)}"
    if not math.isfinite(value):
        return f"must be a finite number {_got(value)}"
    unit = kind(metric).unit
    if compare == "above" and unit == "count":
        return _count_problem(metric, value)
    low, high, high_open = 0.0, 1.0, True  # a fraction: above on rates, relative_drop, widening, shift
    if compare == "ratio_above":
        low, high = 1.0, math.inf
    elif compare == "below":
        # Accuracy below 1.0 means "any error at all": odd, but meaningful. A disparate impact ratio
        # below 1.0 means any difference at all, which sampling noise always shows.
        high_open = unit == "ratio"
    elif compare == "above" and unit == "seconds":
        high = math.inf  # seconds
    what = f"for compare {compare!r}" + (f" on metric {metric!r}" if compare in ("above", "below") else "")
    if value <= low:
        return f"must be greater than {low:g} {what} {_got(value)}"
    if value > high or (high_open and value == high):
        return f"must be {'less than' if high_open else 'at most'} {high:g} {what} {_got(value)}"
    return None


def _count_problem(metric: str, value: float) -> str | None:
    """Why `value` is no "above" threshold for a count of security events, or None."""
    what = f"for compare 'above' on metric {metric!r} (a count)"
    least = MIN_COUNT_THRESHOLD[metric]
    if not float(value).is_integer():
        return f"must be a whole number {what} {_got(value)}"
    if value < least:
        return f"must be at least {least} {what} {_got(value)}"
    return None


def _threshold_problems(rule: RuleSpec) -> Iterator[tuple[Loc, str]]:
    """Problems of `threshold`, and of `baseline`, which each compare either needs or refuses."""
    baselines = COMPARE_BASELINES.get(rule.compare, ())
    reason, on = BASELINE_REASONS.get(rule.compare), ""
    if baselines and rule.metric in METRIC_BASELINES:
        (baselines, reason), on = METRIC_BASELINES[rule.metric], f" on metric {rule.metric!r}"
    if baselines and rule.baseline is None:
        yield ("baseline",), f"required for compare {rule.compare!r} ({' or '.join(baselines)})"
    elif not baselines and rule.baseline is not None:
        only = f"only {', '.join(sorted(BASELINE_COMPARES))} compare against a baseline"
        yield ("baseline",), f"not allowed for compare {rule.compare!r} ({only})"
    elif rule.baseline is not None and rule.baseline not in baselines:
        why = f" ({reason})" if reason else ""
        yield (
            ("baseline",),
            (f"must be {' or '.join(baselines)} for compare {rule.compare!r}{on}{why} {_got(rule.baseline)}"),
        )
    if rule.compare == "below_published_minimum":
        if rule.threshold is not None:
            yield (
                ("threshold",),
                (
                    "not allowed for compare 'below_published_minimum'"
                    " (the threshold is models.<model>.published_min_accuracy)"
                ),
            )
    elif rule.threshold is None:
        yield ("threshold",), f"required for compare {rule.compare!r}"
    elif rule.compare == "silence":
        try:
            seconds = parse_duration(rule.threshold)
        except ValueError as exc:
            yield ("threshold",), str(exc)
            return
        if not MIN_WINDOW_S <= seconds < rule.window:
            yield (
                ("threshold",),
                (
                    f"must be at least 1m and shorter than the window {format_duration(rule.window)}"
                    f" (got {format_duration(seconds)})"
                ),
            )
    else:
        problem = _threshold_problem(rule.metric, rule.compare, rule.threshold)
        if problem:
            yield ("threshold",), problem


def _ladder_problems(rule: RuleSpec, base_ok: bool) -> Iterator[tuple[Loc, str]]:
    if rule.ladder and rule.compare in NO_LADDER_COMPARES:
        yield ("ladder",), f"a ladder is not allowed with compare {rule.compare!r}"
        return
    down = rule.compare in DOWN_COMPARES
    previous = float(rule.threshold) if base_ok else None
    severity, level, what = rule.severity, rule.level, "the rule's"
    for index, step in enumerate(rule.ladder):
        problem = _threshold_problem(rule.metric, rule.compare, step.threshold)
        if problem:
            yield ("ladder", index, "threshold"), problem
        elif previous is not None and (step.threshold >= previous if down else step.threshold <= previous):
            yield (
                ("ladder", index, "threshold"),
                (
                    f"must be {'smaller' if down else 'larger'} than {what} threshold {previous:g}"
                    f" (steps go weakest to strongest) {_got(step.threshold)}"
                ),
            )
        if SEVERITY_RANK[step.severity] < SEVERITY_RANK[severity]:
            yield (
                ("ladder", index, "severity"),
                (f"must not be weaker than {what} severity {severity} {_got(step.severity)}"),
            )
        if step.level < level:
            yield (
                ("ladder", index, "level"),
                (f"must not be lower than {what} level {level} {_got(step.level)}"),
            )
        previous, severity, level, what = step.threshold, step.severity, step.level, "the previous step's"


def _metric_key_problems(rule: RuleSpec) -> Iterator[tuple[Loc, str]]:
    """Keys that belong to some metrics only, a detector's test, and the metrics of categories bias and
    security."""
    category = _category_problem(rule)
    if category:
        yield ("category",), category
    for key in METRIC_KEYS:
        metrics, value = KEY_METRICS[key], getattr(rule, key)
        if rule.metric not in metrics and value is not None:
            if category and metrics <= CATEGORY_METRICS.get(rule.category, frozenset()):
                continue  # a key of the rule's category: the metric is the slip, and the category says so
            names = (
                "the security metrics"
                if metrics == SECURITY_METRICS
                else f"the rate metrics ({', '.join(sorted(metrics))})"
                if metrics == RATE_METRICS
                else f"metric {', '.join(sorted(metrics))}"
            )
            yield (key,), f"only allowed for {names} (this rule's metric is {rule.metric!r})"
        elif rule.metric in REQUIRED_KEY_METRICS[key] and value is None:
            yield (key,), f"required for metric {rule.metric!r}"
    if rule.min_volume is not None and rule.metric in VOLUME_METRICS and rule.compare != "ratio_above":
        yield (
            ("min_volume",),
            (
                "only meaningful with compare 'ratio_above' "
                f"(compare {rule.compare!r} is already an absolute amount)"
            ),
        )
    if rule.follow is not None and rule.metric == "new_source_privileged":
        if not MIN_WINDOW_S <= rule.follow <= MAX_WINDOW_S:
            yield ("follow",), f"must be between 1m and 7d (got {format_duration(rule.follow)})"
    if rule.rollback and not kind(rule.metric).rolls_back:
        rolls_back = ", ".join(sorted(SECURITY_METRICS - NO_ROLLBACK_METRICS))
        yield (
            ("rollback",),
            (
                f"not allowed for metric {rule.metric!r}: of the security metrics only {rolls_back} "
                "rolls back (an access incident is no fault of the model version; use revoke)"
            ),
        )
    budget = rule.false_alarm_every
    if budget is not None and rule.metric in RATE_METRICS and budget < MIN_FALSE_ALARM_EVERY_S:
        yield ("false_alarm_every",), f"must be at least 1h (got {format_duration(budget)})"
    if rule.test in ("sequential", "binomial") and rule.metric not in RATE_METRICS:
        yield ("test",), f"test: {rule.test} needs a rate metric, not {rule.metric!r}; use test: none"


def _category_problem(rule: RuleSpec) -> str | None:
    """Why the rule's category and metric disagree (bias and security take their own metrics only),
    or None."""
    for category, metrics in CATEGORY_METRICS.items():
        if rule.metric in metrics and rule.category != category:
            return f"must be {category} for metric {rule.metric!r} {_got(rule.category)}"
    own = CATEGORY_METRICS.get(rule.category)
    if own is not None and rule.metric not in own:
        names = ", ".join(sorted(own))
        return (
            f"category {rule.category!r} is only for metrics {names} (this rule's metric is {rule.metric!r})"
        )
    return None


def rule_problems(rule: RuleSpec) -> Iterator[tuple[Loc, str]]:
    """Every cross-field problem of one rule (paths relative to the rule); nothing when it is valid."""
    if not re.fullmatch(RULE_ID_PATTERN, rule.id):
        yield (
            ("id",),
            (
                "must be lowercase letters, digits and '-', first a letter or digit, "
                f"at most 64 {_got(rule.id)}"
            ),
        )
    allowed = METRIC_COMPARES[rule.metric]
    if rule.compare not in allowed:
        yield (
            ("compare",),
            (
                f"compare {rule.compare!r} is not allowed for metric {rule.metric!r}"
                f" (allowed: {', '.join(sorted(allowed))})"
            ),
        )
        return  # every later check assumes a meaningful metric/compare pair
    if not MIN_WINDOW_S <= rule.window <= MAX_WINDOW_S:
        yield ("window",), f"must be between 1m and 7d (got {format_duration(rule.window)})"
    if rule.hold is not None and rule.hold > MAX_WINDOW_S:
        yield ("hold",), f"must be at most 7d (got {format_duration(rule.hold)})"
    threshold = list(_threshold_problems(rule))
    yield from threshold
    base_ok = rule.threshold is not None and all(loc != ("threshold",) for loc, _ in threshold)
    yield from _ladder_problems(rule, base_ok and rule.compare not in NO_LADDER_COMPARES)
    yield from _metric_key_problems(rule)
    if rule.auto_recover and rule.severity == "CRITICAL":
        yield ("auto_recover",), "must be false for severity CRITICAL (a person closes a CRITICAL incident)"
    if rule.auto_recover and rule.category == "security":
        yield ("auto_recover",), "must be false for category security (a person closes a security incident)"
    for index, other in enumerate(rule.inhibited_by):
        if other == rule.id:
            yield ("inhibited_by", index), "a rule cannot inhibit itself"
        elif other in rule.inhibited_by[:index]:
            yield ("inhibited_by", index), f"{other!r} is listed twice"


# What a deprecated key is told: what replaced it, and to remove it.
DEPRECATED_BINOMIAL = (
    "deprecated: rate rules are now decided by a sequential detector with a false-alarm budget"
    " (docs/rules.md#detectors); remove `test: binomial`"
)
DEPRECATED_FDR = (
    "deprecated: the false-alarm budget (`false_alarm_every`) now accounts for every model, version"
    " and group the rule watches (docs/rules.md#detectors); remove `fdr`"
)


def rule_warnings(rule: RuleSpec) -> Iterator[tuple[Loc, str]]:
    """What in one rule still loads but is deprecated (paths relative to the rule)."""
    if rule.test == "binomial":
        yield ("test",), DEPRECATED_BINOMIAL
    if rule.fdr is not None:
        yield ("fdr",), DEPRECATED_FDR


def file_problems(spec: FileSpec) -> Iterator[tuple[Loc, str]]:
    """Problems of a file's version, defaults and models (paths from the top of the file)."""
    if spec.version != FORMAT_VERSION:
        yield ("version",), f"unsupported version {spec.version}; this monitor reads version {FORMAT_VERSION}"
    hold = spec.defaults.hold if spec.defaults else None
    if hold is not None and hold > MAX_WINDOW_S:
        yield ("defaults", "hold"), f"must be at most 7d (got {format_duration(hold)})"
    budget = spec.defaults.false_alarm_every if spec.defaults else None
    if budget is not None and budget < MIN_FALSE_ALARM_EVERY_S:
        yield ("defaults", "false_alarm_every"), f"must be at least 1h (got {format_duration(budget)})"
    for model_id in spec.models or {}:
        if not model_id.strip():
            yield ("models", model_id), "a model id must not be empty"
    if spec.fairness is not None:
        for loc, message in fairness_problems(spec.fairness):
            yield ("fairness", *loc), message
    if spec.access_policy is not None:
        for loc, message in access_problems(spec.access_policy):
            yield ("access_policy", *loc), message
