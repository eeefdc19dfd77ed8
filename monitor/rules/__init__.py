"""Detection rules: the file format, its loader and the resolved models the evaluator reads."""

from monitor.rules.access import AccessPolicy, Grant, NormalHours
from monitor.rules.fairness import (
    AttributeSelection,
    Fairness,
    ProtectedAttribute,
    ProxyAttribute,
)
from monitor.rules.loader import (
    RulesFileError,
    check_command,
    load_rules,
    parse_duration,
)
from monitor.rules.schema import (
    BIAS_METRICS,
    SECURITY_METRICS,
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
    "SECURITY_METRICS",
    "SEVERITY_RANK",
    "AccessPolicy",
    "AttributeSelection",
    "Category",
    "Fairness",
    "Grant",
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
    "load_rules",
    "parse_duration",
]
