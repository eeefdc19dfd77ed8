"""Offline checks and drills: `evidence verify`, `drill` (`audit` is in monitor/cli/audit.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from monitor.cli import output as out
from monitor.cli.base import (
    Globals,
    api_options,
    cli,
    json_option,
    pass_globals,
    web_url,
)

# ---------------------------------------------------------------- offline checks


@cli.group("evidence", short_help="Incident evidence bundles.")
def evidence_group() -> None:
    """Incident evidence bundles (files listed with their SHA-256 in a manifest)."""


@evidence_group.command("verify")
@click.argument("incident_id", metavar="ID")
@click.option(
    "--dir",
    "evidence_dir",
    type=click.Path(path_type=Path),
    help="Evidence folder (env MONITOR_EVIDENCE_DIR).",
)
@json_option
@pass_globals
def evidence_verify(g: Globals, incident_id: str, evidence_dir: Path | None, as_json: bool) -> int:
    """Check an incident's evidence files against their manifest: exit 1 if tampered, 2 if there is none."""
    from monitor.incidents.evidence import EvidenceNotFound, verify_evidence

    root = g.settings(evidence_dir=evidence_dir).evidence_dir
    try:
        problems = verify_evidence(root, incident_id)
    except EvidenceNotFound as exc:
        click.echo(f"monitor: {exc}", err=True)
        return 2
    if as_json:
        out.print_json(
            {"id": incident_id, "dir": str(root / incident_id), "ok": not problems, "problems": problems}
        )
    elif problems:
        for problem in problems:
            click.echo(f"TAMPERED {incident_id}: {problem}", err=True)
    else:
        click.echo(f"evidence of {incident_id} intact ({root / incident_id})")
    return 1 if problems else 0


# ---------------------------------------------------------------- drills


@cli.command("drill", short_help="Run drill scenarios against a running worker.")
@click.argument("scenarios", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@api_options
@pass_globals
def cmd_drill(g: Globals, scenarios: tuple[Path, ...], url: str | None, as_json: bool) -> int:
    """Run drill scenarios (files or folders, see drills/) against a running worker; exit 1 if any fails."""
    from monitor.dev.drill import load_scenario, run_drill

    settings = g.settings()
    paths = [p for arg in scenarios for p in (sorted(arg.glob("*.yaml")) if arg.is_dir() else [arg])]
    loaded = [load_scenario(path) for path in paths]
    worker_url = url or web_url(settings)
    failed, reports = 0, []
    for scenario in loaded:
        report = asyncio.run(
            run_drill(
                scenario, settings, worker_url=worker_url, progress=lambda line: click.echo(line, err=True)
            )
        )
        failed += not report.passed
        reports.append(report)
        if not as_json:
            click.echo(report.text())
    if as_json:
        out.print_json(
            [
                {
                    "name": r.scenario.name,
                    "model_id": r.model_id,
                    "passed": r.passed,
                    "outcomes": [
                        {
                            "rule": o.expectation.rule,
                            "passed": o.passed,
                            "detail": o.detail,
                            "delay_s": o.delay_s,
                        }
                        for o in r.outcomes
                    ],
                }
                for r in reports
            ]
        )
    else:
        click.echo(f"{len(loaded) - failed} passed, {failed} failed")
    return 1 if failed else 0
