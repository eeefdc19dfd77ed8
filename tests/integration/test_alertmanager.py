"""Incident events reach a real Alertmanager (Debian's package) with the right labels, and webhooks
get them with retries."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from monitor.events import IncidentEvent
from monitor.incidents.delivery import Deliverer

pytestmark = pytest.mark.integration

BINARY = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    assert BINARY, "Alertmanager is missing: apt-get install prometheus-alertmanager (.ci/run does)"
    folder = tmp_path_factory.mktemp("alertmanager")
    config = folder / "alertmanager.yml"
    config.write_text("route:\n  receiver: nobody\nreceivers:\n  - name: nobody\n")
    port = free_port()
    with (folder / "log").open("wb") as log:
        proc = subprocess.Popen(
            [BINARY, f"--config.file={config}", f"--storage.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
            stdout=subprocess.DEVNULL, stderr=log,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.2)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def event(status: str, kind: str) -> IncidentEvent:
    now = time.time()
    return IncidentEvent(
        event=kind, id="INC-20261126-abcdef01", category="bias", rule="disparate-impact", model_id="loan-approval",  # type: ignore[arg-type]
        model_version="2.3", severity="HIGH", status=status, opened_at=now - 60, updated_at=now,  # type: ignore[arg-type]
        observation={"value": 0.7, "threshold": 0.8}, group="sex=F",
        summary="potential discrimination: disparate impact of sex=F on loan-approval 2.3 is 0.7 (threshold 0.8)",
    )


async def alerts(url: str) -> list[dict[str, object]]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/api/v2/alerts") as resp:
            return list(await resp.json())


async def test_an_opened_incident_is_an_alert_and_a_resolved_one_ends_it(alertmanager: str) -> None:
    deliverer = Deliverer(alertmanager_url=alertmanager, first_backoff_s=0.2)
    deadline = time.monotonic() + 20
    while deliverer.delivered == 0 and time.monotonic() < deadline:  # Alertmanager may still be starting
        deliverer.submit(event("open", "opened"))
        await deliverer.drain()
    [alert] = await alerts(alertmanager)
    assert alert["labels"] == {
        "alertname": "disparate-impact", "incident_id": "INC-20261126-abcdef01", "model_id": "loan-approval",
        "severity": "high", "category": "bias", "source": "aimon", "group": "sex=F",
    }
    assert str(alert["annotations"]["summary"]).startswith("potential discrimination")  # type: ignore[index]
    assert alert["status"]["state"] == "active"  # type: ignore[index]
    deliverer.submit(event("resolved", "resolved"))
    await deliverer.drain()
    await asyncio.sleep(0.5)
    assert [a for a in await alerts(alertmanager) if a["status"]["state"] == "active"] == []  # type: ignore[index]


async def test_webhooks_are_retried_with_backoff() -> None:
    calls: list[float] = []

    async def hook(request: web.Request) -> web.Response:
        calls.append(time.monotonic())
        body = await request.json()
        assert body["id"] == "INC-20261126-abcdef01"
        return web.Response(status=503 if len(calls) < 3 else 200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        deliverer = Deliverer(alertmanager_url=None, webhook_urls=[f"http://127.0.0.1:{port}/hook"], first_backoff_s=0.1)
        deliverer.submit(event("open", "opened"))
        await deliverer.drain()
        assert len(calls) == 3 and deliverer.delivered == 1 and deliverer.failed == 0
        assert calls[2] - calls[1] > calls[1] - calls[0] > 0.09  # the wait doubles
    finally:
        await runner.cleanup()
