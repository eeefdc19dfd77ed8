"""Unit tests of monitor.dev.services that start nothing: config from env, rendering, pid files."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from monitor.dev import services
from monitor.dev.services import ServiceConfig, ServicesError
from monitor.settings import Settings

ENV = (
    "MONITOR_CACHE_DIR",
    "MONITOR_STATE_DIR",
    "MONITOR_KAFKA_PORT",
    "MONITOR_KAFKA_CONTROLLER_PORT",
    "MONITOR_REDIS_PORT",
    "MONITOR_KAFKA_BOOTSTRAP",
    "MONITOR_REDIS_URL",
)


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
    assert config.kafka_bootstrap == "127.0.0.1:19092" == Settings().kafka_bootstrap
    assert config.redis_url == "redis://127.0.0.1:16379/0" == Settings().redis_url
    assert (config.kafka_remote, config.redis_remote) == (None, None)


def test_ports_come_from_the_addresses_the_worker_dials(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("MONITOR_CACHE_DIR", str(tmp_path / "cache"))
    clean_env.setenv("MONITOR_STATE_DIR", "~/state")
    clean_env.setenv("MONITOR_KAFKA_BOOTSTRAP", "localhost:29092")
    clean_env.setenv("MONITOR_REDIS_URL", "redis://127.0.0.1:26379/3")
    config = ServiceConfig.from_env()
    assert config.cache_dir == tmp_path / "cache"
    assert config.state_dir == tmp_path / "home" / "state"
    # The controller defaults to the broker's port + 1.
    assert (config.kafka_port, config.kafka_controller_port, config.redis_port) == (29092, 29093, 26379)
    assert config.kafka_bootstrap == "127.0.0.1:29092"
    assert config.redis_url == "redis://127.0.0.1:26379/3"
    clean_env.setenv("MONITOR_KAFKA_CONTROLLER_PORT", "30000")
    assert ServiceConfig.from_env().kafka_controller_port == 30000


def test_a_redis_url_without_port_is_redis_default_port(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("MONITOR_REDIS_URL", "redis://localhost")
    config = ServiceConfig.from_env()
    assert (config.redis_port, config.redis_url, config.redis_remote) == (
        6379,
        "redis://127.0.0.1:6379/0",
        None,
    )


def test_a_legacy_port_that_agrees_is_accepted(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("MONITOR_KAFKA_BOOTSTRAP", "127.0.0.1:29092")
    clean_env.setenv("MONITOR_KAFKA_PORT", "29092")
    clean_env.setenv("MONITOR_REDIS_URL", "redis://127.0.0.1:26379/0")
    clean_env.setenv("MONITOR_REDIS_PORT", "26379")
    config = ServiceConfig.from_env()
    assert (config.kafka_port, config.redis_port) == (29092, 26379)


@pytest.mark.parametrize(
    ("legacy", "value", "setting", "address"),
    [
        ("MONITOR_KAFKA_PORT", "29092", "MONITOR_KAFKA_BOOTSTRAP", None),  # the default 127.0.0.1:19092
        ("MONITOR_KAFKA_PORT", "29092", "MONITOR_KAFKA_BOOTSTRAP", "127.0.0.1:39092"),
        ("MONITOR_KAFKA_PORT", "9092", "MONITOR_KAFKA_BOOTSTRAP", "kafka.internal:9092"),
        ("MONITOR_REDIS_PORT", "26379", "MONITOR_REDIS_URL", None),
        ("MONITOR_REDIS_PORT", "26379", "MONITOR_REDIS_URL", "redis://127.0.0.1:36379/0"),
    ],
)
def test_a_legacy_port_that_disagrees_is_refused_in_one_line(
    clean_env: pytest.MonkeyPatch, legacy: str, value: str, setting: str, address: str | None
) -> None:
    clean_env.setenv(legacy, value)
    if address is not None:
        clean_env.setenv(setting, address)
    with pytest.raises(ServicesError) as refused:
        ServiceConfig.from_env()
    message = str(refused.value)
    dialled = address or getattr(Settings(), setting.removeprefix("MONITOR_").lower())
    assert message.startswith(f"{legacy}={value} disagrees with {setting}={dialled}: ")
    assert f"unset {legacy}" in message and "\n" not in message


@pytest.mark.parametrize("value", ["abc", "0", "65536", "-1", "19092.5"])
def test_from_env_rejects_bad_port(clean_env: pytest.MonkeyPatch, value: str) -> None:
    clean_env.setenv("MONITOR_REDIS_PORT", value)
    with pytest.raises(ServicesError, match="MONITOR_REDIS_PORT must be a port number"):
        ServiceConfig.from_env()
    clean_env.delenv("MONITOR_REDIS_PORT")
    clean_env.setenv("MONITOR_KAFKA_CONTROLLER_PORT", value)
    with pytest.raises(ServicesError, match="MONITOR_KAFKA_CONTROLLER_PORT must be a port number"):
        ServiceConfig.from_env()


def test_a_loopback_bootstrap_needs_a_port(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("MONITOR_KAFKA_BOOTSTRAP", "127.0.0.1")
    with pytest.raises(ServicesError, match="MONITOR_KAFKA_BOOTSTRAP=127.0.0.1 has no port"):
        ServiceConfig.from_env()


@pytest.mark.parametrize(
    ("bootstrap", "redis_url"),
    [
        ("kafka.internal:9092", "redis://redis.internal:6379/0"),
        ("127.0.0.1:9092,127.0.0.1:9093", "rediss://10.0.0.7:6380/0"),  # a list; TLS elsewhere
        ("10.0.0.5:9092", "unix:///run/redis.sock"),
        ("[2001:db8::1]:9092", "redis://:secret@127.0.0.1:6379/0"),  # a password: not a server we start
    ],
)
def test_a_non_loopback_address_is_remote(
    clean_env: pytest.MonkeyPatch, bootstrap: str, redis_url: str
) -> None:
    clean_env.setenv("MONITOR_KAFKA_BOOTSTRAP", bootstrap)
    clean_env.setenv("MONITOR_REDIS_URL", redis_url)
    config = ServiceConfig.from_env()
    assert (config.kafka_remote, config.redis_remote) == (bootstrap, redis_url)
    assert services.status(config) == {
        "kafka": f"remote at {bootstrap} (not started here)",
        "redis": f"remote at {redis_url} (not started here)",
    }


def test_a_remote_address_is_used_if_it_answers_and_never_replaced_by_a_local_one() -> None:
    asked: list[str] = []

    def probe(answer: bool) -> Callable[[str, float], bool]:
        def answers(address: str, timeout_s: float) -> bool:
            asked.append(address)
            return answer

        return answers

    assert services._remote("MONITOR_KAFKA_BOOTSTRAP", None, probe(True)) is False
    assert asked == []  # a local address is not probed as a remote one
    assert services._remote("MONITOR_KAFKA_BOOTSTRAP", "kafka.internal:9092", probe(True)) is True
    with pytest.raises(ServicesError) as refused:
        services._remote("MONITOR_REDIS_URL", "redis://redis.internal:6379/0", probe(False))
    assert asked == ["kafka.internal:9092", "redis://redis.internal:6379/0"]
    assert str(refused.value).startswith(
        "MONITOR_REDIS_URL=redis://redis.internal:6379/0 does not answer, "
        "and a local service starts only at a loopback address"
    )
    assert "\n" not in str(refused.value)


def _old_cluster_id(drawn: uuid.UUID) -> str:
    """The generator before the fix, on a given UUID."""
    return base64.urlsafe_b64encode(drawn.bytes)[:22].decode()


def test_cluster_id_never_starts_with_a_dash() -> None:
    # 0xF8 as the first byte is "-" as the first base64 digit: 1 random UUID in 64 (0xF8..0xFB).
    dashed = uuid.UUID(bytes=b"\xf8" + bytes(range(1, 16)))
    assert _old_cluster_id(dashed).startswith("-")  # what made `kafka-storage format -t ID` fail
    draws = iter([dashed, uuid.UUID(int=0), uuid.UUID(int=1), uuid.UUID(bytes=bytes(range(16)))])
    assert services.kafka_cluster_id(lambda: next(draws)) == _old_cluster_id(
        uuid.UUID(bytes=bytes(range(16)))
    )
    alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    ids = [services.kafka_cluster_id() for _ in range(5000)]
    assert all(len(i) == 22 and set(i) <= alphabet and not i.startswith("-") for i in ids)
    assert len(set(ids)) == len(ids)


def test_redis_starts_persistent_in_its_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spawned: list[list[str]] = []
    monkeypatch.setattr(services, "_spawn", lambda cmd, cwd, logfile, pidfile: spawned.append(cmd) or 1)
    config = ServiceConfig(cache_dir=tmp_path / "c", state_dir=tmp_path / "s", redis_port=26379)
    services._start_redis(config, "/usr/bin/redis-server")
    (cmd,) = spawned
    flags = dict(zip(cmd[1::2], cmd[2::2], strict=False))
    assert flags["--dir"] == str(tmp_path / "s" / "redis")
    assert (flags["--appendonly"], flags["--appendfsync"], flags["--save"]) == ("yes", "everysec", "")
    assert flags["--port"] == "26379" and flags["--bind"] == "127.0.0.1"


def test_server_properties_has_ports_and_data_dir(tmp_path: Path) -> None:
    config = ServiceConfig(
        cache_dir=tmp_path / "c", state_dir=tmp_path / "s", kafka_port=29092, kafka_controller_port=29093
    )
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
