"""Delivery of incident events to Alertmanager (`/api/v2/alerts`) and to generic webhooks.

Kafka's `incidents` topic is the record; these are the pagers. A slow or absent receiver must not
hold up the evaluator, so deliveries run in the background with retries and exponential backoff,
and what could not be delivered after the last try is logged and counted (per channel:
`aimon_notification_deliveries_total` and `aimon_notification_failures_total`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
import msgspec

from monitor.events import IncidentEvent
from monitor.exceptions import MonitorError
from monitor.retry import retry

log = logging.getLogger(__name__)


def _rfc3339(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat().replace("+00:00", "Z")


class ChannelCounter(Protocol):
    """A counter by channel, as prometheus_client's `Counter(..., ["channel"])` is."""

    def labels(self, channel: str) -> Any:
        """The child counter of one channel (it has `inc()`)."""


class DeliveryCounters(Protocol):
    """Where delivery outcomes are counted (monitor.metrics.NotificationMetrics)."""

    @property
    def delivered(self) -> ChannelCounter:
        """Notifications a receiver accepted."""

    @property
    def failed(self) -> ChannelCounter:
        """Notifications given up after the last retry."""


def incident_url(public_url: str, incident_id: str) -> str:
    """The API address of one incident: what an alert's generatorURL points at."""
    return f"{public_url.rstrip('/')}/incidents/{quote(incident_id, safe='')}"


def alertmanager_alert(event: IncidentEvent, *, public_url: str = "") -> dict[str, Any]:
    """The Alertmanager v2 alert of an incident event; a resolved incident ends the alert.

    With `public_url`, the alert's generatorURL is the incident in the API, so "Source" in
    Alertmanager's UI (and in every receiver's template) opens the incident itself."""
    alert: dict[str, Any] = {
        "labels": {
            "alertname": event.rule,
            "incident_id": event.id,
            "model_id": event.model_id,
            "severity": event.severity.lower(),
            "category": event.category,
            "source": "aimon",
            **({"group": event.group} if event.group else {}),
        },
        "annotations": {
            "summary": event.summary or event.rule,
            "status": event.status,
            "value": str(event.observation.get("value")),
            "threshold": str(event.observation.get("threshold")),
            **({"evidence": event.evidence_ref} if event.evidence_ref else {}),
        },
        "startsAt": _rfc3339(event.opened_at),
    }
    if public_url:
        alert["generatorURL"] = incident_url(public_url, event.id)
    if event.status == "resolved":
        alert["endsAt"] = _rfc3339(event.updated_at)
    return alert


class Deliverer:
    """Sends incident events to Alertmanager and webhooks in the background, with retries."""

    def __init__(
        self,
        *,
        alertmanager_url: str | None,
        webhook_urls: Sequence[str] = (),
        attempts: int = 5,
        first_backoff_s: float = 0.5,
        public_url: str = "",
        counters: DeliveryCounters | None = None,
    ) -> None:
        self.alertmanager_url = alertmanager_url.rstrip("/") if alertmanager_url else None
        self.webhook_urls = list(webhook_urls)
        self.attempts = attempts
        self.first_backoff_s = first_backoff_s
        self.public_url = public_url
        self.counters = counters
        self.failed = 0
        self.delivered = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, event: IncidentEvent) -> None:
        """Start delivering one event; returns at once."""
        self.submit_group([event])

    def submit_group(self, events: Sequence[IncidentEvent], *, webhooks: bool = True) -> None:
        """Deliver related events (one model, one tick) as one notification; returns at once.

        Alertmanager gets one alert per incident (it groups them by its own routes); each webhook
        gets a single message listing them all, so five incidents of one outage page once.
        """
        if not events:
            return
        if self.alertmanager_url:
            alerts = [alertmanager_alert(e, public_url=self.public_url) for e in events]
            self._start("alertmanager", f"{self.alertmanager_url}/api/v2/alerts", alerts)
        if webhooks and self.webhook_urls:
            body = {
                "model_id": events[0].model_id,
                "summary": f"{len(events)} incident event(s) for {events[0].model_id}",
                "events": [msgspec.to_builtins(e) for e in events],
            }
            for url in self.webhook_urls:
                self._start("webhook", url, body)

    def _start(self, channel: str, url: str, body: Any) -> None:
        task = asyncio.get_running_loop().create_task(self._post(channel, url, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for every delivery under way (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _post(self, channel: str, url: str, body: Any) -> None:
        try:
            await retry(
                lambda: _post_once(url, body),
                on=_UNDELIVERED,
                first_s=self.first_backoff_s,
                tries=self.attempts,
            )
        except _UNDELIVERED as exc:
            self.failed += 1
            if self.counters is not None:
                self.counters.failed.labels(channel).inc()
            problem = str(exc) if isinstance(exc, Refused) else f"{type(exc).__name__}: {exc}"
            log.error(
                "could not deliver an incident event to %s after %d tries: %s", url, self.attempts, problem
            )
            return
        self.delivered += 1
        if self.counters is not None:
            self.counters.delivered.labels(channel).inc()


class Refused(MonitorError):
    """A receiver answered a delivery with an HTTP error status."""


_UNDELIVERED = (Refused, aiohttp.ClientError, asyncio.TimeoutError, OSError)


async def _post_once(url: str, body: Any) -> None:
    """POST the body as JSON; raises Refused unless the receiver accepts it (2xx)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.post(url, json=body) as response:
            if response.status >= 300:
                raise Refused(f"HTTP {response.status}: {(await response.text())[:200]}")
