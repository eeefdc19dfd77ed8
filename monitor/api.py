"""The HTTP API of incident command: read incidents and models; act on them with a bearer token.

Every token names a principal and a role (`monitor.auth`). Reads are open unless configured
otherwise (`MONITOR_API_OPEN_READS`; by default they need a viewer token once named principals are
configured). Every mutation needs a token whose role allows it (401 without a known one, 403 naming
the role it needs), gives a reason (`why`), is written to the audit log under the token's principal
(a `by` in the body is kept only as a claim), and is queued for the evaluator, the only writer of
incidents and control state; the call waits up to a few seconds for the next tick to apply it. A
refusal for the role (403) and one by the evaluator (409) are audited too.

Requests are decoded and replies encoded with the structs of `monitor.openapi`, the same ones
`/openapi.json` is generated from. Every error, including an unknown route or a wrong method, is a
JSON `{"error": "..."}`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import faust
import msgspec
from aiohttp import web
from aiohttp.typedefs import Middleware
from faust.web import Request, Response, View
from faust.web.drivers.aiohttp import Web as AiohttpWeb

from monitor.audit import AuditLog
from monitor.auth import AuthFailure, Principal, Tokens
from monitor.exceptions import ConfigError, MonitorError
from monitor.incidents.commands import Action, CommandQueue, new_command
from monitor.incidents.store import IncidentStore
from monitor.metrics import ApiMetrics
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
    ModelQuery,
    ModelSummary,
    openapi_document,
)
from monitor.settings import Settings
from monitor.store.catalog import model_sources, read_model_index
from monitor.store.redis import TRANSIENT, RedisStore

log = logging.getLogger(__name__)

APPLY_WAIT_S = 5.0
JSON = "application/json"
_encoder = msgspec.json.Encoder()
Body = TypeVar("Body", bound=msgspec.Struct)


class Refused(MonitorError):
    """A request the API answers with an error status and a sentence (turned into JSON once)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


@dataclass
class ApiDeps:
    """What the API reads and writes."""

    incidents: IncidentStore
    commands: CommandQueue
    audit: AuditLog
    store: RedisStore
    tokens: Tokens
    metrics: ApiMetrics
    open_reads: bool = True
    max_body_bytes: int = 65_536


def reply(view: View, value: msgspec.Struct, status: int = 200) -> Response:
    """A JSON reply encoded from one of the API's structs."""
    return view.bytes(_encoder.encode(value), content_type=JSON, status=status)


def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """The one error shape: {"error": "..."}."""
    return web.Response(
        body=_encoder.encode(ErrorBody(message)), status=status, content_type=JSON, headers=headers
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_errors(max_body_bytes: int) -> Middleware:
    """A middleware that bounds request bodies and answers every error as JSON: refusals, aiohttp's
    own 404/405/413, Redis outages and bugs (logged with the traceback, answered without it)."""
    too_large = f"request body over {max_body_bytes} bytes; the API's bodies are a few hundred"

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if request.content_length is not None and request.content_length > max_body_bytes:
                raise Refused(413, too_large)
            # A chunked body has no length up front: aiohttp stops reading it past the limit (413).
            return await handler(request.clone(client_max_size=max_body_bytes))
        except Refused as exc:
            return error(exc.status, exc.message, exc.headers)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            message = {
                404: f"no route {request.path}; the routes are listed at /openapi.json",
                405: f"{request.method} is not allowed on {request.path}",
                413: too_large,
            }.get(exc.status, exc.reason)
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return error(exc.status, message, allow)
        except TRANSIENT as exc:
            log.warning("API %s %s: Redis unavailable: %s", request.method, request.path, exc)
            return error(503, f"Redis unavailable ({type(exc).__name__}); retry shortly")
        except Exception:  # a bug: logged with its traceback, answered without it
            log.exception("API %s %s failed", request.method, request.path)
            return error(500, "internal error; the worker's log has the traceback")

    return middleware


def _no_query(request: Request) -> None:
    if request.query:
        raise Refused(400, f"unknown query parameter `{next(iter(request.query))}`: this endpoint takes none")


def incident_query(query: Any) -> IncidentQuery:
    """The validated query of GET /incidents (a multidict of strings), or Refused(400)."""
    return parse_query(query, IncidentQuery)


Query = TypeVar("Query", IncidentQuery, ModelQuery)


def parse_query(query: Any, kind: type[Query]) -> Query:
    """A validated query (a multidict of strings) of `kind`, or Refused(400) naming the parameter."""
    for name in query:
        if len(query.getall(name)) > 1:
            raise Refused(400, f"query parameter `{name}` is given more than once")
    try:
        return msgspec.convert(dict(query), kind, strict=False)
    except msgspec.ValidationError as exc:
        text = str(exc)
        if "$.status" in text:
            raise Refused(400, f"status must be one of {', '.join(STATUS_FILTERS)}") from None
        if "$.limit" in text:
            raise Refused(400, f"limit must be a whole number from 1 to {LIMIT_MAX}") from None
        if "unknown field" in text:
            name = text.split("`")[1]
            allowed = ", ".join(kind.__struct_fields__)
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


def api_tokens(settings: Settings, *, warn_legacy: bool = True) -> Tokens:
    """The tokens the settings configure (file, MONITOR_API_TOKENS, the deprecated MONITOR_API_TOKEN)."""
    legacy = settings.api_token.get_secret_value() if settings.api_token else None
    return Tokens(settings.api_tokens_file, settings.api_tokens, legacy, warn_legacy=warn_legacy)


def open_reads(settings: Settings, tokens: Tokens) -> bool:
    """Whether GETs need no token: as set, else open unless named principals are configured."""
    wanted = settings.api_open_reads if settings.api_open_reads is not None else not tokens.named
    if not wanted and not tokens.configured:
        raise ConfigError(
            "MONITOR_API_OPEN_READS=false needs tokens to read with: set MONITOR_API_TOKENS_FILE "
            "or MONITOR_API_TOKENS (`monitor tokens add`)"
        )
    return wanted


def _claimed_why(raw: bytes) -> tuple[str, str | None]:
    """The `why` and `by` of a body that may be invalid, for the audit entry of a refusal."""
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return "", None
    if not isinstance(body, dict):
        return "", None
    why, by = body.get("why"), body.get("by")
    return (why[:2000] if isinstance(why, str) else ""), (by[:200] if isinstance(by, str) else None)


def register_api(app: faust.App, deps: ApiDeps) -> None:
    """Add the incident and model endpoints, /openapi.json and the JSON error handling to the web server."""
    if not isinstance(app.web, AiohttpWeb):
        raise ConfigError(f"the API needs Faust's aiohttp web driver, not {type(app.web).__name__}")
    app.web.web_app.middlewares.append(json_errors(deps.max_body_bytes))
    document = _encoder.encode(openapi_document(open_reads=deps.open_reads))

    def refusal(request: Request, exc: AuthFailure) -> Refused:
        deps.metrics.auth_failures.labels(exc.reason).inc()
        log.info("API %s %s refused (%s): %s", request.method, request.url.path, exc.reason, exc.message)
        headers = {"WWW-Authenticate": 'Bearer realm="aimon"'} if exc.status == 401 else None
        return Refused(exc.status, exc.message, headers)

    def may_read(request: Request) -> None:
        if not deps.open_reads:
            try:
                deps.tokens.authorize(request.headers.get("Authorization"), "read", "reading")
            except AuthFailure as exc:
                raise refusal(request, exc) from None

    async def act(request: Request, action: Action, target: str) -> Principal:
        """The principal allowed to `action`; a principal beyond its role is refused (403) and audited."""
        try:
            return deps.tokens.authorize(request.headers.get("Authorization"), action, action)
        except AuthFailure as exc:
            if exc.principal is not None:  # a known principal beyond its role: that is audited
                try:
                    raw = await request.read()
                except web.HTTPException:  # over the size limit: audited without its reason
                    raw = b""
                why, by = _claimed_why(raw)
                await deps.audit.append(
                    at=time.time(),
                    who=exc.principal.who,
                    action=action,
                    target=target,
                    why=why,
                    outcome="refused",
                    status=exc.status,
                    error=exc.message,
                    role=exc.principal.role,
                    **({"claimed_by": by} if by and by != exc.principal.name else {}),
                )
            raise refusal(request, exc) from None

    async def submit(
        view: View, principal: Principal, action: Action, model_id: str, body: ActionBody, **target: Any
    ) -> Response:
        command = new_command(action, model_id, principal.who, body.why, **target)
        level = target.get("level")
        audited = {
            "at": command.at,
            "who": command.who,
            "action": action,
            "target": target.get("incident_id") or model_id,
            "why": body.why,
            "command": command.id,
            **({"level": level} if level is not None else {}),
            # `by` is self-declared: kept as a claim beside the token's principal, never instead of it.
            **({"claimed_by": body.by} if body.by and body.by != principal.name else {}),
        }
        await deps.audit.append(**audited, outcome="submitted")
        await deps.commands.submit(command)
        deadline = time.monotonic() + APPLY_WAIT_S
        while time.monotonic() < deadline:
            result = await deps.commands.result(command.id)
            if result is not None:
                answer = CommandReply(command=command.id, ok=result.ok, error=result.error)
                if "incident_id" in target:
                    incident = await deps.incidents.find(target["incident_id"])
                    answer.incident = incident.public() if incident else None
                if not result.ok:
                    await deps.audit.append(
                        **{**audited, "at": time.time()}, outcome="refused", status=409, error=result.error
                    )
                return reply(view, answer, 200 if result.ok else 409)
            await asyncio.sleep(0.1)
        return reply(view, CommandQueued(command.id, "queued: the evaluator has not applied it yet"), 202)

    class OpenApi(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(document, content_type=JSON)

    class Incidents(View):
        async def get(self, request: Request) -> Response:
            may_read(request)
            query = incident_query(request.query)
            status = None if query.status == "all" else query.status
            found = await deps.incidents.recent(query.limit, status=status, model_id=query.model)
            return reply(self, IncidentList([i.public() for i in found]))

    class OneIncident(View):
        async def get(self, request: Request, incident_id: str) -> Response:
            may_read(request)
            _no_query(request)
            incident = await deps.incidents.find(incident_id)
            if incident is None:
                raise Refused(404, f"no incident {incident_id}")
            return reply(self, incident.public())

    def incident_action(action: Action) -> type[View]:
        class IncidentAction(View):
            async def post(self, request: Request, incident_id: str) -> Response:
                principal = await act(request, action, incident_id)
                _no_query(request)
                body = await _body(request, ActionBody)
                incident = await deps.incidents.find(incident_id)
                if incident is None:
                    raise Refused(404, f"no incident {incident_id}")
                return await submit(self, principal, action, incident.model_id, body, incident_id=incident_id)

        return IncidentAction

    class Models(View):
        async def get(self, request: Request) -> Response:
            may_read(request)
            query = parse_query(request.query, ModelQuery)
            index = await read_model_index(deps.incidents.redis, deps.incidents.keys)
            after = [m for m in index.all if query.after is None or m > query.after]
            model_ids = after[: query.limit]
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
                    ],
                    next=model_ids[-1] if len(after) > query.limit else None,
                ),
            )

    class OneModel(View):
        async def get(self, request: Request, model_id: str) -> Response:
            may_read(request)
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
                principal = await act(request, action, model_id)
                _no_query(request)
                body = await _body(request, EscalateBody if action == "escalate" else ActionBody)
                if not await model_sources(deps.incidents.redis, deps.incidents.keys, model_id):
                    raise Refused(404, f"no model {model_id}")
                level = body.level if isinstance(body, EscalateBody) else None
                return await submit(self, principal, action, model_id, body, level=level)

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
