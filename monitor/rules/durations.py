"""Durations in rules files: "90s", "30m", "24h", "7d", or whole seconds."""

from __future__ import annotations

import re

_DURATION = re.compile(r"(\d+)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | int) -> int:
    """Seconds in a duration: "30m" -> 1800, "7d" -> 604800; an int is seconds; else a ValueError."""
    # bool is an int subclass, and `hold: yes` is surely a mistake rather than one second.
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"a duration cannot be negative (got {text})")
        return text
    if isinstance(text, str):
        match = _DURATION.fullmatch(text)
        if match:
            return int(match.group(1)) * _UNIT_S[match.group(2)]
    raise ValueError(f"must be a duration like 90s, 30m, 24h or 7d (got {text!r})")


def format_duration(seconds: int) -> str:
    """The shortest exact duration text for a number of seconds (3600 -> "1h")."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
