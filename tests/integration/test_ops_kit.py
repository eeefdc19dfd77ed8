"""The operations kit in deploy/: alert rules and their unit tests, the Prometheus and Alertmanager
configurations, the Grafana dashboard and provisioning, and their wiring in docker-compose.yml.

Needs `promtool` (Debian package `prometheus`) and, for the Alertmanager check, `amtool` (Debian
package `prometheus-alertmanager`). Docker does not run here, so the compose file is checked by
reading it, not by starting it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "alerts.yml"
ALERT_TESTS = DEPLOY / "alerts.test.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus.yml"
ALERTMANAGER_CONFIG = DEPLOY / "alertmanager.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "aimon.json"
GRAFANA_DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_DASHBOARDS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "aimon.yml"
COMPOSE = ROOT / "docker-compose.yml"
METRICS_SOURCES = (ROOT / "monitor" / "metrics.py", ROOT / "monitor" / "model_metrics.py")

# Metrics the queries may use that the daemon does not export: Prometheus' own scrape health, and
# kafka-exporter's consumer lag (true lag needs the brokers' end offsets, see deploy/alerts.yml).
EXTERNAL_METRICS = {"up", "kafka_consumergroup_lag"}

DS_VARIABLE = "${DS_PROMETHEUS}"


# --------------------------------------------------------------------------------------- helpers


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed: run `apt-get install prometheus` (Debian's package; "
            "it ships /usr/bin/promtool). The ops-kit checks cannot run without it."
        )
    return path


def run(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited {result.returncode}\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def exported_metric_names() -> set[str]:
    """Every series name the daemon can expose, from the text of the modules that define them."""
    text = "\n".join(source.read_text(encoding="utf-8") for source in METRICS_SOURCES)
    kinds = "Counter|Gauge|Histogram|Summary|GaugeMetricFamily|CounterMetricFamily|HistogramMetricFamily"
    found = re.findall(rf"\b({kinds})\(\s*\"(aimon_[a-z_]+)\"", text)
    names: set[str] = set()
    for kind, name in found:
        if kind in ("Counter", "CounterMetricFamily"):
            base = name.removesuffix("_total")
            names |= {f"{base}_total", f"{base}_created"}
        elif kind in ("Histogram", "HistogramMetricFamily"):
            names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum", f"{name}_created"}
        elif kind == "Summary":
            names |= {name, f"{name}_count", f"{name}_sum", f"{name}_created"}
        else:
            names.add(name)
    # A regex that stopped matching after a refactor must fail here, not pass every check vacuously.
    assert {
        "aimon_ready",
        "aimon_messages_consumed_total",
        "aimon_evaluator_tick_seconds_bucket",
        "aimon_model_predictions",
    } <= names, f"could not read the metric names of {METRICS_SOURCES}"
    return names


AIMON_NAME = re.compile(r"aimon_[a-z_]+")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENT = re.compile(r"(?<![\w.$:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:]|\s*\()")
_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
    "atan2",
    "start",
    "end",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a lexical approximation, enough for our queries)."""
    rest = _STRING.sub('""', expr)
    rest = _MATCHERS.sub("", rest)
    rest = _GROUPING.sub("", rest)
    rest = _RANGE.sub("", rest)
    names = {m for m in _IDENT.findall(rest) if m.lower() not in _KEYWORDS}
    # The aimon_ names anywhere outside string literals (label values), whatever the tokens missed.
    return names | set(AIMON_NAME.findall(_STRING.sub('""', expr)))


def grafana_to_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced, so that promtool can parse it."""
    expr = re.sub(r"\$__(rate_interval|interval|range)\b", "5m", expr)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)  # the remaining variables are regex label values


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable of the dashboard."""
    queries: list[tuple[str, str]] = []
    for panel in all_panels(dashboard()["panels"]):
        for target in panel.get("targets", []):
            queries.append((f"panel {panel['id']} {panel['title']!r} {target['refId']}", target["expr"]))
    return queries


def variable_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of the query variables; `label_values(expr, label)` becomes `expr`."""
    out = []
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", text)
            out.append((f"variable {variable['name']}", match.group(1) if match else text))
    return out


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"] if "alert" in rule]


# --------------------------------------------------------------------------------------- alert rules


def test_alert_rules_are_valid() -> None:
    result = run(promtool(), "check", "rules", str(ALERTS))
    assert_ok(result)


def test_alert_rule_unit_tests_pass() -> None:
    result = run(promtool(), "test", "rules", str(ALERT_TESTS))
    assert_ok(result)
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    fired: set[tuple[str, str]] = set()
    silent: set[str] = set()
    for case in load_yaml(ALERT_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            expected = check.get("exp_alerts") or []
            if not expected:
                silent.add(check["alertname"])
            for alert in expected:
                fired.add((check["alertname"], alert["exp_labels"]["severity"]))
                assert set(alert["exp_annotations"]) == {"summary", "description", "runbook_url"}
    rules = {(rule["alert"], rule["labels"]["severity"]) for rule in alert_rules()}
    assert rules - fired == set(), "alerts without a test where they fire"
    assert {name for name, _ in rules} - silent == set(), "alerts without a test where they stay silent"
    asked = {
        "AimonWorkerDown",
        "AimonNotReady",
        "AimonIngestStalled",
        "AimonConsumerLag",
        "AimonDeadLettersRising",
        "AimonEvaluatorSlow",
        "AimonEvaluatorFailing",
        "AimonRedisRetries",
    }
    assert asked <= {name for name, _ in rules}


def test_every_alert_tells_the_operator_what_to_check() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert "Check first" in rule["annotations"]["description"], rule["alert"]


def test_every_alert_links_a_runbook_section_that_exists() -> None:
    for rule in alert_rules():
        path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        doc = ROOT / path
        assert doc.is_file(), f"{rule['alert']}: {path} does not exist"
        # GitHub's heading anchors: lower case, spaces to dashes, punctuation dropped
        anchors = {
            re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            for line in doc.read_text(encoding="utf-8").splitlines()
            if line.startswith("#")
        }
        assert anchor in anchors, f"{rule['alert']}: no heading for #{anchor} in {path}"


def test_alert_rules_reference_only_exported_metrics() -> None:
    exported = exported_metric_names()
    for rule in alert_rules():
        unknown = metric_names(rule["expr"]) - exported - EXTERNAL_METRICS
        assert unknown == set(), f"{rule['alert']}: {rule['expr']!r} uses {sorted(unknown)}"


# --------------------------------------------------------------------------------------- configurations


def test_prometheus_config_is_valid(tmp_path: Path) -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    rule_files = config.get("rule_files") or []
    assert "alerts.yml" in [Path(name).name for name in rule_files]
    # In the container the rule files sit beside the config; here they are in deploy/. Relative
    # entries resolve against the config's directory either way; absolute ones are pointed at deploy/.
    config["rule_files"] = [str(DEPLOY / Path(name).name) for name in rule_files]
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = run(promtool(), "check", "config", str(copy))
    assert_ok(result)
    assert "1 rule files found" in result.stdout + result.stderr


def test_alertmanager_config_is_valid() -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip("amtool is not installed (Debian package prometheus-alertmanager)")
    assert_ok(run(amtool, "check-config", str(ALERTMANAGER_CONFIG)))


def test_compose_wires_rules_alertmanager_and_grafana() -> None:
    services = load_yaml(COMPOSE)["services"]
    assert {"kafka", "redis", "monitor", "prometheus", "alertmanager", "grafana"} <= set(services)

    def mounts(service: str) -> dict[str, str]:
        pairs = (volume.split(":")[:2] for volume in services[service].get("volumes", []))
        return {str((ROOT / host).resolve()): container for host, container in pairs}

    prometheus = mounts("prometheus")
    config_dir = Path(prometheus[str(PROMETHEUS_CONFIG)]).parent
    for name in load_yaml(PROMETHEUS_CONFIG)["rule_files"]:
        in_container = Path(name) if Path(name).is_absolute() else config_dir / name
        assert prometheus.get(str(DEPLOY / Path(name).name)) == str(in_container), name

    targets = [
        target
        for manager in load_yaml(PROMETHEUS_CONFIG)["alerting"]["alertmanagers"]
        for static in manager["static_configs"]
        for target in static["targets"]
    ]
    assert "alertmanager:9093" in targets
    alertmanager = services["alertmanager"]
    config_path = mounts("alertmanager")[str(ALERTMANAGER_CONFIG)]
    assert f"--config.file={config_path}" in alertmanager.get("command", [])

    grafana = mounts("grafana")
    assert grafana[str(GRAFANA_DATASOURCES.parent)] == "/etc/grafana/provisioning/datasources"
    assert grafana[str(GRAFANA_DASHBOARDS.parent)] == "/etc/grafana/provisioning/dashboards"
    provider_paths = [p["options"]["path"] for p in load_yaml(GRAFANA_DASHBOARDS)["providers"]]
    assert grafana[str(DASHBOARD.parent)] in provider_paths


def test_grafana_datasource_is_the_dashboards_default() -> None:
    (source,) = load_yaml(GRAFANA_DATASOURCES)["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    (variable,) = [v for v in dashboard()["templating"]["list"] if v["name"] == "DS_PROMETHEUS"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    assert variable["current"]["value"] == source["uid"]


# --------------------------------------------------------------------------------------- dashboard


def test_dashboard_structure() -> None:
    board = dashboard()
    assert board["schemaVersion"] == 39
    panels = list(all_panels(board["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": DS_VARIABLE}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DS_VARIABLE, panel["title"]
    (impact,) = [p for p in panels if "aimon_disparate_impact_ratio" in json.dumps(p.get("targets"))]
    steps = impact["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert 0.8 in [step["value"] for step in steps]
    assert impact["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"].startswith("line")


def test_dashboard_shows_what_the_operators_asked_for() -> None:
    used = set().union(*(metric_names(expr) for _, expr in dashboard_queries()))
    assert {
        "aimon_events_ingested_total",
        "aimon_dead_letters_total",
        "aimon_model_predictions_total",
        "aimon_model_error_ratio",
        "aimon_model_latency_seconds_bucket",
        "aimon_group_accuracy",
        "aimon_group_false_negative_rate",
        "aimon_model_accuracy",
        "aimon_model_label_coverage",
        "aimon_disparate_impact_ratio",
        "aimon_incidents_open",
        "aimon_escalation_level",
        "aimon_evaluator_tick_seconds_bucket",
        "aimon_detection_lag_seconds_bucket",
    } <= used


def test_dashboard_queries_reference_only_exported_metrics() -> None:
    exported = exported_metric_names()
    queries = dashboard_queries() + variable_queries()
    assert len(queries) > 20
    problems = []
    for where, expr in queries:
        unknown = metric_names(expr) - exported - EXTERNAL_METRICS
        if unknown:
            problems.append(f"{where}: {expr!r} uses {sorted(unknown)}")
    assert problems == []


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Every panel query parses (as a recording rule, after Grafana's variables are substituted)."""
    queries = dashboard_queries()
    rules = [
        {"record": f"dashboard:query_{i}", "expr": grafana_to_promql(expr)}
        for i, (_, expr) in enumerate(queries)
    ]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    result = run(promtool(), "check", "rules", str(path))
    index = "\n".join(f"dashboard:query_{i} = {where}" for i, (where, _) in enumerate(queries))
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\nwhere the rules come from:\n{index}"


def test_metric_name_extraction() -> None:
    expr = (
        'sum by (topic) (rate(aimon_events_ingested_total{topic=~"$t", job="aimon_x"}'
        "[$__rate_interval] offset 1h))"
        " / on (instance) group_left (model_id) up and kafka_consumergroup_lag > 1e3 or vector(0)"
    )
    assert metric_names(expr) == {"aimon_events_ingested_total", "up", "kafka_consumergroup_lag"}
    assert metric_names("histogram_quantile(0.99, sum by (le) (rate(aimon_nope_bucket[5m]))) > 0.8") == {
        "aimon_nope_bucket"
    }
