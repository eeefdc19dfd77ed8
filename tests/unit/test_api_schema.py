"""The API's pure parts: query validation, the public incident view, the OpenAPI document, the model index."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from multidict import MultiDict

from monitor.api import Refused, _integral, incident_query
from monitor.incidents.incident import Incident
from monitor.openapi import STATUS_FILTERS, openapi_document
from monitor.store.catalog import ModelIndex

ROOT = Path(__file__).resolve().parents[2]
INTERNAL = {"outbox", "reminded_at", "notified_at"}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, ("all", None, 100)),
        ({"status": "open", "limit": "10"}, ("open", None, 10)),
        ({"model": "credit", "limit": "1000"}, ("all", "credit", 1000)),
        ({"limit": "1"}, ("all", None, 1)),
    ],
)
def test_incident_query_accepts(query: dict[str, str], expected: tuple[str, str | None, int]) -> None:
    parsed = incident_query(MultiDict(query))
    assert (parsed.status, parsed.model, parsed.limit) == expected


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([("status", "bogus")], "status must be one of open, acknowledged, mitigated, resolved, all"),
        ([("limit", "0")], "limit must be a whole number from 1 to 1000"),
        ([("limit", "1001")], "limit must be a whole number from 1 to 1000"),
        ([("limit", "-3")], "limit must be a whole number from 1 to 1000"),
        ([("limit", "many")], "limit must be a whole number from 1 to 1000"),
        ([("sort", "asc")], "unknown query parameter `sort` (allowed: status, model, limit)"),
        ([("status", "open"), ("status", "resolved")], "query parameter `status` is given more than once"),
    ],
)
def test_incident_query_refuses(pairs: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(Refused) as refused:
        incident_query(MultiDict(pairs))
    assert (refused.value.status, refused.value.message) == (400, message)


def test_the_public_view_drops_the_bookkeeping_and_keeps_the_rest() -> None:
    incident = Incident(
        id="INC-1",
        category="security",
        rule="weights-tampered",
        model_id="m",
        model_version="3",
        group=None,
        severity="CRITICAL",
        level=4,
        opened_at=1.0,
        updated_at=2.0,
        notified_at=5.0,
        reminded_at=6.0,
        outbox=["opened"],
        summary="s",
    )
    public = incident.public()
    fields = set(type(public).__struct_fields__)
    assert INTERNAL.isdisjoint(fields)
    assert fields | INTERNAL == set(Incident.__struct_fields__)
    assert (public.id, public.level, public.summary, public.severity) == ("INC-1", 4, "s", "CRITICAL")


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


@pytest.mark.parametrize("open_reads", [True, False], ids=["open-reads", "secured-reads"])
def test_the_openapi_document_is_complete_and_self_contained(open_reads: bool) -> None:
    document = openapi_document(open_reads=open_reads)
    schemas = document["components"]["schemas"]
    assert {ref.rsplit("/", 1)[1] for ref in _refs(document)} <= set(schemas)
    assert INTERNAL.isdisjoint(schemas["IncidentView"]["properties"])
    reads = {"/incidents", "/incidents/{incident_id}", "/models", "/models/{model_id}"}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            secured = operation["security"] == [{"bearerAuth": []}]
            assert secured == (method == "post" or (not open_reads and path in reads)), path
            if method == "post":
                assert {"400", "401", "403", "404", "413"} <= set(operation["responses"]), path
                assert all(p["in"] == "path" and p["required"] for p in operation["parameters"]), path
                assert "role" in operation["summary"], path
            elif secured:
                assert "401" in operation["responses"], path
    status, model, limit = document["paths"]["/incidents"]["get"]["parameters"]
    assert (status["name"], status["schema"]["enum"]) == ("status", sorted(STATUS_FILTERS))
    assert (model["name"], model["schema"]) == ("model", {"type": "string"})
    assert (limit["name"], limit["schema"]) == (
        "limit",
        {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
    )
    assert schemas["EscalateBody"]["required"] == ["why", "level"]  # `by` is a deprecated claim
    limit, after = document["paths"]["/models"]["get"]["parameters"]
    assert (limit["name"], limit["schema"]["maximum"], limit["schema"]["default"]) == ("limit", 1000, 1000)
    assert (after["name"], after["schema"]) == ("after", {"type": "string"})
    assert schemas["ModelList"]["properties"]["next"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    assert schemas["ModelList"]["required"] == ["models", "next"]
    assert schemas["ErrorBody"] == {
        "title": "ErrorBody",
        "description": "Every error reply: what went wrong, in a sentence.",
        "type": "object",
        "properties": {"error": {"type": "string"}},
        "required": ["error"],
    }


def test_whole_floats_are_integers_as_json_schema_says() -> None:
    assert _integral({"level": 3.0, "x": [1.5, 2.0], "by": "a"}) == {"level": 3, "x": [1.5, 2], "by": "a"}


def test_the_model_index_unions_every_kind_of_state() -> None:
    index = ModelIndex(
        predictions=frozenset({"a"}),
        access=frozenset({"b", "a"}),
        incidents=frozenset({"c"}),
        control=frozenset({"d", "b"}),
    )
    assert index.all == ["a", "b", "c", "d"]
    assert index.sources("b") == ["access", "control"]
    assert index.sources("nope") == []


def test_the_dashboards_model_variable_lists_every_model_with_a_level() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "aimon.json").read_text())
    [variable] = [v for v in dashboard["templating"]["list"] if v["name"] == "model"]
    assert (
        variable["query"]["query"]
        == variable["definition"]
        == "label_values(aimon_escalation_level, model_id)"
    )
