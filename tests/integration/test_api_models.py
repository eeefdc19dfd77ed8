"""Every model with any state is listed, shown, escalated and released through a real worker's API;
incident listings filter before their limit; errors are JSON. Real broker, Redis and `monitor run`."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from monitor.dev.drill import load_scenario, run_drill
from monitor.incidents.incident import Incident
from monitor.incidents.store import IncidentStore
from monitor.settings import Settings
from monitor.store.keys import Keys
from monitor.topics import ensure_topics
from tests.conftest import ROOT, WorkerProcess, eventually, unique_settings

pytestmark = pytest.mark.integration
TOKEN = "models-api-token"
INTERNAL = {"outbox", "reminded_at", "notified_at"}


class Api:
    """A small JSON client of one worker."""

    def __init__(self, worker: WorkerProcess, settings: Settings) -> None:
        self.worker = worker
        self.settings = settings

    async def call(
        self, method: str, path: str, body: object = None, token: str | None = TOKEN
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession() as http:
            async with http.request(
                method,
                self.worker.base + path,
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=15),
            ) as resp:
                assert resp.content_type == ("text/plain" if path == "/metrics" else "application/json"), (
                    await resp.text()
                )
                return resp.status, (await resp.text() if path == "/metrics" else await resp.json())

    async def model(self, model_id: str) -> dict[str, Any]:
        status, body = await self.call("GET", f"/models/{model_id}")
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    async def listed(self, model_id: str) -> dict[str, Any] | None:
        status, body = await self.call("GET", "/models")
        assert status == 200, body
        return next((m for m in body["models"] if m["model_id"] == model_id), None)


@pytest.fixture(scope="module")
async def api(services: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Api]:
    settings = unique_settings(*services, api_token=TOKEN, evidence_dir=tmp_path_factory.mktemp("evidence"))
    await ensure_topics(settings)
    worker = WorkerProcess(settings, tmp_path_factory.mktemp("models-api") / "worker.log")
    worker.start()
    try:
        await worker.wait_ready()
        yield Api(worker, settings)
    finally:
        worker.stop()


async def test_a_model_known_only_from_the_registry_is_listed_shown_escalated_and_released(api: Api) -> None:
    report = await run_drill(load_scenario(ROOT / "drills" / "tampered-weights.yaml"), api.settings)
    assert report.passed, report.text()
    model_id = report.model_id

    listed = await api.listed(model_id)
    assert listed is not None, "a registry-only model is missing from GET /models"
    assert listed["level"] == 4 and listed["override"] is None and listed["open_incidents"] == 1
    assert "predictions" not in listed["known_from"] and "access" in listed["known_from"]
    shown = await api.model(model_id)
    assert (
        shown["level"] == 4
        and shown["control"]["mode"] == "paused"
        and shown["control"]["rollback_to"] == "2.0"
    )
    [incident] = shown["open_incidents"]
    assert (incident["rule"], incident["severity"], incident["status"]) == (
        "weights-tampered",
        "CRITICAL",
        "open",
    )
    assert INTERNAL.isdisjoint(incident)
    assert await api.worker.metric("aimon_escalation_level", model_id=model_id) == 4

    body = {"by": "dana", "why": "hold it while we check the artifact"}
    status, reply = await api.call("POST", f"/models/{model_id}/escalate", {**body, "level": 3})
    assert (status, reply["ok"]) == (200, True), reply
    shown = await api.model(model_id)
    assert (shown["level"], shown["override"]) == (4, 3)
    status, reply = await api.call("POST", f"/models/{model_id}/release", body)
    assert (status, reply["ok"]) == (200, True), reply
    shown = await api.model(model_id)
    # The override is gone; the open CRITICAL incident still holds level 4: the monitor never
    # lowers a CRITICAL or security incident's level on its own, and a release is not a resolve.
    assert (shown["level"], shown["override"], shown["seq"]) == (4, None, 1)
    assert len(shown["open_incidents"]) == 1


async def test_a_model_known_only_from_access_logs_can_be_escalated_and_released(api: Api) -> None:
    model_id = f"access-only-{uuid.uuid4().hex[:6]}"
    producer = AIOKafkaProducer(bootstrap_servers=api.settings.kafka_bootstrap)
    await producer.start()
    try:
        # A login: the policy lets anyone log in, and a new model is still learning its sources,
        # so this event gives the model state without opening an incident.
        event = {
            "ts": time.time(),
            "principal": "ml-dana",
            "action": "login",
            "resource_type": "endpoint",
            "resource": f"https://models/{model_id}",
            "model_id": model_id,
            "outcome": "allowed",
            "source_ip": "10.0.0.5",
            "auth_method": "sso",
        }
        await producer.send_and_wait(api.settings.topics.access_logs, orjson.dumps(event), key=b"ml-dana")
    finally:
        await producer.stop()

    async def listed() -> bool:
        return await api.listed(model_id) is not None

    await eventually(listed, timeout_s=30)
    shown = await api.model(model_id)
    assert (shown["level"], shown["override"], shown["known_from"], shown["open_incidents"]) == (
        0,
        None,
        ["access"],
        [],
    )

    body = {"by": "dana", "why": "audit week"}
    status, reply = await api.call("POST", f"/models/{model_id}/escalate", {**body, "level": 3})
    assert (status, reply["ok"]) == (200, True), reply
    shown = await api.model(model_id)
    assert (shown["level"], shown["override"], shown["seq"], shown["open_incidents"]) == (3, 3, 1, []), [
        i["summary"] for i in shown["open_incidents"]
    ]
    assert shown["control"]["reason"] == "level 3 (near-total oversight): manual override"
    assert shown["known_from"] == ["access", "control"]
    assert await api.worker.metric("aimon_escalation_level", model_id=model_id) == 3
    status, reply = await api.call("POST", f"/models/{model_id}/release", body)
    assert (status, reply["ok"]) == (200, True), reply
    shown = await api.model(model_id)
    assert (shown["level"], shown["override"], shown["seq"]) == (0, None, 2)


async def test_unknown_models_and_bodies_are_refused_with_json(api: Api) -> None:
    assert await api.call("GET", "/models/no-such-model") == (404, {"error": "no model no-such-model"})
    body = {"by": "dana", "why": "x"}
    assert (await api.call("POST", "/models/no-such-model/release", body))[0] == 404
    assert (await api.call("POST", "/models/no-such-model/release", body, token=None)) == (
        401,
        {"error": "missing bearer token"},
    )
    assert (await api.call("POST", "/models/no-such-model/release", body, token="wrong")) == (
        401,
        {"error": "unknown or revoked token"},
    )
    status, reply = await api.call("POST", "/models/no-such-model/escalate", body)
    assert status == 400 and "level" in reply["error"]
    status, reply = await api.call("POST", "/models/no-such-model/escalate", {**body, "level": 5})
    assert status == 400 and "<= 4" in reply["error"]
    status, reply = await api.call("POST", "/models/no-such-model/release", {"by": "  ", "why": "x"})
    assert status == 400 and "$.by" in reply["error"]
    assert await api.call("GET", "/nowhere") == (
        404,
        {"error": "no route /nowhere; the routes are listed at /openapi.json"},
    )
    assert await api.call("DELETE", "/models") == (405, {"error": "DELETE is not allowed on /models"})
    assert await api.call("POST", "/models/m/retire", body) == (
        404,
        {"error": "no route /models/m/retire; the routes are listed at /openapi.json"},
    )


def incident(model_id: str, status: str, opened_at: float, group: str | None = None) -> Incident:
    return Incident(
        id=f"INC-T-{uuid.uuid4().hex[:8]}",
        category="availability",
        rule="error-rate",
        model_id=model_id,
        model_version="1",
        group=group,
        severity="HIGH",
        level=2,
        status=status,  # type: ignore[arg-type]
        opened_at=opened_at,
        updated_at=opened_at,
        reminded_at=opened_at,
        outbox=["opened"],
    )


async def test_incident_filters_apply_before_the_limit_and_a_model_with_only_incidents_is_listed(
    api: Api,
) -> None:
    model_id = f"incidents-only-{uuid.uuid4().hex[:6]}"
    now = time.time()
    old_open = incident(model_id, "open", now - 7200)
    newer = [incident(model_id, "resolved", now - 3600 + i, group=f"g{i}") for i in range(150)]
    redis = Redis.from_url(api.settings.redis_url)
    try:
        await IncidentStore(redis, Keys(api.settings.key_prefix)).save([old_open, *newer])
    finally:
        await redis.aclose()

    status, body = await api.call("GET", f"/incidents?status=open&limit=10&model={model_id}")
    assert status == 200 and [i["id"] for i in body["incidents"]] == [old_open.id]
    status, body = await api.call("GET", "/incidents?status=open&limit=10")
    assert status == 200 and old_open.id in [i["id"] for i in body["incidents"]]
    status, body = await api.call("GET", f"/incidents?status=resolved&limit=3&model={model_id}")
    assert [i["id"] for i in body["incidents"]] == [i.id for i in reversed(newer[-3:])]
    assert all(INTERNAL.isdisjoint(i) for i in body["incidents"])
    status, shown = await api.call("GET", f"/incidents/{old_open.id}")
    assert status == 200 and shown["id"] == old_open.id and INTERNAL.isdisjoint(shown)

    listed = await api.listed(model_id)
    assert listed is not None and listed["known_from"] == ["incidents"] and listed["open_incidents"] == 1

    for query, message in (
        ("status=bogus", "status must be one of open, acknowledged, mitigated, resolved, all"),
        ("limit=0", "limit must be a whole number from 1 to 1000"),
        ("limit=1001", "limit must be a whole number from 1 to 1000"),
        ("limit=ten", "limit must be a whole number from 1 to 1000"),
        ("colour=red", "unknown query parameter `colour` (allowed: status, model, limit)"),
        ("limit=5&limit=6", "query parameter `limit` is given more than once"),
    ):
        assert await api.call("GET", f"/incidents?{query}") == (400, {"error": message}), query
    assert await api.call("GET", "/models?page=5") == (
        400,
        {"error": "unknown query parameter `page` (allowed: limit, after)"},
    )


async def test_the_openapi_document_lists_every_route(api: Api) -> None:
    status, document = await api.call("GET", "/openapi.json")
    assert status == 200 and document["openapi"] == "3.1.0"
    assert set(document["paths"]) == {
        "/incidents",
        "/incidents/{incident_id}",
        "/incidents/{incident_id}/acknowledge",
        "/incidents/{incident_id}/mitigate",
        "/incidents/{incident_id}/resolve",
        "/models",
        "/models/{model_id}",
        "/models/{model_id}/escalate",
        "/models/{model_id}/release",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    }
    assert INTERNAL.isdisjoint(document["components"]["schemas"]["IncidentView"]["properties"])
    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert "principal and a role" in scheme["description"]
    assert document["paths"]["/models"]["get"]["security"] == []  # the legacy token only: reads stay open
