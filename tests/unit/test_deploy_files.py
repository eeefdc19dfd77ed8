"""docker-compose.yml against what the other deployment files and the monitor expect of it.

Docker does not run here, so the files are read: every service that Prometheus scrapes and whose
metrics the alerts and the dashboard query exists in compose, every MONITOR_* variable is a real
setting, the data that must outlive a container is on volumes, and compose's Redis persists like
the one `monitor services up` starts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.auth import TokenFileError, parse_env
from monitor.dev.services import REDIS_PERSISTENCE
from monitor.settings import Settings, Topics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


COMPOSE: dict[str, Any] = load(ROOT / "docker-compose.yml")
SERVICES: dict[str, Any] = COMPOSE["services"]
PROMETHEUS: dict[str, Any] = load(DEPLOY / "prometheus.yml")
# Which image exports the series of each metric-name prefix the queries use ("." = built from the repo).
EXPORTERS = {"aimon_": ".", "kafka_": "danielqsj/kafka-exporter"}


def environment(service: str) -> dict[str, str]:
    env = SERVICES[service].get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def dockerfile_env() -> dict[str, str]:
    """The ENV of the Dockerfile's final stage (`ENV A=1 \\ B=2`)."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    final = text.rsplit("\nFROM ", 1)[1]
    pairs: dict[str, str] = {}
    for line in final.splitlines():
        if line.startswith("ENV "):
            pairs.update(word.split("=", 1) for word in line.split()[1:])
    return pairs


def setting_variables() -> set[str]:
    """Every variable the Settings read, from their fields and prefixes (the topics under their own)."""
    prefix, topic_prefix = Settings.model_config["env_prefix"], Topics.model_config["env_prefix"]
    names = {f"{prefix}{name}".upper() for name in Settings.model_fields if name != "topics"}
    return names | {f"{topic_prefix}{name}".upper() for name in Topics.model_fields}


def scrape_jobs() -> dict[str, list[str]]:
    """job name -> the compose services it scrapes (the hosts of its targets)."""
    return {
        job["job_name"]: [t.rsplit(":", 1)[0] for static in job["static_configs"] for t in static["targets"]]
        for job in PROMETHEUS["scrape_configs"]
    }


def queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every alert rule and every dashboard query."""
    found = [
        (f"alert {rule['alert']}", rule["expr"])
        for group in load(DEPLOY / "alerts.yml")["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]

    def panels(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [p for item in items for p in [item, *panels(item.get("panels", []))]]

    board = json.loads((DEPLOY / "grafana" / "dashboards" / "aimon.json").read_text(encoding="utf-8"))
    for panel in panels(board["panels"]):
        found += [(f"panel {panel['title']!r}", target["expr"]) for target in panel.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            found.append(
                (f"variable {variable['name']}", query["query"] if isinstance(query, dict) else query)
            )
    assert len(found) > 20, "could not read the alert rules and the dashboard"
    return found


def without_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)


def test_every_scraped_target_is_a_compose_service_on_its_port() -> None:
    for job, hosts in scrape_jobs().items():
        for host in hosts:
            assert host in SERVICES, (
                f"Prometheus job {job} scrapes {host}, which docker-compose.yml does not run"
            )
    monitor_port = dockerfile_env()["MONITOR_WEB_PORT"]
    assert scrape_jobs()["aimon"] == ["monitor"]
    targets = {t for job in PROMETHEUS["scrape_configs"] for s in job["static_configs"] for t in s["targets"]}
    assert f"monitor:{environment('monitor').get('MONITOR_WEB_PORT', monitor_port)}" in targets
    assert "kafka-exporter:9308" in targets  # kafka-exporter's default --web.listen-address


def test_every_queried_metric_comes_from_a_scraped_compose_service() -> None:
    jobs = scrape_jobs()
    by_image = {
        ("." if "build" in svc else svc["image"].split(":")[0]): name for name, svc in SERVICES.items()
    }
    scraped = {host for hosts in jobs.values() for host in hosts}
    problems = []
    for where, expr in queries():
        bare = without_strings(expr)
        for name in set(re.findall(r"\b(?:aimon|kafka)_[a-z_]+\b", bare)):
            prefix = name.split("_", 1)[0] + "_"
            service = by_image.get(EXPORTERS[prefix])
            if service is None or service not in scraped:
                problems.append(
                    f"{where}: {name} needs {EXPORTERS[prefix]} run by compose and scraped by Prometheus"
                )
        for job in re.findall(r'\bjob\s*=~?\s*"([^"]*)"', expr):
            if job not in jobs:
                problems.append(f"{where}: job {job!r} is no scrape job of deploy/prometheus.yml")
    assert problems == []


def test_the_lag_queries_are_served_by_the_kafka_exporter() -> None:
    lag = [where for where, expr in queries() if "kafka_consumergroup_lag" in expr]
    assert "alert AimonConsumerLag" in lag and any(w.startswith("panel") for w in lag)
    exporter = SERVICES["kafka-exporter"]
    assert exporter["image"].startswith("danielqsj/kafka-exporter:")
    # It reads the broker the monitor uses.
    assert f"--kafka.server={environment('monitor')['MONITOR_KAFKA_BOOTSTRAP']}" in exporter["command"]


def test_every_monitor_variable_is_a_setting() -> None:
    known = setting_variables()
    assert {"MONITOR_KAFKA_BOOTSTRAP", "MONITOR_API_TOKEN", "MONITOR_TOPIC_CONTROL"} <= known
    given = {name for service in SERVICES for name in environment(service) if name.startswith("MONITOR_")}
    given |= {name for name in dockerfile_env() if name.startswith("MONITOR_")}
    assert given - known == set()
    assert {"MONITOR_ALERTMANAGER_URL", "MONITOR_API_TOKENS", "MONITOR_EVIDENCE_DIR"} <= given


def test_the_monitor_is_wired_to_alertmanager_a_token_and_an_evidence_volume() -> None:
    env = environment("monitor")
    listen = [c for c in SERVICES["alertmanager"]["command"] if c.startswith("--web.listen-address=")]
    port = listen[0].rsplit(":", 1)[1] if listen else "9093"  # Alertmanager's default
    assert env["MONITOR_ALERTMANAGER_URL"] == f"http://alertmanager:{port}"
    # From .env (or the shell), never a value in the file; compose refuses to start without them.
    assert re.fullmatch(r"\$\{MONITOR_API_TOKENS:\?[^}]+\}", env["MONITOR_API_TOKENS"])
    assert env["MONITOR_API_TOKEN"] == "${MONITOR_API_TOKEN:-}"  # the deprecated one: optional
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    [tokens] = re.findall(r"^MONITOR_API_TOKENS='(.+)'$", example, re.M)
    # The placeholder is a valid list whose hash the worker refuses: the stack never runs with it.
    with pytest.raises(TokenFileError, match="sha256 must be 64 lowercase hex digits"):
        parse_env(tokens)
    evidence = env.get("MONITOR_EVIDENCE_DIR", dockerfile_env()["MONITOR_EVIDENCE_DIR"])
    assert f"evidence:{evidence}" in SERVICES["monitor"]["volumes"]


def test_state_is_on_named_volumes_and_services_restart() -> None:
    volumes = set(COMPOSE["volumes"])
    for service, path in (
        ("kafka", environment("kafka")["KAFKA_LOG_DIRS"]),
        ("redis", "/data"),
        ("monitor", "/home/aimon/evidence"),
    ):
        mounted = {v.split(":")[1]: v.split(":")[0] for v in SERVICES[service]["volumes"]}
        assert mounted.get(path) in volumes, f"{service}: {path} is not on a named volume"
    for name, service in SERVICES.items():
        assert service.get("restart") == "unless-stopped", name


def test_compose_redis_persists_like_the_local_one() -> None:
    command = SERVICES["redis"]["command"]
    assert command[0] == "redis-server"
    flags = dict(zip(command[1::2], command[2::2], strict=True))
    assert flags == dict(zip(REDIS_PERSISTENCE[::2], REDIS_PERSISTENCE[1::2], strict=True))
    assert (flags["--appendonly"], flags["--appendfsync"]) == ("yes", "everysec")


TLS: dict[str, Any] = load(DEPLOY / "compose.tls.yml")["services"]


def test_the_tls_override_changes_services_of_compose_into_real_settings() -> None:
    assert set(TLS) <= set(SERVICES)
    env = {str(k): str(v) for k, v in TLS["monitor"]["environment"].items()}
    assert set(env) <= setting_variables()
    # Secrets come from .env, never from the file.
    for name in ("MONITOR_KAFKA_SASL_PASSWORD", "MONITOR_REDIS_PASSWORD"):
        assert re.fullmatch(r"\$\{" + name + r":\?[^}]+\}", env[name])
    # The monitor dials the broker's SASL_SSL listener and a rediss:// Redis, trusting a CA it mounts.
    kafka = {str(k): str(v) for k, v in TLS["kafka"]["environment"].items()}
    bootstrap = environment("monitor")["MONITOR_KAFKA_BOOTSTRAP"]
    assert kafka["KAFKA_ADVERTISED_LISTENERS"] == f"SASL_SSL://{bootstrap}"
    assert env["MONITOR_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["MONITOR_KAFKA_SASL_MECHANISM"] in kafka["KAFKA_SASL_ENABLED_MECHANISMS"].split(",")
    assert env["MONITOR_REDIS_URL"].startswith("rediss://redis:")
    mounted = {v.split(":")[1] for v in TLS["monitor"]["volumes"]}
    assert {env["MONITOR_KAFKA_SSL_CAFILE"], env["MONITOR_REDIS_SSL_CA"]} <= mounted
    assert "/deploy/secrets/" in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()


def test_the_tls_redis_still_persists_like_the_local_one_and_speaks_tls_only() -> None:
    command = TLS["redis"]["command"]
    persistence = list(REDIS_PERSISTENCE)
    assert command[: 1 + len(persistence)] == ["redis-server", *persistence]
    flags = dict(zip(command[1::2], command[2::2], strict=False))
    assert flags["--port"] == "0" and flags["--tls-port"] == "6379"
    assert command[command.index("default") + 1] == "off"  # only the ACL user gets in
