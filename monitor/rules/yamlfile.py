"""A rules file read with line numbers: every path (`rules[2].threshold`) maps to the line of its
value, and pydantic's validation errors become `file:line: path: problem` lines.

Line numbers come from the YAML node tree (composed before constructing Python objects): a path is
mapped to the line of its value (or of its key when the value is a block mapping or list), and a
problem whose path does not exist, such as a missing key, takes the line of the nearest enclosing
node that does.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from monitor.exceptions import ConfigError
from monitor.rules.access import AccessPolicySpec, GrantSpec, NormalHoursSpec
from monitor.rules.fairness import FairnessSpec, ProtectedSpec, ProxySpec
from monitor.rules.schema import DefaultsSpec, FileSpec, Loc, ModelSpec, RuleSpec

_MERGE_TAG = "tag:yaml.org,2002:merge"
_KNOWN_KEYS = sorted(
    set(RuleSpec.model_fields)
    | set(FileSpec.model_fields)
    | set(DefaultsSpec.model_fields)
    | set(ModelSpec.model_fields)
    | set(FairnessSpec.model_fields)
    | set(ProtectedSpec.model_fields)
    | set(ProxySpec.model_fields)
    | set(AccessPolicySpec.model_fields)
    | set(NormalHoursSpec.model_fields)
    | set(GrantSpec.model_fields)
)


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
class RulesFile:
    """One file as read: its bytes, its path -> line map, and what validated of it."""

    source: str
    raw: bytes
    lines: dict[Loc, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)  # what loads but should change (deprecations)
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

    def warn(self, loc: Loc, message: str) -> None:
        """Record a warning at `loc`: located like a problem, but the file still loads."""
        self.warnings.append(Problem(self.source, self.line(loc), format_path(loc), message))


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


def read_file(path: Path) -> RulesFile:
    """Read and compose one file; YAML-level problems are recorded on the returned RulesFile."""
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        out = RulesFile(source, b"")
        out.problems.append(Problem(source, None, "", f"cannot read: {exc.strerror or exc}"))
        return out
    out = RulesFile(source, raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        out.problems.append(
            Problem(source, line, "(file)", f"not UTF-8 text ({exc.reason} at byte {exc.start})")
        )
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
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "dict_type": "must be a mapping",
    "list_type": "must be a list",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
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


def validate(out: RulesFile, model: type[BaseModel], value: object, prefix: Loc) -> BaseModel | None:
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
