"""The filters of `monitor audit list` (pure): who, action, target, a time range, the newest N."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_time(text: str, now: float) -> float:
    """A point in time as epoch seconds: RFC 3339 / ISO 8601 (UTC unless it says), epoch seconds, or an
    age such as `90s`, `30m`, `2h`, `7d`, `1w` (that long before `now`)."""
    text = text.strip()
    ago = _AGO.match(text)
    if ago:
        return now - float(ago.group(1)) * _UNIT_S[ago.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is no time: give 2026-12-01T09:00:00Z, 2026-12-01, epoch seconds or an age like 2h"
        ) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


@dataclass(frozen=True)
class AuditQuery:
    """Which entries to list; None matches everything."""

    who: str | None = None  # `dana` matches `human:dana`, as `--by dana` wrote it
    action: str | None = None
    target: str | None = None
    since: float | None = None  # inclusive
    until: float | None = None  # exclusive
    limit: int | None = None  # the newest N that match, still listed oldest first

    def matches(self, entry: Mapping[str, Any]) -> bool:
        """Whether `entry` passes every filter that is set."""
        who = str(entry.get("who", ""))
        at = entry.get("at")
        if self.who is not None and self.who not in (who, who.partition(":")[2]):
            return False
        if self.action is not None and entry.get("action") != self.action:
            return False
        if self.target is not None and entry.get("target") != self.target:
            return False
        if self.since is not None and not (isinstance(at, (int, float)) and at >= self.since):
            return False
        return self.until is None or (isinstance(at, (int, float)) and at < self.until)

    def select(self, entries: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The matching entries, oldest first, the newest `limit` of them."""
        found = [e for e in entries if self.matches(e)]
        return found[-self.limit :] if self.limit else found
