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
from prometheus_client import CollectorRegistry

from monitor.events import IncidentEvent
from monitor.incidents.delivery import Deliverer
from monitor.metrics import NotificationMetrics

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
            [
                BINARY,
                f"--config.file={config}",
                f"--storage.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
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
        event=kind,
        id="INC-20261126-abcdef01",
        category="bias",
        rule="disparate-impact",
        model_id="loan-approval",  # type: ignore[arg-type]
        model_version="2.3",
        severity="HIGH",
        status=status,
        opened_at=now - 60,
        updated_at=now,  # type: ignore[arg-type]
        observation={"value": 0.7, "threshold": 0.8},
        group="sex=F",
        summary=(
            "potential discrimination: disparate impact of sex=F on loan-approval 2.3 is 0.7 (threshold 0.8)"
        ),
    )


def counted(registry: CollectorRegistry, what: str, channel: str) -> float | None:
    return registry.get_sample_value(f"aimon_notification_{what}_total", {"channel": channel})


async def alerts(url: str) -> list[dict[str, object]]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/api/v2/alerts") as resp:
            return list(await resp.json())


async def test_an_opened_incident_is_an_alert_and_a_resolved_one_ends_it(alertmanager: str) -> None:
    registry = CollectorRegistry()
    deliverer = Deliverer(
        alertmanager_url=alertmanager,
        first_backoff_s=0.2,
        public_url="https://aimon.example.org/",
        counters=NotificationMetrics(registry),
    )
    deadline = time.monotonic() + 20
    while deliverer.delivered == 0 and time.monotonic() < deadline:  # Alertmanager may still be starting
        deliverer.submit(event("open", "opened"))
        await deliverer.drain()
    [alert] = await alerts(alertmanager)
    assert alert["labels"] == {
        "alertname": "disparate-impact",
        "incident_id": "INC-20261126-abcdef01",
        "model_id": "loan-approval",
        "severity": "high",
        "category": "bias",
        "source": "aimon",
        "group": "sex=F",
    }
    assert str(alert["annotations"]["summary"]).startswith("potential discrimination")  # type: ignore[index]
    assert alert["status"]["state"] == "active"  # type: ignore[index]
    # "Source" in Alertmanager opens the incident in the monitor's API
    assert alert["generatorURL"] == "https://aimon.example.org/incidents/INC-20261126-abcdef01"
    assert counted(registry, "deliveries", "alertmanager") == deliverer.delivered >= 1
    deliverer.submit(event("resolved", "resolved"))
    await deliverer.drain()
    await asyncio.sleep(0.5)
    assert [a for a in await alerts(alertmanager) if a["status"]["state"] == "active"] == []  # type: ignore[index]


async def test_webhooks_are_retried_with_backoff() -> None:
    calls: list[float] = []

    async def hook(request: web.Request) -> web.Response:
        calls.append(time.monotonic())
        body = await request.json()
        assert body["events"][0]["id"] == "INC-20261126-abcdef01"
        return web.Response(status=503 if len(calls) < 3 else 200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        deliverer = Deliverer(
            alertmanager_url=None, webhook_urls=[f"http://127.0.0.1:{port}/hook"], first_backoff_s=0.1
        )
        deliverer.submit(event("open", "opened"))
        await deliverer.drain()
        assert len(calls) == 3 and deliverer.delivered == 1 and deliverer.failed == 0
        assert calls[2] - calls[1] > calls[1] - calls[0] > 0.09  # the wait doubles
    finally:
        await runner.cleanup()


async def test_a_delivery_given_up_is_counted_per_channel() -> None:
    registry = CollectorRegistry()
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    deliverer = Deliverer(
        alertmanager_url=closed,
        webhook_urls=[f"{closed}/hook"],
        attempts=2,
        first_backoff_s=0.05,
        counters=NotificationMetrics(registry),
    )
    deliverer.submit(event("open", "opened"))
    await deliverer.drain()
    assert deliverer.failed == 2 and deliverer.delivered == 0
    assert (
        counted(registry, "failures", "alertmanager") == 1 and counted(registry, "failures", "webhook") == 1
    )
    assert counted(registry, "deliveries", "webhook") == 0


async def test_related_incidents_page_once_and_open_ones_are_re_notified(
    services: tuple[str, str], tmp_path: Path
) -> None:
    """Two rules fire on one model in one tick: one webhook message with both; hours later, one reminder."""
    from redis.asyncio import Redis

    from monitor.aggregates.predictions import Located
    from monitor.evaluator import Evaluator
    from monitor.events import PredictionEvent
    from monitor.publisher import KafkaPublisher
    from monitor.rules.loader import default_rules_path, load_rules
    from monitor.store.keys import Keys
    from monitor.store.redis import RedisStore
    from monitor.store.windows import WindowReader
    from monitor.topics import ensure_topics
    from tests.conftest import unique_settings

    received: list[dict[str, object]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    settings = unique_settings(*services)
    await ensure_topics(settings)
    publisher = KafkaPublisher(
        settings.kafka_bootstrap,
        control_topic=settings.topics.control,
        incidents_topic=settings.topics.incidents,
    )
    await publisher.start()
    redis = Redis.from_url(settings.redis_url)
    try:
        keys = Keys(settings.key_prefix)
        store = RedisStore(redis, keys, minute_ttl_s=26 * 3600, hour_ttl_s=15 * 86400)
        now = time.time()
        events = [
            PredictionEvent(
                model_id="chatbot",
                model_version="1",
                request_id=f"r{i}",
                ts=now - 200 + i * 0.1,
                prediction="ok",
                error=(i % 10 == 0) or None,
                flags=["toxic"] if i % 50 == 0 else [],
                user_id=f"u{i}",
            )
            for i in range(1500)
        ]
        await store.apply_predictions("predictions", [Located(e, 0, i) for i, e in enumerate(events)])
        deliverer = Deliverer(alertmanager_url=None, webhook_urls=[f"http://127.0.0.1:{port}/hook"])
        clock = [now]
        ev = Evaluator(
            redis,
            keys,
            load_rules(default_rules_path()),
            publisher,
            clock=lambda: clock[0],
            reader=WindowReader(redis, keys, closed_refresh_s=0),
            evidence_dir=tmp_path,
            deliverer=deliverer,
            renotify_s=3600,
        )
        report = await ev.tick()
        assert len(report.opened) >= 2
        await deliverer.drain()
        assert len(received) == 1 and len(received[0]["events"]) == len(report.opened)  # type: ignore[arg-type]
        clock[0] = now + 120
        await ev.tick()
        await deliverer.drain()
        assert len(received) == 1  # no reminder yet
        clock[0] = now + 3700
        await ev.tick()
        await deliverer.drain()
        # an hour of silence also opens a downtime incident: a page of its own
        reminders = [m for m in received[1:] if all(e["event"] == "updated" for e in m["events"])]  # type: ignore[union-attr]
        assert len(reminders) == 1
        assert {e["id"] for e in reminders[0]["events"]} == {i.id for i in report.opened}  # type: ignore[union-attr]
    finally:
        await publisher.stop()
        await redis.aclose()
        await runner.cleanup()
