"""Unit tests of monitor.services that start nothing: config from env, rendering, pid files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from monitor import services
from monitor.services import ServiceConfig, ServicesError

ENV = ("MONITOR_CACHE_DIR", "MONITOR_STATE_DIR", "MONITOR_KAFKA_PORT", "MONITOR_KAFKA_CONTROLLER_PORT",
       "MONITOR_REDIS_PORT")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


def test_from_env_defaults(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = ServiceConfig.from_env()
    assert config.cache_dir == tmp_path / "home" / ".cache" / "aimon"
    assert config.state_dir == tmp_path / "home" / ".local" / "state" / "aimon"
    assert (config.kafka_port, config.kafka_controller_port, config.redis_port) == (19092, 19093, 16379)
    assert config.kafka_bootstrap == "127.0.0.1:19092"
    assert config.redis_url == "redis://127.0.0.1:16379/0"


def test_from_env_reads_env_when_called(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("MONITOR_CACHE_DIR", str(tmp_path / "cache"))
    clean_env.setenv("MONITOR_STATE_DIR", "~/state")
    clean_env.setenv("MONITOR_KAFKA_PORT", "29092")
    clean_env.setenv("MONITOR_KAFKA_CONTROLLER_PORT", "29093")
    clean_env.setenv("MONITOR_REDIS_PORT", "26379")
    config = ServiceConfig.from_env()
    assert config.cache_dir == tmp_path / "cache"
    assert config.state_dir == tmp_path / "home" / "state"
    assert (config.kafka_port, config.kafka_controller_port, config.redis_port) == (29092, 29093, 26379)
    assert config.redis_url == "redis://127.0.0.1:26379/0"


@pytest.mark.parametrize("value", ["abc", "0", "65536", "-1", "19092.5"])
def test_from_env_rejects_bad_port(clean_env: pytest.MonkeyPatch, value: str) -> None:
    clean_env.setenv("MONITOR_REDIS_PORT", value)
    with pytest.raises(ServicesError, match="MONITOR_REDIS_PORT"):
        ServiceConfig.from_env()


def test_server_properties_has_ports_and_data_dir(tmp_path: Path) -> None:
    config = ServiceConfig(cache_dir=tmp_path / "c", state_dir=tmp_path / "s", kafka_port=29092,
                           kafka_controller_port=29093)
    props = dict(
        line.split("=", 1)
        for line in services.render_server_properties(config).splitlines()
        if line and not line.startswith("#")
    )
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:29092"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:29093"
    assert props["log.dirs"] == str(tmp_path / "s" / "kafka" / "data")
    assert props["process.roles"] == "broker,controller"
    # The dead-letter topic must hold 2 MB values.
    assert int(props["message.max.bytes"]) >= 2 * 1024 * 1024 + 1024


def test_packaged_templates_are_there() -> None:
    assert "<artifactId>kafka_2.13</artifactId>" in services._template("pom.xml")
    assert "rootLogger.level" in services._template("log4j2.properties")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped, so no process has this pid until the kernel recycles it
    return proc.pid


def test_stale_pid_file_is_removed_and_reported_stopped(tmp_path: Path) -> None:
    config = ServiceConfig(cache_dir=tmp_path / "c", state_dir=tmp_path / "s", kafka_port=1, redis_port=1)
    kafka, redis_ = services._services(config)
    for svc in (kafka, redis_):
        svc.pidfile.parent.mkdir(parents=True)
        svc.pidfile.write_text(f"{_dead_pid()}\n")
    assert services._read_pid(kafka) is None
    assert not kafka.pidfile.exists()
    assert services.status(config) == {"kafka": "stopped", "redis": "stopped"}
    assert not redis_.pidfile.exists()


def test_pid_of_an_unrelated_live_process_is_not_ours(tmp_path: Path) -> None:
    # Our own pid is alive but its command line is not the broker's: a recycled pid.
    config = ServiceConfig(cache_dir=tmp_path / "c", state_dir=tmp_path / "s")
    kafka = services._services(config)[0]
    kafka.pidfile.parent.mkdir(parents=True)
    kafka.pidfile.write_text("garbage\n")
    assert services._read_pid(kafka) is None
    kafka.pidfile.write_text(f"{os.getpid()}\n")
    assert services._read_pid(kafka) is None
    assert not kafka.pidfile.exists()


def test_down_without_anything_running_is_quiet(tmp_path: Path) -> None:
    services.down(ServiceConfig(cache_dir=tmp_path / "c", state_dir=tmp_path / "s"))


@pytest.mark.parametrize(
    ("value", "answers", "expected"),
    [
        ("", True, None),  # not set
        ("127.0.0.1:19092", True, None),  # our own address: handled as ours, never as external
        ("localhost:19092", True, None),
        ("127.0.0.1:1909", True, "127.0.0.1:1909"),
        ("kafka.internal:9092", True, "kafka.internal:9092"),
        ("kafka.internal:9092", False, None),  # does not answer: a local broker is started instead
        ("a:9092,b:9092", True, "a:9092,b:9092"),
    ],
)
def test_external_kafka_bootstrap(monkeypatch: pytest.MonkeyPatch, value: str, answers: bool,
                                  expected: str | None) -> None:
    monkeypatch.setenv("MONITOR_KAFKA_BOOTSTRAP", value)
    asked: list[str] = []

    def probe(address: str, timeout_s: float) -> bool:
        asked.append(address)
        return answers

    assert services._external("MONITOR_KAFKA_BOOTSTRAP", "127.0.0.1:19092", probe) == expected
    assert asked == ([value] if expected is not None or not answers else [])


def test_external_redis_url_on_our_port_is_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONITOR_REDIS_URL", "redis://localhost:16379/3")
    assert services._external("MONITOR_REDIS_URL", "127.0.0.1:16379", lambda url, timeout_s: True) is None
    monkeypatch.setenv("MONITOR_REDIS_URL", "redis://127.0.0.1:6379/0")
    assert services._external("MONITOR_REDIS_URL", "127.0.0.1:16379", lambda url, timeout_s: True) \
        == "redis://127.0.0.1:6379/0"
