"""The HTTP API of incident command: read incidents and models; act on them with a bearer token.

Reads are open (they are what /metrics already exposes, in more detail). Every mutation needs the
token (401 without, 403 with a wrong one, compared in constant time), names the person (`by`) and a
reason (`why`), is written to the audit log, and is queued for the evaluator, the only writer of
incidents and control state; the call waits up to a few seconds for the next tick to apply it.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass
from typing import Any

import faust
import msgspec
from faust.web import Request, Response, View

from monitor.audit import AuditLog
from monitor.incidents.commands import Action, CommandQueue, new_command
from monitor.incidents.model import Incident
from monitor.incidents.store import IncidentStore
from monitor.store.redis import RedisStore

APPLY_WAIT_S = 5.0


class ActionBody(msgspec.Struct, forbid_unknown_fields=True):
    """The body of a mutation."""

    by: str
    why: str
    level: int | None = None


@dataclass
class ApiDeps:
    """What the API reads and writes."""

    incidents: IncidentStore
    commands: CommandQueue
    audit: AuditLog
    store: RedisStore
    token: str | None


def _incident_json(incident: Incident) -> dict[str, Any]:
    return msgspec.to_builtins(incident)  # type: ignore[no-any-return]


def register_api(app: faust.App, deps: ApiDeps) -> None:
    """Add the incident and model endpoints to the worker's web server."""

    async def authorize(view: View, request: Request) -> Response | None:
        header = request.headers.get("Authorization", "")
        if deps.token is None:
            return view.json({"error": "mutations are disabled: set MONITOR_API_TOKEN"}, status=403)
        if not header.startswith("Bearer "):
            return view.json({"error": "missing bearer token"}, status=401)
        if not hmac.compare_digest(header[len("Bearer "):].encode(), deps.token.encode()):
            return view.json({"error": "wrong token"}, status=403)
        return None

    async def body_of(view: View, request: Request) -> ActionBody | Response:
        try:
            body = msgspec.json.decode(await request.read(), type=ActionBody)
        except msgspec.DecodeError as exc:
            return view.json({"error": f"bad request body: {exc}"}, status=400)
        if not body.by.strip() or not body.why.strip():
            return view.json({"error": "`by` (who you are) and `why` are required"}, status=400)
        return body

    async def submit(view: View, action: Action, model_id: str, body: ActionBody, **target: Any) -> Response:
        command = new_command(action, model_id, f"human:{body.by}", body.why, **target)
        await deps.audit.append(at=command.at, who=command.who, action=action,
                                target=target.get("incident_id") or model_id, why=body.why,
                                command=command.id, **({"level": body.level} if body.level is not None else {}))
        await deps.commands.submit(command)
        deadline = time.monotonic() + APPLY_WAIT_S
        while time.monotonic() < deadline:
            result = await deps.commands.result(command.id)
            if result is not None:
                payload: dict[str, Any] = {"command": command.id, "ok": result.ok, "error": result.error}
                if "incident_id" in target:
                    incident = await deps.incidents.find(target["incident_id"])
                    payload["incident"] = _incident_json(incident) if incident else None
                return view.json(payload, status=200 if result.ok else 409)
            await asyncio.sleep(0.1)
        return view.json({"command": command.id, "status": "queued: the evaluator has not applied it yet"}, status=202)

    class Incidents(View):
        async def get(self, request: Request) -> Response:
            status = request.query.get("status", "all")
            model = request.query.get("model")
            try:
                limit = min(int(request.query.get("limit", "100")), 1000)
            except ValueError:
                return self.json({"error": "limit must be a whole number"}, status=400)
            found = [
                i for i in await deps.incidents.recent(limit)
                if (status == "all" or i.status == status) and (model is None or i.model_id == model)
            ]
            return self.json({"incidents": [_incident_json(i) for i in found]})

    class OneIncident(View):
        async def get(self, request: Request, incident_id: str) -> Response:
            incident = await deps.incidents.find(incident_id)
            if incident is None:
                return self.json({"error": f"no incident {incident_id}"}, status=404)
            return self.json(_incident_json(incident))

    class IncidentAction(View):
        async def post(self, request: Request, incident_id: str, action: str) -> Response:
            if denied := await authorize(self, request):
                return denied
            if action not in ("acknowledge", "mitigate", "resolve"):
                return self.json({"error": "action must be acknowledge, mitigate or resolve"}, status=404)
            body = await body_of(self, request)
            if not isinstance(body, ActionBody):
                return body
            incident = await deps.incidents.find(incident_id)
            if incident is None:
                return self.json({"error": f"no incident {incident_id}"}, status=404)
            return await submit(self, action, incident.model_id, body, incident_id=incident_id)  # type: ignore[arg-type]

    class Models(View):
        async def get(self, request: Request) -> Response:
            model_ids = await deps.store.model_ids()
            states = await deps.incidents.control_states(model_ids)
            open_by_model = await deps.incidents.open_incidents(model_ids)
            return self.json({"models": [
                {"model_id": m, "level": states[m].level, "override": states[m].override,
                 "seq": states[m].seq, "open_incidents": len(open_by_model[m])}
                for m in model_ids
            ]})

    class OneModel(View):
        async def get(self, request: Request, model_id: str) -> Response:
            if model_id not in await deps.store.model_ids():
                return self.json({"error": f"no model {model_id}"}, status=404)
            state = (await deps.incidents.control_states([model_id]))[model_id]
            incidents = (await deps.incidents.open_incidents([model_id]))[model_id]
            return self.json({
                "model_id": model_id, "level": state.level, "override": state.override, "seq": state.seq,
                "control": msgspec.to_builtins(state.last) if state.last else None,
                "versions": await deps.store.versions(model_id),
                "open_incidents": [_incident_json(i) for i in incidents],
            })

    class ModelAction(View):
        async def post(self, request: Request, model_id: str, action: str) -> Response:
            if denied := await authorize(self, request):
                return denied
            if action not in ("escalate", "release"):
                return self.json({"error": "action must be escalate or release"}, status=404)
            body = await body_of(self, request)
            if not isinstance(body, ActionBody):
                return body
            if action == "escalate" and (body.level is None or not 0 <= body.level <= 4):
                return self.json({"error": "escalate needs `level` between 0 and 4"}, status=400)
            if model_id not in await deps.store.model_ids():
                return self.json({"error": f"no model {model_id}"}, status=404)
            return await submit(self, action, model_id, body, level=body.level if action == "escalate" else None)  # type: ignore[arg-type]

    app.page("/incidents")(Incidents)
    app.page("/incidents/{incident_id}")(OneIncident)
    app.page("/incidents/{incident_id}/{action}")(IncidentAction)
    app.page("/models")(Models)
    app.page("/models/{model_id}")(OneModel)
    app.page("/models/{model_id}/{action}")(ModelAction)
