"""Detection rules: rule kinds, the file format, its loader and the resolved models the evaluator reads."""

from monitor.rules.access import AccessPolicy, Grant, NormalHours
from monitor.rules.fairness import (
    AttributeSelection,
    Fairness,
    ProtectedAttribute,
    ProxyAttribute,
)
from monitor.rules.kinds import BIAS_METRICS, KINDS, SECURITY_METRICS, MetricKind, kind
from monitor.rules.loader import (
    RulesFileError,
    check_command,
    load_rules,
    parse_duration,
)
from monitor.rules.schema import (
    SEVERITY_RANK,
    Category,
    ModelFacts,
    Rule,
    RuleSet,
    Severity,
    Step,
)

__all__ = [
    "BIAS_METRICS",
    "KINDS",
    "SECURITY_METRICS",
    "SEVERITY_RANK",
    "AccessPolicy",
    "AttributeSelection",
    "Category",
    "Fairness",
    "Grant",
    "MetricKind",
    "ModelFacts",
    "NormalHours",
    "ProtectedAttribute",
    "ProxyAttribute",
    "Rule",
    "RuleSet",
    "RulesFileError",
    "Severity",
    "Step",
    "check_command",
    "kind",
    "load_rules",
    "parse_duration",
]
