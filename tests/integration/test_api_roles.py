"""Principals and roles through a real worker's API: tokens from a file, each naming its principal and
role; a request beyond its role is refused (403, naming the role) and audited; the audit records the
token's principal; the file rotates without a restart; bodies are bounded; no reply carries a
traceback; refusals are counted on /metrics. Real broker, Redis and `monitor run`."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from monitor.audit import AuditLog
from monitor.auth import entry_line, hash_token
from monitor.incidents.store import IncidentStore
from monitor.settings import Settings
from monitor.store.keys import Keys
from monitor.topics import ensure_topics
from tests.conftest import WorkerProcess, eventually, seed_incident, unique_settings

pytestmark = pytest.mark.integration
ALICE, BOB, CAROL = "aimon_alice-commander", "aimon_bob-viewer", "aimon_carol-admin"
MODEL = "roles-model"
MAX_BODY = 4096
FAILURES = "aimon_api_auth_failures_total"


def write_tokens(path: Path, *entries: tuple[str, str, str]) -> None:
    """Replace the tokens file atomically, as an operator's tooling (or `monitor tokens add`) does."""
    temp = path.with_suffix(".new")
    temp.write_text(
        "tokens:\n" + "".join(f"{entry_line(n, r, hash_token(t))}\n" for n, r, t in entries),  # type: ignore[arg-type]
        encoding="utf-8",
    )
    os.replace(temp, path)


@dataclass
class Api:
    worker: WorkerProcess
    settings: Settings
    tokens: Path

    async def call(
        self, method: str, path: str, token: str | None, body: Any = None, **options: Any
    ) -> tuple[int, Any, str]:
        """Status, decoded JSON body and content type."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(options.pop("headers", {}))
        async with aiohttp.ClientSession() as http:
            async with http.request(
                method,
                self.worker.base + path,
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=15),
                **options,
            ) as resp:
                text = await resp.text()
                return (
                    resp.status,
                    orjson.loads(text) if resp.content_type == "application/json" else text,
                    (resp.content_type),
                )

    async def audit(self) -> list[dict[str, Any]]:
        redis = Redis.from_url(self.settings.redis_url)
        try:
            return await AuditLog(
                redis, Keys(self.settings.key_prefix), secret=b"entries-are-read-not-sealed"
            ).entries()
        finally:
            await redis.aclose()

    async def failures(self, reason: str) -> float:
        return await self.worker.metric(FAILURES, reason=reason)


@pytest.fixture(scope="module")
async def api(services: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Api]:
    folder = tmp_path_factory.mktemp("roles")
    tokens = folder / "tokens.yaml"
    write_tokens(tokens, ("alice", "commander", ALICE), ("bob", "viewer", BOB), ("carol", "admin", CAROL))
    settings = unique_settings(
        *services,
        api_tokens_file=tokens,
        api_max_body_bytes=MAX_BODY,
        evidence_dir=tmp_path_factory.mktemp("evidence"),
    )
    await ensure_topics(settings)
    worker = WorkerProcess(settings, folder / "worker.log")
    worker.start()
    try:
        await worker.wait_ready()
        yield Api(worker, settings, tokens)
    finally:
        worker.stop()


async def test_a_viewer_reads_but_is_refused_an_acknowledge_naming_the_role_and_audited(api: Api) -> None:
    incident = await seed_incident(api.settings, "INC-ROLES-0001", MODEL)
    before = await api.failures("beyond_role")
    status, body, _ = await api.call("GET", f"/incidents/{incident.id}", BOB)
    assert (status, body["id"]) == (200, incident.id)

    status, body, _ = await api.call(
        "POST", f"/incidents/{incident.id}/acknowledge", BOB, {"why": "I want to help", "by": "alice"}
    )
    assert (status, body) == (403, {"error": "acknowledge needs the commander role; token of bob is viewer"})
    assert await api.failures("beyond_role") == before + 1
    refused = (await api.audit())[-1]
    assert (refused["who"], refused["action"], refused["target"], refused["why"]) == (
        "human:bob",
        "acknowledge",
        incident.id,
        "I want to help",
    )
    assert refused["details"] == {
        "outcome": "refused",
        "status": 403,
        "error": "acknowledge needs the commander role; token of bob is viewer",
        "role": "viewer",
        "claimed_by": "alice",  # a self-declared name is kept as a claim, never as `who`
    }
    status, shown, _ = await api.call("GET", f"/incidents/{incident.id}", BOB)
    assert shown["status"] == "open"  # nothing happened to the incident


async def test_a_commander_acknowledges_under_their_principal_and_a_409_is_audited(api: Api) -> None:
    incident = await seed_incident(api.settings, "INC-ROLES-0002", MODEL)
    path = f"/incidents/{incident.id}/acknowledge"
    status, reply, _ = await api.call("POST", path, ALICE, {"why": "on it", "by": "mallory"})
    assert (status, reply["ok"], reply["incident"]["status"]) == (200, True, "acknowledged"), reply
    assert reply["incident"]["timeline"][-1]["by"] == "human:alice"
    submitted = (await api.audit())[-1]
    assert (submitted["who"], submitted["action"], submitted["target"]) == (
        "human:alice",
        "acknowledge",
        incident.id,
    )
    assert submitted["details"]["outcome"] == "submitted" and submitted["details"]["claimed_by"] == "mallory"

    status, reply, _ = await api.call("POST", path, ALICE, {"why": "again"})  # no `by`: it is optional
    assert (status, reply["ok"]) == (409, False) and "it is acknowledged" in reply["error"]
    again, refusal = (await api.audit())[-2:]
    assert again["details"]["outcome"] == "submitted" and "claimed_by" not in again["details"]
    assert (refusal["who"], refusal["details"]["outcome"], refusal["details"]["status"]) == (
        "human:alice",
        "refused",
        409,
    )
    assert refusal["details"]["command"] == again["details"]["command"]

    # release needs the admin role: alice is refused, carol may
    status, reply, _ = await api.call("POST", f"/models/{MODEL}/release", ALICE, {"why": "done"})
    assert (status, reply) == (403, {"error": "release needs the admin role; token of alice is commander"})
    status, reply, _ = await api.call("POST", f"/models/{MODEL}/release", CAROL, {"why": "done"})
    assert (status, reply["ok"]) == (200, True), reply
    assert (await api.audit())[-1]["who"] == "human:carol"


async def test_reads_need_a_token_once_principals_are_configured_and_probes_stay_open(api: Api) -> None:
    before = await api.failures("missing")
    status, body, _ = await api.call("GET", "/incidents", None)
    assert (status, body) == (401, {"error": "missing bearer token"})
    assert await api.failures("missing") == before + 1
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert (await api.call("GET", path, None))[0] == 200, path
    status, document, _ = await api.call("GET", "/openapi.json", None)
    assert document["paths"]["/incidents"]["get"]["security"] == [{"bearerAuth": []}]


async def test_a_rotated_token_file_takes_effect_without_a_restart(api: Api) -> None:
    new_alice = "aimon_alice-rotated"
    pid = api.worker.proc.pid if api.worker.proc else None
    assert (await api.call("GET", "/models", ALICE))[0] == 200
    reloads = await api.worker.metric("aimon_api_token_reloads_total", outcome="ok")
    write_tokens(
        api.tokens, ("alice", "commander", new_alice), ("bob", "viewer", BOB), ("carol", "admin", CAROL)
    )
    before = await api.failures("unknown_token")
    status, body, _ = await api.call("GET", "/models", ALICE)
    assert (status, body) == (401, {"error": "unknown or revoked token"})
    assert await api.failures("unknown_token") == before + 1
    status, body, _ = await api.call("GET", "/models", new_alice)
    assert status == 200 and "models" in body
    assert await api.worker.metric("aimon_api_token_reloads_total", outcome="ok") == reloads + 1

    # A broken edit keeps the tokens in force (and is counted), the next good one applies.
    api.tokens.write_text("tokens:\n  - {principal: alice, role: comander, sha256: nope}\n")
    assert (await api.call("GET", "/models", new_alice))[0] == 200
    assert await api.worker.metric("aimon_api_token_reloads_total", outcome="failed") == 1
    write_tokens(api.tokens, ("alice", "commander", ALICE), ("bob", "viewer", BOB), ("carol", "admin", CAROL))
    assert (await api.call("GET", "/models", ALICE))[0] == 200
    assert (await api.call("GET", "/models", new_alice))[0] == 401
    assert api.worker.proc is not None and api.worker.proc.pid == pid  # the same process throughout


async def test_bodies_are_bounded_and_no_error_carries_a_traceback(api: Api) -> None:
    incident = await seed_incident(api.settings, "INC-ROLES-0003", MODEL)
    path = f"/incidents/{incident.id}/mitigate"
    big = {"why": "x" * (MAX_BODY + 10)}
    status, body, kind = await api.call("POST", path, ALICE, big)
    assert (status, kind) == (413, "application/json")
    assert body == {"error": f"request body over {MAX_BODY} bytes; the API's bodies are a few hundred"}

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: aiohttp stops reading past the limit
        yield b'{"why": "'
        for _ in range(8):
            yield b"y" * 1024
        yield b'"}'

    status, body, kind = await api.call(
        "POST", path, ALICE, data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert (status, kind, "error" in body) == (413, "application/json", True), body

    for data, expected in (
        (b'{"why": ', "bad request body: Input data was truncated"),
        (b"\xff\xfe", "bad request body: JSON is malformed"),
        (b'["why"]', "bad request body: Expected `object`, got `array`"),
    ):
        status, body, kind = await api.call("POST", path, ALICE, data=data)
        assert (status, kind) == (400, "application/json") and body["error"].startswith(expected), body

    for header in ("Basic YWxpY2U6eA==", "Bearer", "Bearer a b", "Bearer caf\u00e9"):
        status, body, kind = await api.call("GET", "/incidents", None, headers={"Authorization": header})
        assert (status, kind) == (401, "application/json"), (header, body)
        assert body == {"error": "the Authorization header must be `Bearer <token>`"}, header
    status, shown, _ = await api.call("GET", f"/incidents/{incident.id}", BOB)
    assert shown["status"] == "open"  # none of the refused requests reached the evaluator

    # aiohttp's own answer to a request it cannot parse: a plain 400, no traceback either.
    reader, writer = await asyncio.open_connection("127.0.0.1", api.settings.web_port)
    writer.write(b"GET /incidents HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
    await writer.drain()
    raw = (await asyncio.wait_for(reader.read(65536), 10)).decode(errors="replace")
    writer.close()
    assert raw.split(" ", 2)[1] == "400" and "Traceback" not in raw and 'File "' not in raw, raw


async def test_models_are_listed_a_page_at_a_time(api: Api) -> None:
    redis = Redis.from_url(api.settings.redis_url)
    try:
        for n in range(3):
            await seed_incident(api.settings, f"INC-ROLES-PAGE-{n}", MODEL)
        keys = Keys(api.settings.key_prefix)
        store = IncidentStore(redis, keys)
        others = [f"roles-page-{n}" for n in range(3)]
        for model_id in others:
            found = await store.find("INC-ROLES-PAGE-0")
            assert found is not None
            found.id, found.model_id = f"INC-{model_id}", model_id
            await store.save([found])
    finally:
        await redis.aclose()

    async def all_listed() -> bool:
        status, body, _ = await api.call("GET", "/models", BOB)
        return status == 200 and set(others) <= {m["model_id"] for m in body["models"]}

    await eventually(all_listed, timeout_s=30)
    status, full, _ = await api.call("GET", "/models", BOB)
    assert full["next"] is None
    every = [m["model_id"] for m in full["models"]]
    paged: list[str] = []
    after = ""
    while True:
        status, page, _ = await api.call("GET", f"/models?limit=2{after}", BOB)
        assert status == 200 and len(page["models"]) <= 2
        paged += [m["model_id"] for m in page["models"]]
        if page["next"] is None:
            break
        after = f"&after={page['next']}"
    assert paged == every and len(every) >= 4
