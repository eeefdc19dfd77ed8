"""Load rules files (docs/rules.md): YAML with line numbers, every check, merging, `rules check`.

A load never half-succeeds. It reads every file, collects every problem it can find, and raises one
`RulesFileError` (a `ConfigError`) whose message holds one problem per line, sorted by file and line:
`<file>:<line>: <path>: <problem>`. A rule whose keys or types are wrong gets no cross-field checks, so
one typo does not cascade into a page of follow-on complaints; those show up once the typo is fixed.

Line numbers come from the YAML node tree (composed before constructing Python objects): every path
(`rules[2].threshold`) is mapped to the line of its value (or of its key when the value is a block
mapping or list), and a problem whose path does not exist, such as a missing key, takes the line of
the nearest enclosing node that does.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TypeVar

from monitor.exceptions import ConfigError
from monitor.rules.access import AccessPolicySpec
from monitor.rules.checks import file_problems, rule_problems, rule_warnings
from monitor.rules.fairness import (
    FairnessSpec,
    selection_problem,
)
from monitor.rules.kinds import BIAS_METRICS, LABEL_METRICS, RATE_METRICS, SECURITY_METRICS
from monitor.rules.schema import (
    DEFAULT_FALSE_ALARM_EVERY_S,
    DEFAULT_FOLLOW_S,
    DefaultsSpec,
    FileSpec,
    Loc,
    ModelFacts,
    ModelSpec,
    Rule,
    RuleSet,
    RuleSpec,
    Step,
    format_duration,
    parse_duration,
)
from monitor.rules.yamlfile import Problem, RulesFile, RulesFileError, read_file, validate

__all__ = [
    "Problem",
    "RulesFileError",
    "check_command",
    "default_rules_path",
    "format_duration",
    "load_rules",
    "parse_duration",
    "resolve_rules_path",
]

DEFAULT_RULES_FILE = "default.yaml"  # shipped in this package (package data), beside this module

BUILTIN_CONFIDENCE = 0.99
BUILTIN_HOLD_S = 15 * 60
BUILTIN_MIN_SAMPLES = 200
SECURITY_MIN_SAMPLES = 1  # a count needs no sample: one unauthorized download is an incident
DEFAULT_LABEL_COVERAGE = 0.05

T = TypeVar("T")


def _parse(out: RulesFile) -> None:
    """Validate a composed file: structure with pydantic, then the cross-field checks per rule."""
    if out.data is None:
        return
    spec = validate(out, FileSpec, out.data, ())
    out.spec = spec if isinstance(spec, FileSpec) else None
    if out.spec is not None:
        for loc, message in file_problems(out.spec):
            out.add(loc, message)
    items = out.data.get("rules")
    if not isinstance(items, list):
        return
    for index, item in enumerate(items):
        rule = validate(out, RuleSpec, item, ("rules", index))
        if isinstance(rule, RuleSpec):
            problems = list(rule_problems(rule))
            for loc, message in problems:
                out.add(("rules", index, *loc), message)
            for loc, message in rule_warnings(rule):
                out.warn(("rules", index, *loc), message)
            if not problems:
                out.rules.append((index, rule))


def default_rules_path() -> Path:
    """The default rules installed with the package: what a monitor loads when no path is set."""
    found = resources.files("monitor.rules").joinpath(DEFAULT_RULES_FILE)
    # Installed from a wheel or a source tree the package is a directory; only a zip import is not.
    if not isinstance(found, Path) or not found.is_file():
        raise ConfigError(
            f"the packaged default rules ({found}) are missing from this installation; "
            "reinstall the monitor or set MONITOR_RULES_PATH to a rules file or directory"
        )
    return found


def resolve_rules_path(path: Path | None) -> Path:
    """The rules path a load reads: `path` if one is set, else the packaged default rules."""
    return default_rules_path() if path is None else path


# Where a path that does not exist came from, and how to do without one.
_MOVE_HINT = (
    "set MONITOR_RULES_PATH (or the PATH of `monitor rules check`) to a rules file or directory, "
    "or leave it unset for the packaged default rules"
)


def _files(path: Path) -> list[Path]:
    """The files a load reads: `path` itself, or every *.yaml / *.yml in it (not dot-files), sorted."""
    if path.is_dir():
        found = sorted(
            p
            for p in path.iterdir()
            if p.suffix in (".yaml", ".yml") and p.is_file() and not p.name.startswith(".")
        )
        if not found:
            raise ConfigError(
                f"{path.absolute()}: no *.yaml or *.yml rules files in this directory; {_MOVE_HINT}"
            )
        return found
    if path.is_file():
        return [path]
    # Absolute: a relative path is read from the working directory, which the operator may not know.
    raise ConfigError(f"{path.absolute()}: no such rules file or directory; {_MOVE_HINT}")


@dataclass
class _Merged:
    """What the files add up to; every cross-file conflict is recorded on the file that repeats."""

    defaults: DefaultsSpec = field(default_factory=DefaultsSpec)
    models: dict[str, ModelSpec] = field(default_factory=dict)
    models_at: dict[str, str] = field(default_factory=dict)
    fairness: FairnessSpec = field(default_factory=FairnessSpec)
    access: AccessPolicySpec = field(default_factory=AccessPolicySpec)
    section_at: dict[str, str] = field(default_factory=dict)  # "file:line" of each _ONE_FILE_SECTIONS key
    rule_at: dict[str, str] = field(default_factory=dict)
    rules: list[RuleSpec] = field(default_factory=list)


# The top-level sections only one file of a directory may define, and what a second one is told.
_ONE_FILE_SECTIONS = {
    "defaults": "defaults are already defined at {where}; define them in one file only",
    "fairness": "fairness is already defined at {where}; define it in one file only",
    "access_policy": "access_policy is already defined at {where}; define it in one file only",
}


def _defines_first(f: RulesFile, key: str, merged: _Merged) -> bool:
    """Whether `f` is the first file to define the section `key`; a later one gets a problem naming the
    first."""
    if (f.data or {}).get(key) is None:
        return False
    if key in merged.section_at:
        f.add((key,), _ONE_FILE_SECTIONS[key].format(where=merged.section_at[key]))
        return False
    merged.section_at[key] = f"{f.source}:{f.line((key,))}"
    return True


def _merge(files: list[RulesFile]) -> _Merged:
    merged = _Merged()
    for f in files:
        data, spec = f.data or {}, f.spec
        # The check comes first in each `and`: a repeated section is a problem even in a file that did
        # not validate.
        if _defines_first(f, "defaults", merged) and spec is not None and spec.defaults is not None:
            merged.defaults = spec.defaults
        if _defines_first(f, "fairness", merged) and spec is not None and spec.fairness is not None:
            merged.fairness = spec.fairness
        if _defines_first(f, "access_policy", merged) and spec is not None and spec.access_policy is not None:
            merged.access = spec.access_policy
        models = data.get("models")
        for model_id in models if isinstance(models, dict) else {}:
            if not isinstance(model_id, str):
                continue
            if model_id in merged.models_at:
                where = merged.models_at[model_id]
                f.add(("models", model_id), f"model {model_id!r} is already defined at {where}")
                continue
            merged.models_at[model_id] = f"{f.source}:{f.line(('models', model_id))}"
            facts = spec.models.get(model_id) if spec is not None and spec.models else None
            if facts is not None:
                merged.models[model_id] = facts
        items = data.get("rules")
        for index, item in enumerate(items if isinstance(items, list) else []):
            rule_id = item.get("id") if isinstance(item, dict) else None
            if not isinstance(rule_id, str):
                continue
            loc: Loc = ("rules", index, "id")
            if rule_id in merged.rule_at:
                f.add(loc, f"duplicate rule id {rule_id!r} (first defined at {merged.rule_at[rule_id]})")
            else:
                merged.rule_at[rule_id] = f"{f.source}:{f.line(loc)}"
        merged.rules.extend(rule for _, rule in f.rules)
    # An unknown inhibited_by may be a rule of a file that did not even parse: say so only when all did.
    if all(f.data is not None for f in files):
        for f in files:
            for index, rule in f.rules:
                for pos, other in enumerate(rule.inhibited_by):
                    if other not in merged.rule_at:
                        f.add(("rules", index, "inhibited_by", pos), f"unknown rule id {other!r}")
    # Likewise the attributes a bias rule tests, once the fairness section (if any) has validated.
    if all(f.data is not None and (f.spec is not None or "fairness" not in f.data) for f in files):
        for f in files:
            for index, rule in f.rules:
                which = rule.attributes or "all"
                problem = selection_problem(merged.fairness, which, merged.section_at.get("fairness"))
                if rule.metric in BIAS_METRICS and problem:
                    f.add(("rules", index, "attributes"), problem)
    return merged


def _resolve(spec: RuleSpec, defaults: DefaultsSpec) -> Rule:
    """The public Rule: defaults applied, durations in seconds, per-metric defaults filled in."""
    if spec.compare == "silence":
        threshold: float | None = float(parse_duration(spec.threshold))
    elif spec.compare == "below_published_minimum":
        threshold = None
    else:
        threshold = float(spec.threshold)
    coverage = spec.min_label_coverage
    if coverage is None and spec.metric in LABEL_METRICS:
        coverage = DEFAULT_LABEL_COVERAGE
    auto_recover = spec.auto_recover
    if auto_recover is None:
        # A CRITICAL or security incident is closed by a person, never by a quiet metric.
        auto_recover = spec.severity != "CRITICAL" and spec.category != "security"
    same = spec.model_dump(include=_SAME_KEYS)
    return Rule(
        **same,
        window_s=spec.window,
        threshold=threshold,
        # Security rules count events: the defaults' sample size is for rates and would silence them.
        min_samples=_first(spec.min_samples, SECURITY_MIN_SAMPLES)
        if spec.metric in SECURITY_METRICS
        else _first(spec.min_samples, defaults.min_samples, BUILTIN_MIN_SAMPLES),
        min_label_coverage=coverage,
        # Rates default to the sequential detector; a deprecated `test: binomial` means it too (the
        # checks refuse a detector on any other metric).
        test="none" if spec.test == "none" or spec.metric not in RATE_METRICS else "sequential",
        false_alarm_every_s=_first(
            spec.false_alarm_every, defaults.false_alarm_every, DEFAULT_FALSE_ALARM_EVERY_S
        ),
        confidence=_first(spec.confidence, defaults.confidence, BUILTIN_CONFIDENCE),
        ladder=tuple(Step(**step.model_dump()) for step in spec.ladder),
        auto_recover=auto_recover,
        hold_s=_first(spec.hold, defaults.hold, BUILTIN_HOLD_S),
        inhibited_by=tuple(spec.inhibited_by),
        # Bias rules test every group of every attribute each tick: without FDR control, noise fires.
        fdr=spec.metric in BIAS_METRICS if spec.fdr is None else spec.fdr,
        attributes=spec.attributes or "all",
        revoke=bool(spec.revoke),
        min_volume=spec.min_volume or 0,
        follow_s=_first(spec.follow, DEFAULT_FOLLOW_S),
    )


# Keys a Rule takes over from the file unchanged.
_SAME_KEYS = {
    "id",
    "category",
    "description",
    "metric",
    "compare",
    "baseline",
    "severity",
    "level",
    "rollback",
    "flag",
    "quantile",
    "attribute",
}


def _first(*values: T | None) -> T:
    return next(value for value in values if value is not None)


def load_rules(path: Path | None = None) -> RuleSet:
    """Load a rules file, or every *.yaml / *.yml of a directory (sorted), or with no path the
    packaged default rules; raises ConfigError."""
    files = [read_file(p) for p in _files(resolve_rules_path(path))]
    for f in files:
        _parse(f)
    merged = _merge(files)
    problems = [p for f in files for p in sorted(f.problems, key=lambda p: p.line or 0)]
    if problems:
        raise RulesFileError(problems)
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.raw)
    return RuleSet(
        rules=tuple(_resolve(spec, merged.defaults) for spec in merged.rules),
        models={m: ModelFacts(**facts.model_dump()) for m, facts in merged.models.items()},
        fairness=merged.fairness.resolve(),
        access_policy=merged.access.resolve(),
        sources=tuple(f.source for f in files),
        sha256=digest.hexdigest(),
        warnings=tuple(str(w) for f in files for w in sorted(f.warnings, key=lambda w: w.line or 0)),
    )


def check_command(path: Path | None = None) -> tuple[int, str]:
    """`monitor rules check [PATH]`: (0, a summary of what loads, then any warnings) or (1, every problem,
    one per line); with no PATH, the packaged default rules."""
    try:
        ruleset = load_rules(path)
    except ConfigError as exc:
        return 1, str(exc)
    per_category = Counter(rule.category for rule in ruleset.rules)
    width = max((len(c) for c in per_category), default=0)
    lines = [f"OK: {len(ruleset.rules)} rules from {', '.join(ruleset.sources)}"]
    lines += [f"  {category:<{width}}  {count}" for category, count in sorted(per_category.items())]
    if ruleset.models:
        models = sorted(ruleset.models.items())
        facts = (f"{m} (published_min_accuracy {f.published_min_accuracy})" for m, f in models)
        lines.append("models: " + ", ".join(facts))
    declared = ruleset.fairness
    if declared.protected or declared.proxies:
        protected = [
            f"{a} (reference {p.reference})" if p.reference else a for a, p in declared.protected.items()
        ]
        proxies = [f"{a} (for {p.proxy_for})" if p.proxy_for else a for a, p in declared.proxies.items()]
        listed = (", ".join(sorted(names)) or "-" for names in (protected, proxies))
        lines.append("fairness: protected {}; proxies {}".format(*listed))
    policy = ruleset.access_policy
    lines.append(
        f"access policy: {len(policy.grants)} grant{'' if len(policy.grants) == 1 else 's'};"
        f" normal hours {policy.normal_hours.describe()};"
        f" learning period {format_duration(policy.learning_s)}"
    )
    lines.append(f"sha256: {ruleset.sha256}")
    if ruleset.warnings:
        count = len(ruleset.warnings)
        lines.append(f"{count} warning{'' if count == 1 else 's'} (the rules load):")
        lines += ruleset.warnings
    return 0, "\n".join(lines)
