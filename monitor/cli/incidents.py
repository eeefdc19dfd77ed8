"""`monitor incidents ...` and `monitor models ...`: the commands that act through the worker's API."""

from __future__ import annotations

from typing import Any

import click

from monitor.cli import output as out
from monitor.cli.base import (
    Globals,
    action_body,
    action_options,
    api_options,
    cli,
    client_for,
    pass_globals,
)
from monitor.clients.api_client import path

STATUSES = ("open", "acknowledged", "mitigated", "resolved", "all")


@cli.group("incidents")
def incidents_group() -> None:
    """List, show, acknowledge, mitigate or resolve incidents."""


@incidents_group.command("list")
@click.option(
    "--status", type=click.Choice(STATUSES), default="open", show_default=True, help="Which incidents."
)
@click.option("--model", metavar="MODEL", help="Only this model's incidents.")
@click.option(
    "--limit", type=click.IntRange(1, 1000), metavar="N", help="At most N incidents, newest first (1..1000)."
)
@api_options
@pass_globals
def incidents_list(
    g: Globals, status: str, model: str | None, limit: int | None, url: str | None, as_json: bool
) -> int:
    """The newest incidents, open ones by default."""
    found = client_for(g, url).get(path("incidents", status=status, model=model, limit=limit))["incidents"]
    if as_json:
        out.print_json(found)
    else:
        out.incidents_table(found)
    return 0


@incidents_group.command("show")
@click.argument("incident_id", metavar="ID")
@api_options
@pass_globals
def incidents_show(g: Globals, incident_id: str, url: str | None, as_json: bool) -> int:
    """One incident: what fired, its observation, remediation and timeline."""
    incident = client_for(g, url).get(path("incidents", incident_id))
    if as_json:
        out.print_json(incident)
    else:
        click.echo("\n".join(out.incident_text(incident)))
    return 0


def _incident_action(action: str, done: str, help_text: str) -> None:
    @incidents_group.command(action if action != "acknowledge" else "ack", help=help_text)
    @click.argument("incident_id", metavar="ID")
    @action_options
    @api_options
    @pass_globals
    def command(
        g: Globals, incident_id: str, by: str | None, why: str, url: str | None, as_json: bool
    ) -> int:
        reply = client_for(g, url).post(path("incidents", incident_id, action), action_body(why, by))
        if as_json:
            out.print_json(reply)
        else:
            click.echo(_reply_line(incident_id, reply, done))
        return 0


_incident_action("acknowledge", "acknowledged", "Acknowledge an incident: a person is on it (audited).")
_incident_action("mitigate", "mitigated", "Mark an incident mitigated: the harm is contained (audited).")
_incident_action(
    "resolve", "resolved", "Resolve an incident: the cause is fixed; its level is released (audited)."
)


def _reply_line(target: str, reply: dict[str, Any], done: str) -> str:
    if "ok" not in reply:  # 202: the evaluator has not taken the command yet
        return f"{target}: {reply.get('status', 'queued')} (command {reply.get('command', '-')})"
    state = (reply.get("incident") or {}).get("status", done)
    return f"{target}: {state} (command {reply.get('command', '-')})"


@cli.group("models")
def models_group() -> None:
    """Model levels; escalate or release a manual override."""


@models_group.command("status")
@click.argument("model", required=False)
@api_options
@pass_globals
def models_status(g: Globals, model: str | None, url: str | None, as_json: bool) -> int:
    """Every model's level and open incidents, or one model's in detail."""
    client = client_for(g, url)
    if model is None:
        models = client.pages(path("models"), "models")
        if as_json:
            out.print_json(models)
        else:
            out.table(out.MODEL_HEADERS, out.model_rows(models))
        return 0
    state = client.get(path("models", model))
    if as_json:
        out.print_json(state)
        return 0
    click.echo("\n".join(out.model_text(state)))
    click.echo("open incidents:")
    out.incidents_table(state.get("open_incidents") or [])
    return 0


@models_group.command("escalate")
@click.argument("model")
@click.option(
    "--level", type=click.IntRange(0, 4), required=True, metavar="N", help="The level to hold (0..4)."
)
@action_options
@api_options
@pass_globals
def models_escalate(
    g: Globals, model: str, level: int, by: str | None, why: str, url: str | None, as_json: bool
) -> int:
    """Hold a model at least at level N until released (audited; needs the commander role)."""
    reply = client_for(g, url).post(path("models", model, "escalate"), action_body(why, by, level=level))
    if as_json:
        out.print_json(reply)
    else:
        click.echo(_reply_line(model, reply, f"held at level {level}"))
    return 0


@models_group.command("release")
@click.argument("model")
@action_options
@api_options
@pass_globals
def models_release(g: Globals, model: str, by: str | None, why: str, url: str | None, as_json: bool) -> int:
    """Release a manual override: back to the level its incidents call for (audited; needs admin)."""
    reply = client_for(g, url).post(path("models", model, "release"), action_body(why, by))
    if as_json:
        out.print_json(reply)
    else:
        click.echo(_reply_line(model, reply, "override released"))
    return 0
