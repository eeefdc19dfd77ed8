"""Resolved rule models (DESIGN.md, "Rules"): what the evaluator reads after the loader has checked a file.

Every value here is resolved (defaults applied, durations in seconds), and the loader has already
checked every cross-field constraint with a file/line message. The field constraints below repeat the
simple ranges so a Rule built by hand in a test cannot hold an impossible value either.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

Category = Literal["performance", "availability", "output_quality", "bias", "security"]
Severity = Literal["MEDIUM", "HIGH", "CRITICAL"]
Metric = Literal[
    "accuracy", "accuracy_gap", "error_rate", "latency", "unserved_users", "flag_rate", "silence"
]
Compare = Literal[
    "above",
    "below",
    "below_published_minimum",
    "relative_drop",
    "ratio_above",
    "widening",
    "silence",
]
Baseline = Literal["reference", "week_ago"]
Test = Literal["binomial", "none"]
Direction = Literal["up", "down"]

SEVERITY_RANK: dict[str, int] = {"MEDIUM": 1, "HIGH": 2, "CRITICAL": 3}

# The metric/compare table of the rules contract; the loader refuses every other pair.
METRIC_COMPARES: dict[str, frozenset[str]] = {
    "accuracy": frozenset({"below", "below_published_minimum", "relative_drop"}),
    "accuracy_gap": frozenset({"widening", "above"}),
    "error_rate": frozenset({"above"}),
    "latency": frozenset({"ratio_above", "above"}),
    "unserved_users": frozenset({"above"}),
    "flag_rate": frozenset({"above"}),
    "silence": frozenset({"silence"}),
}
# Proportions of counted events: a binomial test is meaningful only for these.
RATE_METRICS: frozenset[str] = frozenset(
    {"accuracy", "accuracy_gap", "error_rate", "unserved_users", "flag_rate"}
)
# Metrics computed from labels, so label coverage matters.
ACCURACY_METRICS: frozenset[str] = frozenset({"accuracy", "accuracy_gap"})
BASELINE_COMPARES: frozenset[str] = frozenset({"relative_drop", "ratio_above", "widening"})
DOWN_COMPARES: frozenset[str] = frozenset({"below", "below_published_minimum"})
NO_LADDER_COMPARES: frozenset[str] = frozenset({"silence", "below_published_minimum"})

RULE_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}$"
MIN_WINDOW_S = 60
MAX_WINDOW_S = 7 * 86400


class Step(BaseModel):
    """One rung of a rule's severity ladder: crossing `threshold` asks for `severity` and `level`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: float
    severity: Severity
    level: int = Field(ge=0, le=4)


class Rule(BaseModel):
    """One resolved detection rule; see DESIGN.md "Rules" and rules/default.yaml for the meaning of each field."""

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
        """"down" when a smaller value is worse (below, below_published_minimum), else "up"."""
        return "down" if self.compare in DOWN_COMPARES else "up"


class ModelFacts(BaseModel):
    """Per-model facts the rules refer to (only the published minimum accuracy so far)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    published_min_accuracy: float | None = Field(default=None, gt=0.0, le=1.0)


class RuleSet(BaseModel):
    """Every rule of a load, the per-model facts, and where they came from (for evidence)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rules: tuple[Rule, ...]
    models: dict[str, ModelFacts] = Field(default_factory=dict)
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
