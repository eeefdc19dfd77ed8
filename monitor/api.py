"""The HTTP API of incident command: read incidents and models; act on them with a bearer token.

Reads are open (they are what /metrics already exposes, in more detail). Every mutation needs the
token (401 without, 403 with a wrong one, compared in constant time), names the person (`by`) and a
reason (`why`), is written to the audit log, and is queued for the evaluator, the only writer of
incidents and control state; the call waits up to a few seconds for the next tick to apply it.

Requests are decoded and replies encoded with the structs of `monitor.openapi`, the same ones
`/openapi.json` is generated from. Every error, including an unknown route or a wrong method, is a
JSON `{"error": "..."}`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import faust
import msgspec
from aiohttp import web
from faust.web import Request, Response, View
from faust.web.drivers.aiohttp import Web as AiohttpWeb

from monitor.audit import AuditLog
from monitor.exceptions import ConfigError, MonitorError
from monitor.incidents.commands import Action, CommandQueue, new_command
from monitor.incidents.store import IncidentStore
from monitor.openapi import (
    INCIDENT_ACTIONS,
    LIMIT_MAX,
    MODEL_ACTIONS,
    STATUS_FILTERS,
    ActionBody,
    CommandQueued,
    CommandReply,
    ErrorBody,
    EscalateBody,
    IncidentList,
    IncidentQuery,
    ModelDetail,
    ModelList,
    ModelSummary,
    openapi_document,
)
from monitor.store.catalog import model_sources, read_model_index
from monitor.store.redis import TRANSIENT, RedisStore

log = logging.getLogger(__name__)

APPLY_WAIT_S = 5.0
JSON = "application/json"
_encoder = msgspec.json.Encoder()
Body = TypeVar("Body", bound=msgspec.Struct)


class Refused(MonitorError):
    """A request the API answers with an error status and a sentence (turned into JSON once)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class ApiDeps:
    """What the API reads and writes."""

    incidents: IncidentStore
    commands: CommandQueue
    audit: AuditLog
    store: RedisStore
    token: str | None


def reply(view: View, value: msgspec.Struct, status: int = 200) -> Response:
    """A JSON reply encoded from one of the API's structs."""
    return view.bytes(_encoder.encode(value), content_type=JSON, status=status)


def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """The one error shape: {"error": "..."}."""
    return web.Response(
        body=_encoder.encode(ErrorBody(message)), status=status, content_type=JSON, headers=headers
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as JSON: refusals, aiohttp's own 404/405/413, Redis outages and bugs."""
    try:
        return await handler(request)
    except Refused as exc:
        return error(exc.status, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {
            404: f"no route {request.path}; the routes are listed at /openapi.json",
            405: f"{request.method} is not allowed on {request.path}",
        }.get(exc.status, exc.reason)
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error(exc.status, message, allow)
    except TRANSIENT as exc:
        log.warning("API %s %s: Redis unavailable: %s", request.method, request.path, exc)
        return error(503, f"Redis unavailable ({type(exc).__name__}); retry shortly")
    except Exception:  # a bug: logged with its traceback, answered without it
        log.exception("API %s %s failed", request.method, request.path)
        return error(500, "internal error; the worker's log has the traceback")


def _no_query(request: Request) -> None:
    if request.query:
        raise Refused(400, f"unknown query parameter `{next(iter(request.query))}`: this endpoint takes none")


def incident_query(query: Any) -> IncidentQuery:
    """The validated query of GET /incidents (a multidict of strings), or Refused(400)."""
    for name in query:
        if len(query.getall(name)) > 1:
            raise Refused(400, f"query parameter `{name}` is given more than once")
    try:
        return msgspec.convert(dict(query), IncidentQuery, strict=False)
    except msgspec.ValidationError as exc:
        text = str(exc)
        if "$.status" in text:
            raise Refused(400, f"status must be one of {', '.join(STATUS_FILTERS)}") from None
        if "$.limit" in text:
            raise Refused(400, f"limit must be a whole number from 1 to {LIMIT_MAX}") from None
        if "unknown field" in text:
            name = text.split("`")[1]
            allowed = ", ".join(IncidentQuery.__struct_fields__)
            raise Refused(400, f"unknown query parameter `{name}` (allowed: {allowed})") from None
        raise Refused(400, f"bad query: {text}") from None


async def _body(request: Request, kind: type[Body]) -> Body:
    try:
        return msgspec.convert(_integral(msgspec.json.decode(await request.read())), kind)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise Refused(400, f"bad request body: {exc}") from None


def _integral(value: Any) -> Any:
    """JSON Schema counts 3.0 as an integer; msgspec does not: whole floats become ints."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def register_api(app: faust.App, deps: ApiDeps) -> None:
    """Add the incident and model endpoints, /openapi.json and the JSON error handling to the web server."""
    if not isinstance(app.web, AiohttpWeb):
        raise ConfigError(f"the API needs Faust's aiohttp web driver, not {type(app.web).__name__}")
    app.web.web_app.middlewares.append(json_errors)
    document = _encoder.encode(openapi_document())

    def authorize(request: Request) -> None:
        if deps.token is None:
            raise Refused(403, "mutations are disabled: set MONITOR_API_TOKEN")
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not credentials:
            raise Refused(401, "missing bearer token")
        if not hmac.compare_digest(credentials.encode(), deps.token.encode()):
            raise Refused(403, "wrong token")

    async def submit(view: View, action: Action, model_id: str, body: ActionBody, **target: Any) -> Response:
        command = new_command(action, model_id, f"human:{body.by}", body.why, **target)
        level = target.get("level")
        await deps.audit.append(
            at=command.at,
            who=command.who,
            action=action,
            target=target.get("incident_id") or model_id,
            why=body.why,
            command=command.id,
            **({"level": level} if level is not None else {}),
        )
        await deps.commands.submit(command)
        deadline = time.monotonic() + APPLY_WAIT_S
        while time.monotonic() < deadline:
            result = await deps.commands.result(command.id)
            if result is not None:
                answer = CommandReply(command=command.id, ok=result.ok, error=result.error)
                if "incident_id" in target:
                    incident = await deps.incidents.find(target["incident_id"])
                    answer.incident = incident.public() if incident else None
                return reply(view, answer, 200 if result.ok else 409)
            await asyncio.sleep(0.1)
        return reply(view, CommandQueued(command.id, "queued: the evaluator has not applied it yet"), 202)

    class OpenApi(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(document, content_type=JSON)

    class Incidents(View):
        async def get(self, request: Request) -> Response:
            query = incident_query(request.query)
            status = None if query.status == "all" else query.status
            found = await deps.incidents.recent(query.limit, status=status, model_id=query.model)
            return reply(self, IncidentList([i.public() for i in found]))

    class OneIncident(View):
        async def get(self, request: Request, incident_id: str) -> Response:
            _no_query(request)
            incident = await deps.incidents.find(incident_id)
            if incident is None:
                raise Refused(404, f"no incident {incident_id}")
            return reply(self, incident.public())

    def incident_action(action: Action) -> type[View]:
        class IncidentAction(View):
            async def post(self, request: Request, incident_id: str) -> Response:
                authorize(request)
                _no_query(request)
                body = await _body(request, ActionBody)
                incident = await deps.incidents.find(incident_id)
                if incident is None:
                    raise Refused(404, f"no incident {incident_id}")
                return await submit(self, action, incident.model_id, body, incident_id=incident_id)

        return IncidentAction

    class Models(View):
        async def get(self, request: Request) -> Response:
            _no_query(request)
            index = await read_model_index(deps.incidents.redis, deps.incidents.keys)
            model_ids = index.all
            states = await deps.incidents.control_states(model_ids)
            open_by_model = await deps.incidents.open_incidents(model_ids)
            return reply(
                self,
                ModelList(
                    [
                        ModelSummary(
                            model_id=m,
                            level=states[m].level,
                            override=states[m].override,
                            seq=states[m].seq,
                            open_incidents=len(open_by_model[m]),
                            known_from=index.sources(m),
                        )
                        for m in model_ids
                    ]
                ),
            )

    class OneModel(View):
        async def get(self, request: Request, model_id: str) -> Response:
            _no_query(request)
            sources = await model_sources(deps.incidents.redis, deps.incidents.keys, model_id)
            if not sources:
                raise Refused(404, f"no model {model_id}")
            state = (await deps.incidents.control_states([model_id]))[model_id]
            incidents = (await deps.incidents.open_incidents([model_id]))[model_id]
            return reply(
                self,
                ModelDetail(
                    model_id=model_id,
                    level=state.level,
                    override=state.override,
                    seq=state.seq,
                    known_from=sources,
                    control=state.last,
                    versions=await deps.store.versions(model_id),
                    open_incidents=[i.public() for i in incidents],
                ),
            )

    def model_action(action: Action) -> type[View]:
        class ModelAction(View):
            async def post(self, request: Request, model_id: str) -> Response:
                authorize(request)
                _no_query(request)
                body = await _body(request, EscalateBody if action == "escalate" else ActionBody)
                if not await model_sources(deps.incidents.redis, deps.incidents.keys, model_id):
                    raise Refused(404, f"no model {model_id}")
                level = body.level if isinstance(body, EscalateBody) else None
                return await submit(self, action, model_id, body, level=level)

        return ModelAction

    app.page("/openapi.json")(OpenApi)
    app.page("/incidents")(Incidents)
    app.page("/incidents/{incident_id}")(OneIncident)
    for incident_verb in INCIDENT_ACTIONS:
        app.page(f"/incidents/{{incident_id}}/{incident_verb}", name=f"incident_{incident_verb}")(
            incident_action(incident_verb)
        )
    app.page("/models")(Models)
    app.page("/models/{model_id}")(OneModel)
    for model_verb in MODEL_ACTIONS:
        app.page(f"/models/{{model_id}}/{model_verb}", name=f"model_{model_verb}")(model_action(model_verb))
