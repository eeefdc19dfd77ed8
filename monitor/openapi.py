"""The HTTP API's schemas (queries, bodies, replies, errors) and the OpenAPI document built from them.

The handlers decode requests and encode replies with these structs, and `/openapi.json` is generated
from the same structs (msgspec emits their JSON Schema), so the document cannot drift from what the
handlers accept and answer.
"""

from __future__ import annotations

from importlib import metadata
from typing import Annotated, Any, Literal, get_args

import msgspec

from monitor.auth import NEEDS
from monitor.events import ControlMessage
from monitor.incidents.commands import Action
from monitor.incidents.incident import IncidentView
from monitor.store.catalog import ModelSource

StatusFilter = Literal["open", "acknowledged", "mitigated", "resolved", "all"]
STATUS_FILTERS: tuple[str, ...] = get_args(StatusFilter)
LIMIT_MAX = 1000
Limit = Annotated[int, msgspec.Meta(ge=1, le=LIMIT_MAX)]
Level = Annotated[int, msgspec.Meta(ge=0, le=4)]
# A name and a reason must hold something besides blanks: they go into the audit trail. The class
# is spelt out because `\S` differs between Python and the ECMA regexes JSON Schema uses.
NOT_BLANK = "[^ \t\n\r\f\v]"
Person = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=NOT_BLANK)]
Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=2000, pattern=NOT_BLANK)]


class ErrorBody(msgspec.Struct):
    """Every error reply: what went wrong, in a sentence."""

    error: str


class IncidentQuery(msgspec.Struct, forbid_unknown_fields=True):
    """The query of GET /incidents; the filters apply before the limit."""

    status: StatusFilter = "all"
    model: str | None = None
    limit: Limit = 100


class ModelQuery(msgspec.Struct, forbid_unknown_fields=True):
    """The query of GET /models: a page of at most `limit` models by id, those after `after`."""

    limit: Limit = LIMIT_MAX
    after: str | None = None


class ActionBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The body of a mutation: why (audited under the token's principal); `by` is a deprecated claim."""

    why: Reason
    by: Person | None = None


class EscalateBody(ActionBody, forbid_unknown_fields=True, kw_only=True):
    """The body of an escalation: the override level besides who and why."""

    level: Level


class CommandReply(msgspec.Struct, kw_only=True):
    """What the evaluator made of a command; `incident` is the incident after an incident action."""

    command: str
    ok: bool
    error: str = ""
    incident: IncidentView | None = None


class CommandQueued(msgspec.Struct):
    """A command the evaluator has not applied within the wait; it stays queued and will be."""

    command: str
    status: str


class IncidentList(msgspec.Struct):
    """Incidents, newest first."""

    incidents: list[IncidentView]


class ModelSummary(msgspec.Struct, kw_only=True):
    """One model's escalation state; `known_from` names the kinds of state the model has."""

    model_id: str
    level: Level
    override: Level | None
    seq: int
    open_incidents: int
    known_from: list[ModelSource]


class ModelList(msgspec.Struct):
    """Models with any state, by id; `next` is the `after` of the next page, null on the last page."""

    models: list[ModelSummary]
    next: str | None


class ModelDetail(msgspec.Struct, kw_only=True):
    """One model: its escalation state, the last control message, its versions and open incidents."""

    model_id: str
    level: Level
    override: Level | None
    seq: int
    known_from: list[ModelSource]
    control: ControlMessage | None
    versions: dict[str, float]
    open_incidents: list[IncidentView]


class Health(msgspec.Struct):
    """The process is up."""

    status: Literal["ok"]


class Readiness(msgspec.Struct):
    """Whether Kafka and Redis answer (503 while either does not)."""

    ready: bool
    kafka: bool
    redis: bool
    redis_writes_failing: bool
    detail: dict[str, str]


_SCHEMAS = (
    ErrorBody,
    IncidentView,
    IncidentList,
    ActionBody,
    EscalateBody,
    CommandReply,
    CommandQueued,
    ModelSummary,
    ModelList,
    ModelDetail,
    Health,
    Readiness,
)
_REF = "#/components/schemas/{name}"
INCIDENT_ACTIONS: tuple[Action, ...] = ("acknowledge", "mitigate", "resolve")
MODEL_ACTIONS: tuple[Action, ...] = ("escalate", "release")


def _json(name: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(name=name)}}},
    }


def _errors(*codes: int) -> dict[str, Any]:
    meaning = {
        400: "A bad query or body: the error says which parameter or field, and what is allowed.",
        401: "No bearer token, a malformed Authorization header, or an unknown or revoked token.",
        403: "The token's role does not allow this (the error names the role needed and the token's "
        "principal and role; audited), or the worker has no tokens configured.",
        404: "No such incident or model.",
        409: "The incident cannot make this transition (e.g. it is resolved already).",
        413: "The request body is over MONITOR_API_MAX_BODY_BYTES.",
    }
    return {str(code): _json("ErrorBody", meaning[code]) for code in codes}


def _path_parameter(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "minLength": 1},
    }


QUERY_MEANING = {
    "IncidentQuery": {
        "status": "Only incidents with this status (`all`: any).",
        "model": "Only incidents of this model.",
        "limit": f"At most this many incidents (1 to {LIMIT_MAX}), newest first, after the filters.",
    },
    "ModelQuery": {
        "limit": f"At most this many models (1 to {LIMIT_MAX}), by id.",
        "after": "Only models whose id sorts after this one: the `next` of the previous page.",
    },
}


def _query_parameters(kind: type[msgspec.Struct] = IncidentQuery) -> list[dict[str, Any]]:
    """The query parameters of a GET, from the schema of its query struct."""
    _, components = msgspec.json.schema_components([kind], ref_template=_REF)
    properties = components[kind.__name__]["properties"]
    meaning = QUERY_MEANING[kind.__name__]
    parameters = []
    for name, prop in properties.items():
        prop = dict(prop)
        branches = [b for b in prop.pop("anyOf", []) if b.get("type") != "null"]
        if branches:  # `str | None`: the parameter is a string, and absent means None
            prop.update(branches[0])
        if "default" in prop and prop["default"] is None:
            del prop["default"]
        parameters.append(
            {"name": name, "in": "query", "required": False, "description": meaning[name], "schema": prop}
        )
    return parameters


def openapi_document(open_reads: bool = True) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route the worker serves (reads secured unless `open_reads`)."""
    _, components = msgspec.json.schema_components(_SCHEMAS, ref_template=_REF)
    secured: list[dict[str, list[str]]] = [{"bearerAuth": []}]
    reads: list[dict[str, list[str]]] = [] if open_reads else secured
    read_errors = (400,) if open_reads else (400, 401)
    incident_id = _path_parameter("incident_id", "An incident id, e.g. INC-20260101-0a1b2c3d.")
    model_id = _path_parameter("model_id", "A model id.")
    paths: dict[str, Any] = {
        "/incidents": {
            "get": {
                "operationId": "listIncidents",
                "tags": ["incidents"],
                "security": reads,
                "summary": "List incidents, newest first, filtered by status and model before the limit.",
                "parameters": _query_parameters(),
                "responses": {
                    "200": _json("IncidentList", "The matching incidents."),
                    **_errors(*read_errors),
                },
            }
        },
        "/incidents/{incident_id}": {
            "get": {
                "operationId": "getIncident",
                "tags": ["incidents"],
                "security": reads,
                "summary": "One incident, open or not, with its observation, actions and timeline.",
                "parameters": [incident_id],
                "responses": {"200": _json("IncidentView", "The incident."), **_errors(*read_errors, 404)},
            }
        },
        "/models": {
            "get": {
                "operationId": "listModels",
                "tags": ["models"],
                "security": reads,
                "summary": (
                    "Models with any state (predictions, access or registry events, incidents, control), "
                    "by id, a page at a time."
                ),
                "parameters": _query_parameters(ModelQuery),
                "responses": {"200": _json("ModelList", "A page of models."), **_errors(*read_errors)},
            }
        },
        "/models/{model_id}": {
            "get": {
                "operationId": "getModel",
                "tags": ["models"],
                "security": reads,
                "summary": "One model: level, override, last control message, versions and open incidents.",
                "parameters": [model_id],
                "responses": {"200": _json("ModelDetail", "The model."), **_errors(*read_errors, 404)},
            }
        },
    }
    applied = {
        "200": _json("CommandReply", "The evaluator applied the command."),
        "202": _json("CommandQueued", "Queued; the evaluator has not applied it within 5 s."),
    }
    for action in INCIDENT_ACTIONS:
        paths[f"/incidents/{{incident_id}}/{action}"] = {
            "post": {
                "operationId": f"{action}Incident",
                "tags": ["incidents"],
                "security": secured,
                "summary": f"{action.capitalize()} an incident (needs the {NEEDS[action]} role; audited "
                "under the token's principal, with `why`).",
                "parameters": [incident_id],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": _REF.format(name="ActionBody")}}},
                },
                "responses": {
                    **applied,
                    **_errors(400, 401, 403, 404, 413),
                    "409": _json(
                        "CommandReply", "The incident cannot make this transition; `error` says why."
                    ),
                },
            }
        }
    for action, body, summary in (
        (
            "escalate",
            "EscalateBody",
            "Set a manual override level; the model's level is the maximum of it and its open incidents'.",
        ),
        ("release", "ActionBody", "Remove the manual override; a level its open incidents ask for stays."),
    ):
        paths[f"/models/{{model_id}}/{action}"] = {
            "post": {
                "operationId": f"{action}Model",
                "tags": ["models"],
                "security": secured,
                "summary": f"{summary} Needs the {NEEDS[action]} role.",
                "parameters": [model_id],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": _REF.format(name=body)}}},
                },
                "responses": {**applied, **_errors(400, 401, 403, 404, 413)},
            }
        }
    paths["/healthz"] = {
        "get": {
            "operationId": "healthz",
            "tags": ["health"],
            "security": [],
            "summary": "Liveness: the process answers.",
            "responses": {"200": _json("Health", "Alive.")},
        }
    }
    paths["/readyz"] = {
        "get": {
            "operationId": "readyz",
            "tags": ["health"],
            "security": [],
            "summary": "Readiness: Kafka and Redis answer, and writes to Redis succeed.",
            "responses": {
                "200": _json("Readiness", "Ready."),
                "503": _json("Readiness", "Not ready; `detail` says why."),
            },
        }
    }
    paths["/metrics"] = {
        "get": {
            "operationId": "metrics",
            "tags": ["health"],
            "security": [],
            "summary": "Prometheus metrics (text format).",
            "responses": {
                "200": {
                    "description": "The metrics.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    }
    paths["/openapi.json"] = {
        "get": {
            "operationId": "openapi",
            "tags": ["health"],
            "security": [],
            "summary": "This document.",
            "responses": {
                "200": {
                    "description": "The OpenAPI document.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "AI incident-response monitor",
            "version": _version(),
            "description": "Read incidents and models; acknowledge, mitigate and resolve incidents; "
            "escalate and release models. "
            + ("Reads are open; " if open_reads else "Reads need a viewer token; ")
            + "mutations need a bearer token whose role allows them (viewer: read; commander: "
            "acknowledge, mitigate, resolve, escalate; admin: also release). "
            'Every error is JSON: {"error": "..."}.',
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from the worker's MONITOR_API_TOKENS_FILE or MONITOR_API_TOKENS "
                    "(or the deprecated MONITOR_API_TOKEN, an admin); it names a principal and a role.",
                }
            },
        },
    }


def _version() -> str:
    try:
        return metadata.version("aimon")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"
