"""What the `monitor` command prints: tables (Rich on a terminal, plain columns otherwise), values, JSON."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import click

EMPTY = "(none)"
MISSING = "-"
SEVERITY_STYLE = {"CRITICAL": "bold white on red", "HIGH": "bold red", "MEDIUM": "yellow", "LOW": "cyan"}
STATUS_STYLE = {"open": "bold", "acknowledged": "yellow", "mitigated": "cyan", "resolved": "green"}


def duration(seconds: float | None) -> str:
    """A duration as a person writes it: 86400 -> "24h", 1800 -> "30m", 90 -> "1m30s"; a week -> "7d"."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return MISSING
    if seconds != int(seconds):
        return f"{seconds:.3g}s"
    whole = int(seconds)
    if whole == 0:
        return "0s"
    # Days only from two on: "24h" reads better than "1d" for the common one-day windows.
    if whole % 86400 == 0 and whole >= 2 * 86400:
        return f"{whole // 86400}d"
    parts = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return "".join(parts)


def when(ts: float | None, *, seconds: bool = False) -> str:
    """A UTC timestamp, or "-"."""
    if ts is None:
        return MISSING
    return time.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M", time.gmtime(ts))


def value(v: Any, key: str = "") -> str:
    """One value of an API record as text: None is "-", `*_s` fields are durations, floats short."""
    if v is None or v == "":
        return MISSING
    if isinstance(v, bool):
        return "yes" if v else "no"
    if key.endswith("_s") and isinstance(v, (int, float)):
        return duration(v)
    if key.endswith("_at") and isinstance(v, (int, float)):
        return when(v, seconds=True)
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_nested(x, k)}" for k, x in sorted(v.items())) or MISSING
    if isinstance(v, (list, tuple)):
        return ", ".join(value(x) for x in v) or MISSING
    return str(v)


def _nested(v: Any, key: str) -> str:
    # Inside a `k=v, ...` line a list needs its brackets, or its commas read as the next field's.
    return f"[{value(v, key)}]" if isinstance(v, (list, tuple)) else value(v, key)


def use_rich() -> bool:
    """Rich tables and colours only on a terminal (pipes and tests get plain text); NO_COLOR is honoured."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def print_json(data: Any) -> None:
    """Machine-readable output."""
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, styles: dict[int, dict[str, str]] | None = None
) -> None:
    """Rows under headers; "(none)" when there are none. `styles`: column -> cell text -> Rich style."""
    if not rows:
        click.echo(EMPTY)
        return
    if use_rich():
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        grid = Table(box=None, header_style="bold", pad_edge=False)
        for header in headers:
            grid.add_column(header, no_wrap=True)
        for row in rows:
            # Text objects, not markup: an id or a group with "[" in it is shown as it is.
            grid.add_row(
                *(Text(cell, style=(styles or {}).get(i, {}).get(cell, "")) for i, cell in enumerate(row))
            )
        Console().print(grid)
        return
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def styled(text: str, style: str | None) -> str:
    """`text` in a Rich style on a terminal, as is elsewhere (for single lines)."""
    if not style or not use_rich():
        return text
    from rich.console import Console
    from rich.text import Text

    console = Console(force_terminal=True)
    with console.capture() as capture:
        console.print(Text(text, style=style), end="")
    return capture.get()


INCIDENT_HEADERS = ("ID", "STATUS", "SEVERITY", "LEVEL", "MODEL", "RULE", "GROUP", "OPENED (UTC)")


def incident_rows(incidents: Sequence[dict[str, Any]]) -> list[list[str]]:
    """One row per incident, under INCIDENT_HEADERS."""
    return [
        [
            i["id"],
            i["status"],
            i["severity"],
            str(i["level"]),
            i["model_id"],
            i["rule"],
            value(i.get("group")),
            when(i.get("opened_at")),
        ]
        for i in incidents
    ]


def incidents_table(incidents: Sequence[dict[str, Any]]) -> None:
    """The incident list, severities coloured on a terminal."""
    table(INCIDENT_HEADERS, incident_rows(incidents), styles={1: STATUS_STYLE, 2: SEVERITY_STYLE})


def incident_text(i: dict[str, Any]) -> list[str]:
    """An incident as lines a person reads."""
    severity = styled(i["severity"], SEVERITY_STYLE.get(i["severity"]))
    lines = [
        f"{i['id']}  {severity}  {i['status']}  level {i['level']}",
        f"  {i.get('summary') or i['rule']}",
        f"  model     {i['model_id']} {value(i.get('model_version'))}",
        f"  rule      {i.get('category', MISSING)}/{i['rule']}  group {value(i.get('group'))}",
        f"  opened    {when(i.get('opened_at'), seconds=True)} UTC   "
        f"updated {when(i.get('updated_at'), seconds=True)} UTC",
    ]
    if i.get("resolved_at") is not None:
        lines.append(f"  resolved  {when(i['resolved_at'], seconds=True)} UTC")
    obs = i.get("observation") or {}
    if obs:
        lines.append("  observation")
        width = max(len(key) for key in obs)
        lines += [f"    {key:<{width}}  {value(obs[key], key)}" for key in sorted(obs)]
    for key, label in (("revoke", "revoke"), ("rollback_to", "rollback to"), ("evidence_ref", "evidence")):
        if i.get(key):
            lines.append(f"  {label:<9} {value(i[key])}")
    if i.get("remediation"):
        lines.append("  remediation")
        lines += [f"    - {step}" for step in i["remediation"]]
    if i.get("timeline"):
        lines.append("  timeline (UTC)")
        for entry in i["timeline"]:
            extra = ", ".join(f"{k}={value(v, k)}" for k, v in entry.items() if k not in ("at", "what"))
            lines.append(
                f"    {when(entry.get('at'), seconds=True)}  {entry.get('what', MISSING)}  {extra}".rstrip()
            )
    return lines


MODEL_HEADERS = ("MODEL", "LEVEL", "OVERRIDE", "SEQ", "OPEN INCIDENTS")


def model_rows(models: Sequence[dict[str, Any]]) -> list[list[str]]:
    """One row per model, under MODEL_HEADERS."""
    return [
        [
            m["model_id"],
            str(m["level"]),
            value(m.get("override")),
            value(m.get("seq")),
            value(m.get("open_incidents")),
        ]
        for m in models
    ]


def model_text(m: dict[str, Any]) -> list[str]:
    """One model's state as lines."""
    lines = [
        f"{m['model_id']}: level {m['level']}  override {value(m.get('override'))}  seq {value(m.get('seq'))}"
    ]
    control = m.get("control") or {}
    if control:
        lines.append(f"  control  {value(control.get('mode'))}: {value(control.get('reason'))}")
    versions = m.get("versions") or {}
    for version, newest in sorted(versions.items(), key=lambda item: item[1]):
        lines.append(f"  version  {version}  (traffic up to {when(newest)} UTC)")
    return lines
