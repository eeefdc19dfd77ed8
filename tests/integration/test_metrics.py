"""/metrics of live workers: `promtool check metrics` is clean, the counters add up to what was sent,
and the per-model series come from the evaluating worker only (two workers, one consumer group)."""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from monitor.settings import Settings
from monitor.topics import ensure_topics
from tests.conftest import WorkerProcess, free_port, unique_settings

pytestmark = pytest.mark.integration

N = 1200
MODEL = "loan"


@dataclass
class Cluster:
    settings: Settings
    workers: list[WorkerProcess]
    sent: list[dict[str, Any]]


def traffic(now: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Predictions with groups (a proxy too), latencies, errors and a disparity; labels for most."""
    rng = random.Random(7)
    predictions, labels = [], []
    for i in range(N):
        sex = "F" if i % 2 else "M"
        event: dict[str, Any] = {
            "model_id": MODEL,
            "model_version": "2",
            "request_id": f"q{i}",
            "ts": now - 60 + i * 0.04,
            "groups": {"sex": sex, "zip3": f"{rng.randrange(40):03d}"},
            "latency_ms": rng.lognormvariate(3, 0.8),
            "user_id": f"u{i % 150}",
        }
        if i % 20 == 0:
            event["error"] = "timeout"
        else:
            approved = rng.random() < (0.3 if sex == "F" else 0.7)  # disparate impact about 0.43
            event["positive"], event["prediction"] = approved, "approve" if approved else "deny"
            truth = rng.random() < 0.6
            labels.append(
                {
                    "model_id": MODEL,
                    "request_id": f"q{i}",
                    "ts": now,
                    "label": "approve" if truth else "deny",
                    "positive": truth,
                }
            )
        predictions.append(event)
    return predictions, labels


@pytest.fixture(scope="module")
async def cluster(
    services: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Cluster]:
    # Incidents go to a webhook nobody answers, so the failure counter has something to count.
    settings = unique_settings(*services, webhook_urls=[f"http://127.0.0.1:{free_port()}/hook"])
    await ensure_topics(settings)
    folder = tmp_path_factory.mktemp("workers")
    second = settings.with_overrides(web_port=free_port())
    workers = [WorkerProcess(settings, folder / "a.log"), WorkerProcess(second, folder / "b.log")]
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            await worker.wait_ready()
        predictions, labels = traffic(time.time())
        for start in range(0, N, 100):
            await producer.send(settings.topics.predictions, orjson.dumps(predictions[start : start + 100]))
        await producer.flush()
        for start in range(0, len(labels), 100):
            await producer.send(settings.topics.labels, orjson.dumps(labels[start : start + 100]))
        await producer.flush()
        yield Cluster(settings, workers, predictions)
    finally:
        await producer.stop()
        for worker in workers:
            worker.stop()


async def samples(worker: WorkerProcess) -> dict[str, list[tuple[dict[str, str], float]]]:
    status, text = await worker.get("/metrics")
    assert status == 200, text
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found.setdefault(s.name, []).append((s.labels, s.value))
    return found


async def evaluator_of(cluster: Cluster, timeout_s: float = 60) -> WorkerProcess:
    """The worker that exports the per-model series, once it has counted every request and label
    and the failed webhook delivery (5 tries with backoff)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for worker in cluster.workers:
            got = await samples(worker)
            requests = sum(v for _, v in got.get("aimon_model_predictions_total", []))
            labelled = got.get("aimon_group_false_negative_rate", [])
            failed = sum(v for _, v in got.get("aimon_notification_failures_total", []))
            if requests == N and labelled and failed >= 1:
                return worker
        await asyncio.sleep(0.5)
    raise AssertionError(
        "no worker exported the whole traffic:\n" + "\n".join(w.log_tail(15) for w in cluster.workers)
    )


async def test_live_metrics_pass_promtool_check(cluster: Cluster) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (.ci/run does)"
    worker = await evaluator_of(cluster)
    got = await samples(worker)
    every_family = {
        "aimon_model_predictions_total",
        "aimon_model_errors_total",
        "aimon_model_latency_seconds_bucket",
        "aimon_model_latency_seconds_sum",
        "aimon_model_latency_seconds_count",
        "aimon_model_predictions",
        "aimon_model_error_ratio",
        "aimon_model_accuracy",
        "aimon_model_label_coverage",
        "aimon_model_last_event_timestamp_seconds",
        "aimon_disparate_impact_ratio",
        "aimon_group_favourable_rate",
        "aimon_group_accuracy",
        "aimon_group_false_negative_rate",
        "aimon_incidents_open",
        "aimon_escalation_level",
        "aimon_notification_failures_total",
        "aimon_notification_deliveries_total",
        "aimon_events_ingested_total",
        "aimon_evaluator_tick_seconds_bucket",
        "aimon_batch_write_seconds_bucket",
    }
    assert every_family - set(got) == set()
    for worker in cluster.workers:
        _, text = await worker.get("/metrics")
        result = subprocess.run(
            [promtool, "check", "metrics"],
            input=text,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (result.returncode, result.stdout + result.stderr) == (0, ""), text


async def test_counters_add_up_and_only_the_evaluator_exports_models(cluster: Cluster) -> None:
    evaluator = await evaluator_of(cluster)
    other = next(w for w in cluster.workers if w is not evaluator)
    model_series = (
        "aimon_model_predictions_total",
        "aimon_model_latency_seconds_bucket",
        "aimon_incidents_open",
        "aimon_escalation_level",
        "aimon_group_favourable_rate",
        "aimon_model_predictions",
    )
    got, elsewhere = await samples(evaluator), await samples(other)
    assert [name for name in model_series if elsewhere.get(name)] == []  # its own process counters only
    assert elsewhere.get("aimon_messages_consumed_total") is not None
    labels = {"model_id": MODEL, "version": "2"}
    errors = sum(1 for e in cluster.sent if "error" in e)
    assert [v for series, v in got["aimon_model_errors_total"] if series == labels] == [errors]
    count = [v for series, v in got["aimon_model_latency_seconds_count"] if series == labels]
    total_ms = sum(e["latency_ms"] for e in cluster.sent)
    [latency_sum] = [v for series, v in got["aimon_model_latency_seconds_sum"] if series == labels]
    assert count == [N] and latency_sum == pytest.approx(total_ms / 1000, abs=N * 1e-6)
    buckets = {
        series["le"]: v
        for series, v in got["aimon_model_latency_seconds_bucket"]
        if series["model_id"] == MODEL
    }
    assert buckets["0.0256"] == sum(1 for e in cluster.sent if e["latency_ms"] <= 25.6)
    # one series per label set of incidents_open, at 0 where nothing is open
    open_now = got["aimon_incidents_open"]
    assert len(open_now) == 15 and any(v == 0 for _, v in open_now)
    # the proxy is summarised: 40 zip3 values, at most the flagged ones by name plus _other
    zips = {
        series["group"] for series, _ in got["aimon_group_favourable_rate"] if series["attribute"] == "zip3"
    }
    assert "_other" in zips and len(zips) < 40
    windows = {
        series["window"] for series, _ in got["aimon_group_favourable_rate"] if series["attribute"] == "sex"
    }
    assert {"30m", "24h"} <= windows
