"""The rules contract (docs/rules.md): resolved models, the file format, and its cross-field checks.

`Rule`, `Step`, `ModelFacts` and `RuleSet` are what the evaluator reads: every value resolved
(defaults applied, durations in seconds). The `*Spec` models are a file as written, and
`rule_problems` / `file_problems` are every cross-field check of the format; they return paths relative
to the checked node so the loader can put a file and line on each. The resolved models repeat the
simple ranges so a Rule built by hand in a test cannot hold an impossible value either. The models
and checks of the `fairness:` section live in monitor.rules.fairness, those of the `access_policy:`
section in monitor.rules.access (both re-exported here); what each metric and compare allows (the
names, pairs, baselines, keys and threshold units the checks apply) in monitor.rules.kinds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    model_validator,
)

# Re-exported (`X as X`): the evaluator reads every resolved model from this module.
from monitor.aggregates.access import IngestRules
from monitor.rules.access import AccessPolicy as AccessPolicy
from monitor.rules.access import AccessPolicySpec, access_problems
from monitor.rules.access import Grant as Grant
from monitor.rules.access import NormalHours as NormalHours
from monitor.rules.durations import format_duration as format_duration
from monitor.rules.durations import parse_duration as parse_duration
from monitor.rules.fairness import AttributeSelection as AttributeSelection
from monitor.rules.fairness import Fairness as Fairness
from monitor.rules.fairness import FairnessSpec, fairness_problems
from monitor.rules.fairness import ProtectedAttribute as ProtectedAttribute
from monitor.rules.fairness import ProxyAttribute as ProxyAttribute
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
from monitor.rules.kinds import Baseline as Baseline
from monitor.rules.kinds import Compare as Compare
from monitor.rules.kinds import Metric as Metric

Category = Literal["performance", "availability", "output_quality", "bias", "security"]
Severity = Literal["MEDIUM", "HIGH", "CRITICAL"]
Test = Literal["binomial", "none"]
Direction = Literal["up", "down"]
Loc = tuple[str | int, ...]

SEVERITY_RANK: dict[str, int] = {"MEDIUM": 1, "HIGH": 2, "CRITICAL": 3}

FORMAT_VERSION = 1
RULE_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}$"
MIN_WINDOW_S = 60
MAX_WINDOW_S = 7 * 86400
DEFAULT_FOLLOW_S = 3600


class Step(BaseModel):
    """One rung of a rule's severity ladder: crossing `threshold` asks for `severity` and `level`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: float
    severity: Severity
    level: int = Field(ge=0, le=4)


class Rule(BaseModel):
    """One resolved detection rule; monitor/rules/default.yaml and docs/rules.md explain each field."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=RULE_ID_PATTERN)
    category: Category
    description: str = ""
    metric: Metric
    window_s: int = Field(ge=MIN_WINDOW_S, le=MAX_WINDOW_S)
    compare: Compare
    baseline: Baseline | None = None
    # Seconds for compare "silence"; None only for "below_published_minimum" (the threshold is per model).
    threshold: float | None = None
    min_samples: int = Field(ge=1)
    min_label_coverage: float | None = Field(default=None, ge=0.0, le=1.0)
    test: Test
    confidence: float = Field(gt=0.5, lt=1.0)
    severity: Severity
    level: int = Field(ge=0, le=4)
    ladder: tuple[Step, ...] = ()
    rollback: bool = False
    auto_recover: bool
    hold_s: int = Field(ge=0, le=MAX_WINDOW_S)
    inhibited_by: tuple[str, ...] = ()
    flag: str | None = None
    quantile: float | None = Field(default=None, gt=0.0, lt=1.0)
    attribute: str | None = None
    fdr: bool = False  # Benjamini–Hochberg across every test of the tick, not per test
    attributes: AttributeSelection = "all"  # which of RuleSet.fairness the rule tests (bias metrics)
    revoke: bool = False  # security: name the principal or API key in the control message's revoke_principals
    min_volume: int = Field(default=0, ge=0)  # volume metrics: below this amount a ratio never fires
    # new_source_privileged: how long after a login from a new source its privileged actions count.
    follow_s: int = Field(default=DEFAULT_FOLLOW_S, ge=MIN_WINDOW_S, le=MAX_WINDOW_S)

    def steps(self, published_minimum: float | None = None) -> tuple[Step, ...]:
        """The base step (this rule's threshold, severity, level) then the ladder, weakest to strongest.

        For compare "below_published_minimum" the base threshold is the model's published minimum,
        which the caller passes (RuleSet.models[model_id].published_min_accuracy).
        """
        threshold = self.threshold
        if self.compare == "below_published_minimum":
            threshold = published_minimum
        if threshold is None:
            raise ValueError(f"rule {self.id!r}: no threshold (pass the model's published minimum)")
        return (Step(threshold=threshold, severity=self.severity, level=self.level), *self.ladder)

    @property
    def direction(self) -> Direction:
        """"down" when a smaller value is worse (below, below_published_minimum), else "up" (shift too)."""
        return "down" if self.compare in DOWN_COMPARES else "up"


class ModelFacts(BaseModel):
    """Per-model facts the rules refer to (only the published minimum accuracy so far)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    published_min_accuracy: float | None = Field(default=None, gt=0.0, le=1.0)


class RuleSet(BaseModel):
    """Every rule of a load, the per-model facts, fairness, access policy, and where they came from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rules: tuple[Rule, ...]
    models: dict[str, ModelFacts] = Field(default_factory=dict)
    fairness: Fairness = Field(default_factory=Fairness)
    access_policy: AccessPolicy = Field(default_factory=AccessPolicy)
    sources: tuple[str, ...] = ()
    sha256: str = ""  # over the raw bytes of `sources`, in load order

    _by_id: dict[str, Rule] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _ids_resolve(self) -> RuleSet:
        """Rule ids are unique and every inhibited_by names another rule of the set."""
        by_id: dict[str, Rule] = {}
        for rule in self.rules:
            if rule.id in by_id:
                raise ValueError(f"duplicate rule id {rule.id!r}")
            by_id[rule.id] = rule
        for rule in self.rules:
            for other in rule.inhibited_by:
                if other not in by_id or other == rule.id:
                    raise ValueError(f"rule {rule.id!r}: inhibited_by {other!r} is not another rule")
        self._by_id = by_id
        return self

    def by_id(self, rule_id: str) -> Rule:
        """The rule with this id; raises KeyError when there is none."""
        return self._by_id[rule_id]

    def ingest_rules(self) -> IngestRules:
        """What ingest needs of these rules: the access policy, the longest follow-up of a
        new-source login, and the longest unserved-users window (defaults where no rule has one)."""
        follows = [r.follow_s for r in self.rules if r.metric == "new_source_privileged"]
        windows = [r.window_s for r in self.rules if r.metric == "unserved_users"]
        defaults = IngestRules(self.access_policy)
        return IngestRules(
            self.access_policy,
            follow_s=max(follows, default=defaults.follow_s),
            unserved_window_s=max(windows, default=defaults.unserved_window_s),
        )


# --- durations ------------------------------------------------------------------------------------

def _duration_field(value: Any) -> int | None:
    return None if value is None else parse_duration(value)


# Parsing in a before-validator keeps an error's location on the key itself (no union branch names).
Duration = Annotated[int | None, BeforeValidator(_duration_field)]


# --- the file format, as written ------------------------------------------------------------------

# Strict: a quoted "0.05" or `level: 2.0` is a slip in a hand-edited file, not a number to coerce.
_STRICT = ConfigDict(strict=True, extra="forbid")
Level = Annotated[int, Field(ge=0, le=4)]
Confidence = Annotated[float, Field(gt=0.5, lt=1.0)]
MinSamples = Annotated[int, Field(ge=1)]


class StepSpec(BaseModel):
    """One ladder step as written."""

    model_config = _STRICT

    threshold: float
    severity: Severity
    level: Level


class RuleSpec(BaseModel):
    """One rule as written in a file: unresolved, optional keys still None."""

    model_config = _STRICT

    id: str
    category: Category
    description: str = ""
    metric: Metric
    window: Annotated[int, BeforeValidator(parse_duration)]
    compare: Compare
    baseline: Baseline | None = None
    threshold: Any = None  # a number, or a duration for compare "silence": see _threshold_problems
    min_samples: MinSamples | None = None
    min_label_coverage: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    test: Test | None = None
    confidence: Confidence | None = None
    severity: Severity
    level: Level
    ladder: list[StepSpec] = []
    rollback: bool = False
    auto_recover: bool | None = None
    hold: Duration = None
    inhibited_by: list[str] = []
    flag: Annotated[str, Field(min_length=1)] | None = None
    quantile: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    attribute: Annotated[str, Field(min_length=1)] | None = None
    fdr: bool | None = None
    attributes: AttributeSelection | None = None
    revoke: bool | None = None
    min_volume: Annotated[int, Field(ge=0)] | None = None
    follow: Duration = None


class DefaultsSpec(BaseModel):
    """The `defaults:` section as written."""

    model_config = _STRICT

    confidence: Confidence | None = None
    hold: Duration = None
    min_samples: MinSamples | None = None


class ModelSpec(BaseModel):
    """One entry of `models:` as written."""

    model_config = _STRICT

    published_min_accuracy: Annotated[float, Field(gt=0.0, le=1.0)] | None = None


class FileSpec(BaseModel):
    """A whole file as written; `rules` items are validated one by one so one bad rule hides no other."""

    model_config = _STRICT

    version: int
    defaults: DefaultsSpec | None = None
    models: dict[str, ModelSpec] | None = None
    fairness: FairnessSpec | None = None
    access_policy: AccessPolicySpec | None = None
    rules: list[Any] = []


# --- cross-field checks ---------------------------------------------------------------------------


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
        yield ("baseline",), (
            f"must be {' or '.join(baselines)} for compare {rule.compare!r}{on}{why} {_got(rule.baseline)}"
        )
    if rule.compare == "below_published_minimum":
        if rule.threshold is not None:
            yield ("threshold",), (
                "not allowed for compare 'below_published_minimum'"
                " (the threshold is models.<model>.published_min_accuracy)"
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
            yield ("threshold",), (
                f"must be at least 1m and shorter than the window {format_duration(rule.window)}"
                f" (got {format_duration(seconds)})"
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
            yield ("ladder", index, "threshold"), (
                f"must be {'smaller' if down else 'larger'} than {what} threshold {previous:g}"
                f" (steps go weakest to strongest) {_got(step.threshold)}"
            )
        if SEVERITY_RANK[step.severity] < SEVERITY_RANK[severity]:
            yield ("ladder", index, "severity"), (
                f"must not be weaker than {what} severity {severity} {_got(step.severity)}"
            )
        if step.level < level:
            yield ("ladder", index, "level"), (
                f"must not be lower than {what} level {level} {_got(step.level)}"
            )
        previous, severity, level, what = step.threshold, step.severity, step.level, "the previous step's"


def _metric_key_problems(rule: RuleSpec) -> Iterator[tuple[Loc, str]]:
    """Keys that belong to some metrics only, a binomial test, and the metrics of categories bias and security."""
    category = _category_problem(rule)
    if category:
        yield ("category",), category
    for key in METRIC_KEYS:
        metrics, value = KEY_METRICS[key], getattr(rule, key)
        if rule.metric not in metrics and value is not None:
            if category and metrics <= CATEGORY_METRICS.get(rule.category, frozenset()):
                continue  # a key of the rule's category: the metric is the slip, and the category says so
            names = "the security metrics" if metrics == SECURITY_METRICS else f"metric {', '.join(sorted(metrics))}"
            yield (key,), f"only allowed for {names} (this rule's metric is {rule.metric!r})"
        elif rule.metric in REQUIRED_KEY_METRICS[key] and value is None:
            yield (key,), f"required for metric {rule.metric!r}"
    if rule.min_volume is not None and rule.metric in VOLUME_METRICS and rule.compare != "ratio_above":
        yield ("min_volume",), (
            f"only meaningful with compare 'ratio_above' (compare {rule.compare!r} is already an absolute amount)"
        )
    if rule.follow is not None and rule.metric == "new_source_privileged":
        if not MIN_WINDOW_S <= rule.follow <= MAX_WINDOW_S:
            yield ("follow",), f"must be between 1m and 7d (got {format_duration(rule.follow)})"
    if rule.rollback and not kind(rule.metric).rolls_back:
        rolls_back = ", ".join(sorted(SECURITY_METRICS - NO_ROLLBACK_METRICS))
        yield ("rollback",), (
            f"not allowed for metric {rule.metric!r}: of the security metrics only {rolls_back} rolls back"
            " (an access incident is no fault of the model version; use revoke)"
        )
    if rule.test == "binomial" and rule.metric not in RATE_METRICS:
        yield ("test",), f"a binomial test needs a rate metric, not {rule.metric!r}; use test: none"


def _category_problem(rule: RuleSpec) -> str | None:
    """Why the rule's category and metric disagree (bias and security take their own metrics only), or None."""
    for category, metrics in CATEGORY_METRICS.items():
        if rule.metric in metrics and rule.category != category:
            return f"must be {category} for metric {rule.metric!r} {_got(rule.category)}"
    own = CATEGORY_METRICS.get(rule.category)
    if own is not None and rule.metric not in own:
        names = ", ".join(sorted(own))
        return f"category {rule.category!r} is only for metrics {names} (this rule's metric is {rule.metric!r})"
    return None


def rule_problems(rule: RuleSpec) -> Iterator[tuple[Loc, str]]:
    """Every cross-field problem of one rule (paths relative to the rule); nothing when it is valid."""
    if not re.fullmatch(RULE_ID_PATTERN, rule.id):
        yield ("id",), (
            f"must be lowercase letters, digits and '-', first a letter or digit, at most 64 {_got(rule.id)}"
        )
    allowed = METRIC_COMPARES[rule.metric]
    if rule.compare not in allowed:
        yield ("compare",), (
            f"compare {rule.compare!r} is not allowed for metric {rule.metric!r}"
            f" (allowed: {', '.join(sorted(allowed))})"
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


def file_problems(spec: FileSpec) -> Iterator[tuple[Loc, str]]:
    """Problems of a file's version, defaults and models (paths from the top of the file)."""
    if spec.version != FORMAT_VERSION:
        yield ("version",), f"unsupported version {spec.version}; this monitor reads version {FORMAT_VERSION}"
    hold = spec.defaults.hold if spec.defaults else None
    if hold is not None and hold > MAX_WINDOW_S:
        yield ("defaults", "hold"), f"must be at most 7d (got {format_duration(hold)})"
    for model_id in spec.models or {}:
        if not model_id.strip():
            yield ("models", model_id), "a model id must not be empty"
    if spec.fairness is not None:
        for loc, message in fairness_problems(spec.fairness):
            yield ("fairness", *loc), message
    if spec.access_policy is not None:
        for loc, message in access_problems(spec.access_policy):
            yield ("access_policy", *loc), message
