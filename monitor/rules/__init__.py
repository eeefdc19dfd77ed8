"""Detection rules: the file format, its loader and the resolved models the evaluator reads."""

from monitor.rules.loader import RulesFileError, check_command, load_rules, parse_duration
from monitor.rules.schema import SEVERITY_RANK, Category, ModelFacts, Rule, RuleSet, Severity, Step

__all__ = [
    "SEVERITY_RANK",
    "Category",
    "ModelFacts",
    "Rule",
    "RuleSet",
    "RulesFileError",
    "Severity",
    "Step",
    "check_command",
    "load_rules",
    "parse_duration",
]
