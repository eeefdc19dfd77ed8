"""The rules contract (docs/rules.md): resolved models and the file format as written.

`Rule`, `Step`, `ModelFacts` and `RuleSet` are what the evaluator reads: every value resolved
(defaults applied, durations in seconds). The `*Spec` models are a file as written; its cross-field
checks are in monitor.rules.checks. The resolved models repeat the
simple ranges so a Rule built by hand in a test cannot hold an impossible value either. The models
and checks of the `fairness:` section live in monitor.rules.fairness, those of the `access_policy:`
section in monitor.rules.access (both re-exported here); what each metric and compare allows (the
names, pairs, baselines, keys and threshold units the checks apply) in monitor.rules.kinds.
"""

from __future__ import annotations

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
from monitor.rules.access import AccessPolicySpec
from monitor.rules.access import Grant as Grant
from monitor.rules.access import NormalHours as NormalHours
from monitor.rules.durations import format_duration as format_duration
from monitor.rules.durations import parse_duration as parse_duration
from monitor.rules.fairness import AttributeSelection as AttributeSelection
from monitor.rules.fairness import Fairness as Fairness
from monitor.rules.fairness import FairnessSpec
from monitor.rules.fairness import ProtectedAttribute as ProtectedAttribute
from monitor.rules.fairness import ProxyAttribute as ProxyAttribute
from monitor.rules.kinds import (
    DOWN_COMPARES,
)
from monitor.rules.kinds import Baseline as Baseline
from monitor.rules.kinds import Compare as Compare
from monitor.rules.kinds import Metric as Metric

Category = Literal["performance", "availability", "output_quality", "bias", "security"]
Severity = Literal["MEDIUM", "HIGH", "CRITICAL"]
# As written: "binomial" is deprecated and means "sequential" (the loader warns); a Rule holds the others.
Test = Literal["sequential", "none", "binomial"]
ResolvedTest = Literal["sequential", "none"]
Direction = Literal["up", "down"]
Loc = tuple[str | int, ...]

SEVERITY_RANK: dict[str, int] = {"MEDIUM": 1, "HIGH": 2, "CRITICAL": 3}

FORMAT_VERSION = 1
RULE_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}$"
MIN_WINDOW_S = 60
MAX_WINDOW_S = 7 * 86400
DEFAULT_FOLLOW_S = 3600
# A rate rule's false-alarm budget (docs/rules.md#detectors): the mean time to its first false alarm
# anywhere in the fleet when every watched rate sits exactly on its threshold.
DEFAULT_FALSE_ALARM_EVERY_S = 90 * 86400
MIN_FALSE_ALARM_EVERY_S = 3600


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
    test: ResolvedTest
    # Rate rules: the sequential detectors' budget (unused by other rules).
    false_alarm_every_s: int = Field(default=DEFAULT_FALSE_ALARM_EVERY_S, ge=MIN_FALSE_ALARM_EVERY_S)
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
    fdr: bool = False  # Benjamini–Hochberg across every test of the tick (`fdr:` in a file is deprecated)
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
        """ "down" when a smaller value is worse (below, below_published_minimum), else "up" (shift too)."""
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
    # What loads but should change (deprecated keys), one `file:line: path: message` line each.
    warnings: tuple[str, ...] = ()

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
    false_alarm_every: Duration = None
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
    false_alarm_every: Duration = None


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
