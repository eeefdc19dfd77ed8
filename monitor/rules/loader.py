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

import difflib
import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from monitor.exceptions import ConfigError
from monitor.rules.access import AccessPolicySpec, GrantSpec, NormalHoursSpec
from monitor.rules.fairness import (
    FairnessSpec,
    ProtectedSpec,
    ProxySpec,
    selection_problem,
)
from monitor.rules.kinds import BIAS_METRICS, LABEL_METRICS, RATE_METRICS, SECURITY_METRICS
from monitor.rules.schema import (
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
    file_problems,
    format_duration,
    parse_duration,
    rule_problems,
)

__all__ = [
    "Problem", "RulesFileError", "check_command", "default_rules_path", "format_duration", "load_rules",
    "parse_duration", "resolve_rules_path",
]

DEFAULT_RULES_FILE = "default.yaml"  # shipped in this package (package data), beside this module

BUILTIN_CONFIDENCE = 0.99
BUILTIN_HOLD_S = 15 * 60
BUILTIN_MIN_SAMPLES = 200
SECURITY_MIN_SAMPLES = 1  # a count needs no sample: one unauthorized download is an incident
DEFAULT_LABEL_COVERAGE = 0.05

_MERGE_TAG = "tag:yaml.org,2002:merge"
_KNOWN_KEYS = sorted(
    set(RuleSpec.model_fields) | set(FileSpec.model_fields) | set(DefaultsSpec.model_fields)
    | set(ModelSpec.model_fields) | set(FairnessSpec.model_fields) | set(ProtectedSpec.model_fields)
    | set(ProxySpec.model_fields) | set(AccessPolicySpec.model_fields) | set(NormalHoursSpec.model_fields)
    | set(GrantSpec.model_fields)
)
T = TypeVar("T")


@dataclass(frozen=True)
class Problem:
    """One reason a rules file is refused, located by file, line and field path."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class RulesFileError(ConfigError):
    """A refused load; `problems` holds each problem, the message one per line."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = tuple(problems)


def format_path(loc: Loc) -> str:
    """`rules[2].ladder[0].threshold` from ("rules", 2, "ladder", 0, "threshold")."""
    out = ""
    for part in loc:
        if isinstance(part, str) and (not part or part != part.strip()):
            part = repr(part)  # an empty or space-padded key must show up in the path
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


@dataclass
class _File:
    """One file as read: its bytes, its path -> line map, and what validated of it."""

    source: str
    raw: bytes
    lines: dict[Loc, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    data: dict[str, Any] | None = None  # None when the file is not even a YAML mapping
    spec: FileSpec | None = None
    rules: list[tuple[int, RuleSpec]] = field(default_factory=list)

    def line(self, loc: Loc) -> int:
        """The line of `loc`, or of its nearest enclosing node that exists in the file."""
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return 1

    def add(self, loc: Loc, message: str, line: int | None = None) -> None:
        """Record a problem at `loc` (on `line` when the path alone cannot say which line)."""
        self.problems.append(Problem(self.source, line or self.line(loc), format_path(loc), message))


def _map_lines(
    node: yaml.Node, loc: Loc, lines: dict[Loc, int], dups: list[tuple[Loc, int, int]], seen: set[int]
) -> None:
    """Fill `lines` with the line of every path under `node`; note duplicate keys in `dups`."""
    # An alias reaches a node a second time: descending again would let a "billion laughs" file
    # hang the start, and paths under the alias fall back to the alias's own line anyway.
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        explicit: dict[str, int] = {}
        for key_node, value_node in node.value:
            # A key merged in by `<<: *anchor` has no line here: its problems name the merging mapping.
            # A complex key is refused by pydantic ("keys must be strings").
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = key_node.value
            child = (*loc, key)
            if key in explicit:
                dups.append((child, explicit[key], key_node.start_mark.line + 1))
                continue
            is_block = not isinstance(value_node, yaml.ScalarNode) and not value_node.flow_style
            lines[child] = (key_node if is_block else value_node).start_mark.line + 1
            explicit[key] = lines[child]
            _map_lines(value_node, child, lines, dups, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*loc, index)] = item.start_mark.line + 1
            _map_lines(item, (*loc, index), lines, dups, seen)


def _read(path: Path) -> _File:
    """Read and compose one file; YAML-level problems are recorded on the returned _File."""
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        out = _File(source, b"")
        out.problems.append(Problem(source, None, "", f"cannot read: {exc.strerror or exc}"))
        return out
    out = _File(source, raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        out.problems.append(Problem(source, line, "(file)", f"not UTF-8 text ({exc.reason} at byte {exc.start})"))
        return out
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            out.add((), "the file is empty; expected a mapping with version and rules")
            return out
        out.lines[()] = node.start_mark.line + 1
        dups: list[tuple[Loc, int, int]] = []
        _map_lines(node, (), out.lines, dups, set())
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = exc.problem or exc.context or "invalid YAML"
        # The context names the construct the parser was inside, often opened many lines earlier.
        if exc.context and exc.problem and exc.context_mark is not None and exc.context_mark.line + 1 != line:
            problem += f" ({exc.context} that starts at line {exc.context_mark.line + 1})"
        if "'\\t'" in problem:
            problem += " (indent with spaces, not tabs)"
        out.problems.append(Problem(source, line, "YAML syntax", problem))
        return out
    except yaml.YAMLError as exc:
        out.problems.append(Problem(source, 1, "YAML syntax", str(exc)))
        return out
    finally:
        loader.dispose()
    for loc, first, again in dups:
        out.add(loc, f"duplicate key (first given at line {first}); YAML would silently keep the last", again)
    if not isinstance(data, dict):
        out.add((), f"the file must be a mapping with version and rules (got {_kind(data)})")
        return out
    out.data = data
    return out


def _kind(value: object) -> str:
    names = {list: "a list", dict: "a mapping", str: "a string", type(None): "nothing"}
    return names.get(type(value), type(value).__name__)


def _show(value: object) -> str:
    """A value as the operator wrote it, for "(got ...)"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, (int, float, str)) else _kind(value)


_TYPE_MESSAGES = {
    "model_type": "must be a mapping", "model_attributes_type": "must be a mapping",
    "dict_type": "must be a mapping",
    "list_type": "must be a list", "int_type": "must be an integer", "float_type": "must be a number",
    "string_type": "must be a string", "bool_type": "must be true or false",
}
# pydantic's wording, in the voice of the rest of the messages.
_WORDING = (("greater than or equal to", "at least"), ("less than or equal to", "at most"))


def _error_message(error: Any) -> str:
    """One pydantic error as an operator-facing problem."""
    kind, loc = error["type"], error["loc"]
    if kind == "missing":
        return "required key is missing"
    if kind == "invalid_key":
        return "keys must be strings"
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else ""
        close = difflib.get_close_matches(key, _KNOWN_KEYS, n=1, cutoff=0.6)
        return f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
    if kind == "value_error":  # our own duration message, already complete
        return str(error["msg"]).removeprefix("Value error, ")
    message = _TYPE_MESSAGES.get(kind) or re.sub(r"^\w+ should", "must", str(error["msg"]))
    for theirs, ours in _WORDING:
        message = message.replace(theirs, ours)
    return f"{message} (got {_show(error['input'])})"


def _validate(out: _File, model: type[BaseModel], value: object, prefix: Loc) -> BaseModel | None:
    """Validate `value` against `model`, turning each pydantic error into a located problem."""
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        errors = exc.errors()
    # `levl: 2` yields "unknown key 'levl'" and "level is missing": the first, with its hint, says it all.
    hinted = {
        (*e["loc"][:-1], hint)
        for e in errors
        if e["type"] == "extra_forbidden" and e["loc"]
        for hint in difflib.get_close_matches(str(e["loc"][-1]), _KNOWN_KEYS, n=1, cutoff=0.6)
    }
    for error in errors:
        loc = tuple(error["loc"])
        if error["type"] == "missing" and loc in hinted:
            continue
        if loc[-1:] == ("[key]",):
            # A key that is no string (`1: {}`): name it as written, which is also how its line is known.
            key = loc[-2]
            out.add((*prefix, *loc[:-2], str(key)), f"keys must be strings; quote it (got {_show(key)})")
            continue
        out.add((*prefix, *loc), _error_message(error))
    return None


def _parse(out: _File) -> None:
    """Validate a composed file: structure with pydantic, then the cross-field checks per rule."""
    if out.data is None:
        return
    spec = _validate(out, FileSpec, out.data, ())
    out.spec = spec if isinstance(spec, FileSpec) else None
    if out.spec is not None:
        for loc, message in file_problems(out.spec):
            out.add(loc, message)
    items = out.data.get("rules")
    if not isinstance(items, list):
        return
    for index, item in enumerate(items):
        rule = _validate(out, RuleSpec, item, ("rules", index))
        if isinstance(rule, RuleSpec):
            problems = list(rule_problems(rule))
            for loc, message in problems:
                out.add(("rules", index, *loc), message)
            if not problems:
                out.rules.append((index, rule))


def default_rules_path() -> Path:
    """The default rules installed with the package: what a monitor loads when no path is set."""
    found = resources.files("monitor.rules").joinpath(DEFAULT_RULES_FILE)
    # Installed from a wheel or a source tree the package is a directory; only a zip import is not.
    if not isinstance(found, Path) or not found.is_file():
        raise ConfigError(f"the packaged default rules ({found}) are missing from this installation; "
                          "reinstall the monitor or set MONITOR_RULES_PATH to a rules file or directory")
    return found


def resolve_rules_path(path: Path | None) -> Path:
    """The rules path a load reads: `path` if one is set, else the packaged default rules."""
    return default_rules_path() if path is None else path


# Where a path that does not exist came from, and how to do without one.
_MOVE_HINT = ("set MONITOR_RULES_PATH (or the PATH of `monitor rules check`) to a rules file or directory, "
              "or leave it unset for the packaged default rules")


def _files(path: Path) -> list[Path]:
    """The files a load reads: `path` itself, or every *.yaml / *.yml in it (not dot-files), sorted."""
    if path.is_dir():
        found = sorted(
            p for p in path.iterdir()
            if p.suffix in (".yaml", ".yml") and p.is_file() and not p.name.startswith(".")
        )
        if not found:
            raise ConfigError(f"{path.absolute()}: no *.yaml or *.yml rules files in this directory; {_MOVE_HINT}")
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


def _defines_first(f: _File, key: str, merged: _Merged) -> bool:
    """Whether `f` is the first file to define the section `key`; a later one gets a problem naming the first."""
    if (f.data or {}).get(key) is None:
        return False
    if key in merged.section_at:
        f.add((key,), _ONE_FILE_SECTIONS[key].format(where=merged.section_at[key]))
        return False
    merged.section_at[key] = f"{f.source}:{f.line((key,))}"
    return True


def _merge(files: list[_File]) -> _Merged:
    merged = _Merged()
    for f in files:
        data, spec = f.data or {}, f.spec
        # The check comes first in each `and`: a repeated section is a problem even in a file that did not validate.
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
        min_samples=_first(spec.min_samples, SECURITY_MIN_SAMPLES) if spec.metric in SECURITY_METRICS
        else _first(spec.min_samples, defaults.min_samples, BUILTIN_MIN_SAMPLES),
        min_label_coverage=coverage,
        test=spec.test or ("binomial" if spec.metric in RATE_METRICS else "none"),
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
    "id", "category", "description", "metric", "compare", "baseline", "severity", "level", "rollback", "flag",
    "quantile", "attribute",
}


def _first(*values: T | None) -> T:
    return next(value for value in values if value is not None)


def load_rules(path: Path | None = None) -> RuleSet:
    """Load a rules file, or every *.yaml / *.yml of a directory (sorted), or with no path the
    packaged default rules; raises ConfigError."""
    files = [_read(p) for p in _files(resolve_rules_path(path))]
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
    )


def check_command(path: Path | None = None) -> tuple[int, str]:
    """`monitor rules check [PATH]`: (0, a summary of what loads) or (1, every problem, one per line);
    with no PATH, the packaged default rules."""
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
        protected = [f"{a} (reference {p.reference})" if p.reference else a for a, p in declared.protected.items()]
        proxies = [f"{a} (for {p.proxy_for})" if p.proxy_for else a for a, p in declared.proxies.items()]
        listed = (", ".join(sorted(names)) or "-" for names in (protected, proxies))
        lines.append("fairness: protected {}; proxies {}".format(*listed))
    policy = ruleset.access_policy
    lines.append(
        f"access policy: {len(policy.grants)} grant{'' if len(policy.grants) == 1 else 's'};"
        f" normal hours {policy.normal_hours.describe()}; learning period {format_duration(policy.learning_s)}"
    )
    lines.append(f"sha256: {ruleset.sha256}")
    return 0, "\n".join(lines)
