"""Ingest → incident → control over a SASL_SSL broker and a TLS Redis with an ACL user, and the refusals
of a wrong password or an untrusted certificate, each one line from `monitor run`.

The module starts its own secure services (`monitor services up --secure` as a library call) in a state
dir of its own, on ports of their own, and stops them at the end; the plain services of the rest of the
suite are not touched.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

from monitor.clients.gateway import GatewayClient
from monitor.clients.reporter import PredictionReporter
from monitor.clients.security import KafkaSecurity
from monitor.dev import secure, services
from monitor.dev.certs import make_ca
from monitor.dev.service_config import ServiceConfig
from monitor.incidents.store import IncidentStore
from monitor.preflight import check_kafka, check_redis
from monitor.security import kafka_client_options, redis_client
from monitor.settings import Settings
from monitor.store.keys import Keys
from monitor.topics import ensure_topics
from tests.conftest import ROOT, WorkerProcess, unique_settings

pytestmark = pytest.mark.integration

# Their own ports (the plain services of the suite keep theirs); the controller takes the next one.
KAFKA_PORT, REDIS_PORT = 19396, 16681


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[secure.SecureServices]:
    """A SASL_SSL broker and a TLS Redis with an ACL user, certificates and passwords made for this module."""
    state = tmp_path_factory.mktemp("secure-services")
    plain = Settings(kafka_bootstrap=f"127.0.0.1:{KAFKA_PORT}", redis_url=f"redis://127.0.0.1:{REDIS_PORT}/0")
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("MONITOR_KAFKA_PORT", "MONITOR_REDIS_PORT")},
        "MONITOR_STATE_DIR": str(state),
        "MONITOR_KAFKA_CONTROLLER_PORT": str(KAFKA_PORT + 1),
    }
    config = ServiceConfig.from_settings(plain, env, secure=True)
    started = time.monotonic()
    try:
        services.up(config)
        made = secure.load(config)
        assert made is not None
        print(f"\nsecure services up in {time.monotonic() - started:.1f}s")
        yield made
    finally:
        services.down(config)


def secure_settings(made: secure.SecureServices, **overrides: object) -> Settings:
    """Unique topics, group and keys on the secure services, with the settings of their secure.env."""
    env = made.settings_env()
    return unique_settings(
        env["MONITOR_KAFKA_BOOTSTRAP"],
        env["MONITOR_REDIS_URL"],
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username=env["MONITOR_KAFKA_SASL_USERNAME"],
        kafka_sasl_password=env["MONITOR_KAFKA_SASL_PASSWORD"],
        kafka_ssl_cafile=env["MONITOR_KAFKA_SSL_CAFILE"],
        redis_username=env["MONITOR_REDIS_USERNAME"],
        redis_password=env["MONITOR_REDIS_PASSWORD"],
        redis_ssl_ca=env["MONITOR_REDIS_SSL_CA"],
        **overrides,
    )


def burst(now: float) -> list[dict[str, object]]:
    """1,000 predictions of the last 30 s, 30 % of them errors: a CRITICAL error-rate breach."""
    return [
        {
            "model_id": "loan-approval",
            "model_version": "3.1.0",
            "request_id": f"r{i}",
            "ts": now - 30 + i * 0.03,
            "latency_ms": 35.0,
            **({"error": "upstream_timeout"} if i % 10 < 3 else {}),
        }
        for i in range(1000)
    ]


async def test_an_error_burst_pauses_the_model_over_sasl_ssl_and_tls_redis(
    secured: secure.SecureServices, tmp_path_factory: pytest.TempPathFactory
) -> None:
    settings = secure_settings(secured, evidence_dir=tmp_path_factory.mktemp("evidence"))
    await ensure_topics(settings)
    # The reporter logs in with SASL PLAIN and the gateway with SCRAM-SHA-256, the worker with SCRAM-SHA-512.
    password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
    as_user: dict[str, Any] = {
        "username": settings.kafka_sasl_username,
        "password": password,
        "cafile": secured.pki.ca,
    }
    reporter = PredictionReporter(
        settings.kafka_bootstrap,
        settings.topics.predictions,
        max_batch=1000,  # one message: the worker takes the burst in one batch
        security=KafkaSecurity(protocol="SASL_SSL", sasl_mechanism="PLAIN", **as_user),
    )
    async with reporter:
        for event in burst(time.time()):
            await reporter.report(event)
        await reporter.flush()
    # And one value that is no event: the worker's Faust producer dead-letters it, over SASL_SSL too.
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, **kafka_client_options(settings))
    await producer.start()
    try:
        await producer.send_and_wait(settings.topics.predictions, b"not json", key=b"bad")
    finally:
        await producer.stop()

    # A worker with the wrong password stops at its preflight and consumes nothing...
    refused = run_worker(settings, MONITOR_KAFKA_SASL_PASSWORD="not-the-password")
    assert refused.returncode == 1 and "refused SASL authentication" in refused.stderr, refused.stderr
    print(f"\nwrong Kafka password, exit {refused.returncode}: {refused.stderr.strip()}")

    # ...so the one started with the right settings finds every event of the burst waiting.
    worker = WorkerProcess(settings, tmp_path_factory.mktemp("secure-worker") / "worker.log")
    gateway = GatewayClient(
        settings.kafka_bootstrap,
        settings.topics.control,
        security=KafkaSecurity(protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-256", **as_user),
    )
    worker.start()
    try:
        await worker.wait_ready()
        started = time.monotonic()
        async with gateway:
            await gateway.wait_caught_up()
            while (state := gateway.state("loan-approval")) is None and time.monotonic() - started < 30:
                await asyncio.sleep(0.1)
        seen = time.monotonic() - started
        assert state is not None, f"no control message within 30 s:\n{worker.log_tail()}"
        assert (state.level, state.mode, state.seq) == (4, "paused", 1)
        assert "error-rate CRITICAL" in state.reason
        status, body = await worker.get("/incidents")
        assert status == 200
        [incident] = [i for i in orjson.loads(body)["incidents"] if i["model_id"] == "loan-approval"]
        assert incident["rule"] == "error-rate" and incident["id"] in state.incident_ids
        # What the worker wrote went over TLS to Redis as the ACL user: read it back that way.
        redis = redis_client(settings)
        try:
            assert await redis.acl_whoami() == "monitor"
            stored = await IncidentStore(redis, Keys(settings.key_prefix)).get(
                "loan-approval", incident["id"]
            )
            assert stored is not None and stored.observation["samples"] == 1000  # not one event lost
        finally:
            await redis.aclose()
        dead = await first_record(settings, settings.topics.dead_letters)
        assert dead.value == b"not json" and dict(dead.headers)["reason"] == b"invalid_json"
    finally:
        worker.stop()
    print(f"control over SASL_SSL {seen:.1f}s after the worker was ready: {state.reason}")


async def first_record(settings: Settings, topic: str, timeout_s: float = 15) -> ConsumerRecord[bytes, bytes]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **kafka_client_options(settings),
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                return records[0]
        raise AssertionError(f"nothing on {topic} within {timeout_s}s")
    finally:
        await consumer.stop()


def run_worker(settings: Settings, **env: str) -> subprocess.CompletedProcess[str]:
    """`monitor run` with `settings` and `env` on top; it is expected to stop at its preflight."""
    return subprocess.run(
        [sys.executable, "-m", "monitor", "run"],
        env={**os.environ, **settings.to_env(), **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def untrusted_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA that signed neither service's certificate."""
    return make_ca(tmp_path_factory.mktemp("other-ca"), "some other CA").ca


@pytest.mark.parametrize(
    ("case", "env", "expected", "names"),
    [
        (
            "wrong Kafka password",
            {"MONITOR_KAFKA_SASL_PASSWORD": "not-the-password"},
            "refused SASL authentication for user 'monitor' (SCRAM-SHA-512",
            "MONITOR_KAFKA_SASL_USERNAME/PASSWORD",
        ),
        (
            "untrusted Kafka certificate",
            {"MONITOR_KAFKA_SSL_CAFILE": "{untrusted}"},
            "presented a certificate that is not trusted",
            "check MONITOR_KAFKA_SSL_CAFILE",
        ),
        (
            "untrusted Redis certificate",
            {"MONITOR_REDIS_SSL_CA": "{untrusted}"},
            "presented a certificate that is not trusted",
            "check MONITOR_REDIS_SSL_CA",
        ),
        (
            "wrong Redis password",
            {"MONITOR_REDIS_PASSWORD": "not-the-password"},
            "refused authentication",
            "MONITOR_REDIS_USERNAME/PASSWORD",
        ),
    ],
)
def test_a_refused_login_or_an_untrusted_certificate_is_one_line(
    secured: secure.SecureServices,
    untrusted_ca: Path,
    case: str,
    env: dict[str, str],
    expected: str,
    names: str,
) -> None:
    settings = secure_settings(secured)
    given = {name: value.format(untrusted=untrusted_ca) for name, value in env.items()}
    started = time.monotonic()
    done = run_worker(settings, **given)
    took = time.monotonic() - started
    lines = done.stderr.strip().splitlines()
    print(f"\n{case}: exit {done.returncode} after {took:.1f}s: {done.stderr.strip()}")
    assert done.returncode == 1, done.stderr + done.stdout
    assert len(lines) == 1 and lines[0].startswith("monitor: "), done.stderr
    assert expected in lines[0] and names in lines[0]  # what happened, and the setting to fix
    assert "not-the-password" not in done.stderr + done.stdout  # a secret is never printed
    assert "Traceback" not in done.stderr


async def test_the_preflight_passes_on_the_right_settings(secured: secure.SecureServices) -> None:
    settings = secure_settings(secured)
    await check_redis(settings)
    await check_kafka(settings)
