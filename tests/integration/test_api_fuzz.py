"""A schema-driven fuzz of a live worker's API: schemathesis reads `/openapi.json` and sends every
operation generated requests, with and without the token; no reply may be a 5xx, and every reply
must match the document (status code, content type, headers and body schema)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode

from monitor.auth import entry_line, hash_token
from monitor.openapi import openapi_document
from monitor.topics import ensure_topics
from tests.conftest import WorkerProcess, eventually, seed_incident, unique_settings

pytestmark = pytest.mark.integration
TOKEN = "fuzz-token"
# Bounded so the whole fuzz stays about a minute: 13 operations, twice, on two workers, two shared cores.
EXAMPLES = 15
KNOWN_EXAMPLES = 3  # an accepted mutation waits for an evaluator tick (about a second)
MODEL = "fuzz-model"


@pytest.fixture(scope="module", params=["single-token", "principals"])
async def fuzzed_worker(
    request: pytest.FixtureRequest, services: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[WorkerProcess]:
    """A worker with the deprecated single token (reads open), and one with a tokens file (reads need
    a token): each serves the document that says so, and the fuzz holds it to that."""
    evidence = tmp_path_factory.mktemp("evidence")
    if request.param == "single-token":
        config = unique_settings(*services, api_token=TOKEN, evidence_dir=evidence)
    else:
        tokens = tmp_path_factory.mktemp("tokens") / "tokens.yaml"
        tokens.write_text(f"tokens:\n{entry_line('fuzz', 'admin', hash_token(TOKEN))}\n", encoding="utf-8")
        config = unique_settings(*services, api_tokens_file=tokens, evidence_dir=evidence)
    await ensure_topics(config)
    worker = WorkerProcess(config, tmp_path_factory.mktemp("fuzz") / "worker.log")
    worker.start()
    try:
        await worker.wait_ready()
        yield worker
    finally:
        worker.stop()


@pytest.fixture(scope="module")
async def known_ids(fuzzed_worker: WorkerProcess) -> dict[str, str]:
    """A model and an incident the worker knows, so the fuzz also reads and acts on real ones."""
    incident = await seed_incident(fuzzed_worker.settings, "INC-FUZZ-0001", MODEL)

    async def shown() -> bool:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            async with http.get(f"{fuzzed_worker.base}/models/{MODEL}") as resp:
                body = await resp.read()
                return resp.status == 200 and orjson.loads(body)["level"] == 2  # the evaluator acted on it

    await eventually(shown, timeout_s=30)
    return {"model_id": MODEL, "incident_id": incident.id}


@pytest.fixture(scope="module")
def api_schema(fuzzed_worker: WorkerProcess) -> Any:
    """The document as the live worker serves it (not the one built in-process)."""
    return schemathesis.openapi.from_url(f"{fuzzed_worker.base}/openapi.json")


# Parametrized from the document built in-process, then fuzzed from the one the worker serves:
# schemathesis' own lazy pytest loader does not run on this pytest (it sets a removed node attribute).
OPERATIONS = sorted(
    (method.upper(), path) for path, ops in openapi_document()["paths"].items() for method in ops
)
# Derandomized: the same examples on every run, so CI does not flake on a new random draw.
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
    derandomize=True,
)


@pytest.mark.parametrize("authorized", [True, False], ids=["token", "no-token"])
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_fuzz(api_schema: Any, known_ids: dict[str, str], method: str, path: str, authorized: bool) -> None:
    operation = api_schema[path][method]
    headers = {"Authorization": f"Bearer {TOKEN}"} if authorized else None
    known = {name: value for name, value in known_ids.items() if f"{{{name}}}" in path}
    if known:  # a few requests on ids that exist: their replies are checked against the schema too

        @given(case=operation.as_strategy(path_parameters=known))
        @settings(FUZZ, max_examples=KNOWN_EXAMPLES)
        def run_known(case: Any) -> None:
            case.call_and_validate(headers=headers)

        run_known()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

        @given(case=operation.as_strategy(generation_mode=mode))
        @FUZZ
        def run(case: Any) -> None:
            case.call_and_validate(headers=headers)

        try:
            run()
        except Unsatisfiable:
            # Nothing of this operation can be made invalid (no parameters, no body): no negative case.
            assert mode is GenerationMode.NEGATIVE
