"""One address per service, on the real programs: `monitor services up` listens where the worker's
settings dial, and the Redis it starts keeps its data across a restart (AOF, like docker-compose)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from monitor.dev import services
from monitor.dev.services import ServiceConfig
from monitor.settings import Settings
from monitor.topics import ensure_topics
from tests.conftest import free_port

pytestmark = pytest.mark.integration

ADDRESS_ENV = (
    "MONITOR_KAFKA_PORT",
    "MONITOR_KAFKA_CONTROLLER_PORT",
    "MONITOR_REDIS_PORT",
    "MONITOR_KAFKA_BOOTSTRAP",
    "MONITOR_REDIS_URL",
    "MONITOR_STATE_DIR",
)


def monitor(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitor", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture
def own_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An environment that names only the addresses (free, non-default ports) and a fresh state dir."""
    env = {k: v for k, v in os.environ.items() if k not in ADDRESS_ENV}
    env.update(
        MONITOR_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}",
        MONITOR_REDIS_URL=f"redis://127.0.0.1:{free_port()}/2",
        MONITOR_STATE_DIR=str(tmp_path / "state"),
    )
    yield env
    monitor(env, "services", "down")


async def test_services_up_listens_where_the_worker_dials(
    own_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    up = monitor(own_env, "services", "up")
    assert up.returncode == 0, up.stderr
    kafka_port = own_env["MONITOR_KAFKA_BOOTSTRAP"].rsplit(":", 1)[1]
    redis_port = own_env["MONITOR_REDIS_URL"].rsplit(":", 1)[1].split("/")[0]
    assert f"kafka  127.0.0.1:{kafka_port}\n" in up.stdout
    assert f"redis  redis://127.0.0.1:{redis_port}/2\n" in up.stdout
    # What a worker started in the same environment dials: its Settings, nothing else.
    for name in ADDRESS_ENV:
        monkeypatch.delenv(name, raising=False)
    for name in ("MONITOR_KAFKA_BOOTSTRAP", "MONITOR_REDIS_URL"):
        monkeypatch.setenv(name, own_env[name])
    settings = Settings(app_id="addresses")
    assert settings.kafka_bootstrap == f"127.0.0.1:{kafka_port}"
    assert await ensure_topics(settings, timeout_s=20) != []  # the worker's first call at start
    with redis.Redis.from_url(settings.redis_url) as client:
        assert client.ping() and client.connection_pool.connection_kwargs["port"] == int(redis_port)
    status = monitor(own_env, "services", "status")
    assert "running pid" in status.stdout and f"at 127.0.0.1:{kafka_port}" in status.stdout, status.stdout
    # The controller took the broker's port + 1.
    props = (Path(own_env["MONITOR_STATE_DIR"]) / "kafka" / "server.properties").read_text()
    assert f"controller.quorum.voters=1@127.0.0.1:{int(kafka_port) + 1}" in props


def test_a_mismatched_legacy_port_is_refused_before_anything_starts(own_env: dict[str, str]) -> None:
    refused = monitor({**own_env, "MONITOR_REDIS_PORT": "16999"}, "services", "up")
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "monitor: MONITOR_REDIS_PORT=16999 disagrees with "
        f"MONITOR_REDIS_URL={own_env['MONITOR_REDIS_URL']}: the local service listens where the worker "
        "dials, so set MONITOR_REDIS_URL=redis://127.0.0.1:16999/0 and unset MONITOR_REDIS_PORT"
    ]
    assert not (Path(own_env["MONITOR_STATE_DIR"]) / "redis").exists()


def test_the_local_redis_keeps_its_data_across_a_restart(tmp_path: Path) -> None:
    server = services._require("redis-server", "it")
    config = ServiceConfig(cache_dir=tmp_path / "c", state_dir=tmp_path / "s", redis_port=free_port())
    _, svc = services._services(config)

    def start() -> None:
        services._start_redis(config, server)
        services._wait([svc], 30)

    start()
    try:
        with redis.Redis.from_url(config.redis_url) as client:
            client.set("kept", "across a restart")
        services.down(config)  # SIGTERM: Redis flushes the AOF on a clean shutdown
        assert list((config.redis_dir / "appendonlydir").glob("*.aof"))
        start()
        with redis.Redis.from_url(config.redis_url) as client:
            assert client.get("kept") == b"across a restart"
    finally:
        services.down(config)
