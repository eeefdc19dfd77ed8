"""The `access_policy:` section of the rules contract: who may do what, and when, to which models.

`AccessPolicy` is what the security aggregation reads (it is `RuleSet.access_policy`); `AccessPolicySpec`
is the section as written, and `access_problems` its cross-field checks, with paths relative to the
section so the loader can put a file and line on each. Actions and resource types are the enums of
the AccessEvent of docs/events.md, taken from `monitor.events` (the wire contract). Principal and
model patterns are fnmatch globs, matched case-sensitively: `svc-Trainer` is not `svc-trainer`,
and a policy must not depend on the platform it runs on.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Annotated, Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from monitor.events import AccessAction, ResourceType
from monitor.rules.durations import parse_duration

Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
Hours = Literal["normal", "any"]
Loc = tuple[str | int, ...]

ACTIONS: frozenset[str] = frozenset(get_args(AccessAction))
RESOURCE_TYPES: frozenset[str] = frozenset(get_args(ResourceType))
DAYS: tuple[str, ...] = get_args(Day)  # index = datetime.weekday()
DEFAULT_LEARNING_S = 7 * 86400
DEFAULT_UNCHECKED: frozenset[str] = frozenset({"login"})
DEFAULT_PRIVILEGED: frozenset[str] = frozenset({"write", "delete", "deploy", "grant"})
DAY_MINUTES = 24 * 60


def _zone(name: str) -> ZoneInfo:
    """The zone named `name`; a ValueError naming it when there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):  # ValueError: not even a key, like "../x" or ""
        close = difflib.get_close_matches(name, sorted(available_timezones()), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else " (an IANA name like UTC or Europe/Paris)"
        raise ValueError(f"unknown timezone {name!r}{hint}") from None


class NormalHours(BaseModel):
    """The hours of normal use: [start_min, end_min) minutes after local midnight, on `days`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start_min: int = Field(default=7 * 60, ge=0, lt=DAY_MINUTES)
    end_min: int = Field(default=20 * 60, gt=0, le=DAY_MINUTES)
    days: frozenset[int] = frozenset(range(5))  # 0 = Monday .. 6 = Sunday, as datetime.weekday()
    timezone: str = "UTC"

    @model_validator(mode="after")
    def _is_a_day_span(self) -> NormalHours:
        """start < end (no span over midnight), days exist, and the timezone is known."""
        if self.start_min >= self.end_min:
            raise ValueError(f"start ({self.start_min} min) must be before end ({self.end_min} min)")
        if not self.days or not self.days <= set(range(7)):
            raise ValueError(
                f"days must be a non-empty set of 0 (Monday) .. 6 (Sunday) (got {sorted(self.days)})"
            )
        _zone(self.timezone)
        return self

    def contains(self, epoch_s: float) -> bool:
        """Whether the instant falls inside normal hours, read on the policy's local clock."""
        # ZoneInfo caches its instances: a lookup, not a file read, per call.
        local = datetime.fromtimestamp(epoch_s, ZoneInfo(self.timezone))
        minute = local.hour * 60 + local.minute
        return local.weekday() in self.days and self.start_min <= minute < self.end_min

    def describe(self) -> str:
        """`07:00-20:00 mon-fri UTC`, for `monitor rules check`."""
        return f"{_clock(self.start_min)}-{_clock(self.end_min)} {_days(self.days)} {self.timezone}"


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _days(days: frozenset[int]) -> str:
    """`mon-fri` for a run of three or more days, else the days listed: `sat,sun`."""
    ordered = sorted(days)
    if len(ordered) >= 3 and ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{DAYS[ordered[0]]}-{DAYS[ordered[-1]]}"
    return ",".join(DAYS[d] for d in ordered)


class Grant(BaseModel):
    """Principals matching `principals` may do `actions` on `resource_types` of models matching `models`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    principals: tuple[str, ...] = Field(min_length=1)
    actions: frozenset[str] = Field(min_length=1)
    resource_types: frozenset[str] = Field(min_length=1)
    models: tuple[str, ...] = Field(default=("*",), min_length=1)
    hours: Hours = "normal"  # "any" exempts the grant's accesses from off-hours detection

    @model_validator(mode="after")
    def _names_exist(self) -> Grant:
        """Actions and resource types are AccessEvent's; no pattern is empty (it would match nothing)."""
        unknown = sorted((self.actions - ACTIONS) | (self.resource_types - RESOURCE_TYPES))
        if unknown:
            raise ValueError(f"not AccessEvent actions or resource types: {', '.join(unknown)}")
        if not all(p.strip() for p in (*self.principals, *self.models)):
            raise ValueError("a principal or model pattern must not be empty")
        return self

    def matches(self, principal: str, action: str, resource_type: str, model_id: str | None) -> bool:
        """Whether this grant covers the access; an access that names no model matches only `*`."""
        if action not in self.actions or resource_type not in self.resource_types:
            return False
        if not any(fnmatchcase(principal, pattern) for pattern in self.principals):
            return False
        if model_id is None:
            return "*" in self.models
        return any(fnmatchcase(model_id, pattern) for pattern in self.models)


class AccessPolicy(BaseModel):
    """The access policy of a load; without an `access_policy:` section nothing but login is allowed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    normal_hours: NormalHours = Field(default_factory=NormalHours)
    # Until a model has this much access history, no principal or source counts as new to it.
    learning_s: int = Field(default=DEFAULT_LEARNING_S, ge=0)
    unchecked_actions: frozenset[str] = DEFAULT_UNCHECKED
    privileged_actions: frozenset[str] = Field(default=DEFAULT_PRIVILEGED, min_length=1)
    grants: tuple[Grant, ...] = ()

    @model_validator(mode="after")
    def _actions_exist(self) -> AccessPolicy:
        """Unchecked and privileged actions are AccessEvent actions."""
        unknown = sorted((self.unchecked_actions | self.privileged_actions) - ACTIONS)
        if unknown:
            raise ValueError(f"not AccessEvent actions: {', '.join(unknown)}")
        return self

    def allows(self, principal: str, action: str, resource_type: str, model_id: str | None) -> bool:
        """Whether the policy allows the access: an unchecked action, or one some grant covers."""
        return action in self.unchecked_actions or any(
            grant.matches(principal, action, resource_type, model_id) for grant in self.grants
        )

    def any_hours(self, principal: str, action: str, resource_type: str, model_id: str | None) -> bool:
        """Whether some grant with `hours: any` covers the access (it is never off-hours)."""
        return any(
            grant.hours == "any" and grant.matches(principal, action, resource_type, model_id)
            for grant in self.grants
        )


# --- the section as written -----------------------------------------------------------------------

# Strict like the rest of the file format (schema._STRICT): a hand-edited file's slips are refused.
_STRICT = ConfigDict(strict=True, extra="forbid")
_TIME = re.compile(r"(\d{1,2}):(\d\d)")


def _duration(value: Any) -> int | None:
    return None if value is None else parse_duration(value)


class NormalHoursSpec(BaseModel):
    """`access_policy.normal_hours` as written."""

    model_config = _STRICT

    start: Any = "07:00"  # "HH:MM" text; anything else is refused by access_problems with a hint
    end: Any = "20:00"
    days: list[Day] = ["mon", "tue", "wed", "thu", "fri"]
    timezone: str = "UTC"

    def resolve(self) -> NormalHours:
        """The public NormalHours (call only on a section without problems)."""
        return NormalHours(
            start_min=_minutes(self.start),
            end_min=_minutes(self.end),
            days=frozenset(DAYS.index(d) for d in self.days),
            timezone=self.timezone,
        )


class GrantSpec(BaseModel):
    """One entry of `access_policy.grants` as written."""

    model_config = _STRICT

    principals: list[str]
    actions: list[AccessAction]
    resource_types: list[ResourceType]
    models: list[str] = ["*"]
    hours: Hours = "normal"

    def resolve(self) -> Grant:
        """The public Grant (call only on a grant without problems)."""
        return Grant(
            principals=tuple(self.principals),
            actions=frozenset(self.actions),
            resource_types=frozenset(self.resource_types),
            models=tuple(self.models),
            hours=self.hours,
        )


class AccessPolicySpec(BaseModel):
    """The `access_policy:` section as written."""

    model_config = _STRICT

    normal_hours: NormalHoursSpec = Field(default_factory=NormalHoursSpec)
    learning_period: Annotated[int | None, BeforeValidator(_duration)] = None
    unchecked_actions: list[AccessAction] | None = None
    privileged_actions: list[AccessAction] | None = None
    grants: list[GrantSpec] = []

    def resolve(self) -> AccessPolicy:
        """The public AccessPolicy (call only on a section without problems)."""
        return AccessPolicy(
            normal_hours=self.normal_hours.resolve(),
            learning_s=DEFAULT_LEARNING_S if self.learning_period is None else self.learning_period,
            unchecked_actions=_actions(self.unchecked_actions, DEFAULT_UNCHECKED),
            privileged_actions=_actions(self.privileged_actions, DEFAULT_PRIVILEGED),
            grants=tuple(grant.resolve() for grant in self.grants),
        )


def _actions(written: list[AccessAction] | None, default: frozenset[str]) -> frozenset[str]:
    return default if written is None else frozenset(written)


def _minutes(text: str) -> int:
    """Minutes after midnight of a valid "HH:MM" (checked by access_problems first)."""
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


def _time_problem(value: object, latest: int) -> str | None:
    """Why `value` is no "HH:MM" time up to `latest` minutes, or None."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= DAY_MINUTES:
        # YAML 1.1 reads an unquoted 20:00 as a base-60 number (1200), but 07:00 as text.
        return (
            f'must be quoted text like "07:00" (got the number {value}: unquoted, YAML reads 20:00 as 1200)'
        )
    if not isinstance(value, str):
        shown = str(value).lower() if isinstance(value, bool) else repr(value)
        return f'must be a time "HH:MM" in quotes (got {shown})'
    match = _TIME.fullmatch(value)
    if not match or int(match.group(2)) > 59 or _minutes(value) > latest:
        return f'must be a time "HH:MM" from 00:00 to {_clock(latest)} (got {value!r})'
    return None


def access_problems(spec: AccessPolicySpec) -> Iterator[tuple[Loc, str]]:
    """Every cross-field problem of the section (paths relative to it); nothing when it is valid."""
    hours = spec.normal_hours
    # The start is a moment of a day (up to 23:59); the end may be midnight, written 24:00.
    start = _time_problem(hours.start, DAY_MINUTES - 1)
    end = _time_problem(hours.end, DAY_MINUTES)
    if start:
        yield ("normal_hours", "start"), start
    if end:
        yield ("normal_hours", "end"), end
    if not start and not end and _minutes(hours.start) >= _minutes(hours.end):
        yield (
            ("normal_hours", "end"),
            (
                f"must be later than start {hours.start} (normal hours cannot span midnight;"
                f" give night work its own grant with hours: any) (got {hours.end!r})"
            ),
        )
    if not hours.days:
        yield ("normal_hours", "days"), "must list at least one day (mon .. sun)"
    try:
        _zone(hours.timezone)
    except ValueError as exc:
        yield ("normal_hours", "timezone"), str(exc)
    if spec.privileged_actions == []:
        yield (
            ("privileged_actions",),
            ("must list at least one action (new_source_privileged rules watch these)"),
        )
    for index, grant in enumerate(spec.grants):
        lists: tuple[tuple[str, list[str], str], ...] = (
            ("principals", grant.principals, "principal pattern"),
            ("actions", list(grant.actions), "action"),
            ("resource_types", list(grant.resource_types), "resource type"),
            ("models", grant.models, "model pattern ('*' for every model)"),
        )
        for key, values, what in lists:
            if not values:
                yield ("grants", index, key), f"must list at least one {what}"
            for pos, value in enumerate(values):
                if not value.strip():
                    yield ("grants", index, key, pos), "a pattern must not be empty (use '*' for any)"
