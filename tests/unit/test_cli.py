"""The `monitor` command, through `main(argv)`: its parser, its output and its errors.

The worker's HTTP API is stood in for by a local http.server that answers canned JSON and records
every request (so a usage error can be shown to send none); nothing here needs Kafka or Redis.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from monitor.cli import main
from monitor.incidents.evidence import write_evidence
from tests.conftest import ROOT, free_port

INCIDENT = {
    "id": "INC-20260101-abcd1234",
    "category": "performance",
    "rule": "error-rate",
    "model_id": "credit",
    "model_version": None,
    "group": None,
    "severity": "HIGH",
    "level": 2,
    "status": "open",
    "opened_at": 1767225600.0,
    "updated_at": 1767225660.0,
    "resolved_at": None,
    "observation": {
        "value": 0.0812345,
        "threshold": 0.05,
        "window_s": 86400,
        "samples": 1200,
        "baseline": None,
        "test": {"interval": [0.07, 0.09], "p_value": 0.00123, "significant": True},
    },
    "summary": "error rate 8.1 % over 24h",
    "evidence_ref": None,
    "remediation": ["Roll back"],
    "timeline": [{"at": 1767225600.0, "what": "opened", "by": None}],
}


class Stub:
    """A stand-in for the worker's API: path -> (status, body); every request is recorded."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], tuple[int, Any]] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self.authorizations: list[str | None] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                stub.requests.append((method, self.path, body))
                stub.authorizations.append(self.headers.get("Authorization"))
                status, payload = stub.routes.get(
                    (method, self.path), (404, {"error": f"no route {self.path}"})
                )
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
                self._answer("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._answer("POST")

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[Stub]:
    server = Stub()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MONITOR_* setting of the developer's shell leaks into these tests."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("MONITOR_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("USER", "alice")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


HELP = {
    (): [
        "incidents",
        "models",
        "audit",
        "evidence",
        "rules",
        "services",
        "run",
        "demo",
        "drill",
        "--version",
        "--verbose",
    ],
    ("incidents",): ["list", "show", "ack", "mitigate", "resolve"],
    ("incidents", "list"): [
        "--status",
        "open|acknowledged|mitigated|resolved|all",
        "--model",
        "--limit",
        "--json",
        "--url",
    ],
    ("incidents", "show"): ["ID", "--json"],
    ("incidents", "ack"): ["ID", "--by", "--why", "Deprecated"],
    ("incidents", "mitigate"): ["ID", "--by", "--why"],
    ("incidents", "resolve"): ["ID", "--by", "--why"],
    ("models",): ["status", "escalate", "release"],
    ("tokens",): ["add", "hash", "list"],
    ("tokens", "add"): ["PRINCIPAL", "--role", "viewer|commander|admin", "--file", "--json"],
    ("tokens", "list"): ["--file", "--json"],
    ("models", "status"): ["[MODEL]", "--json"],
    ("models", "escalate"): ["MODEL", "--level", "--by", "--why"],
    ("models", "release"): ["MODEL", "--by", "--why"],
    ("audit",): ["verify", "list", "restore"],
    ("audit", "verify"): ["--no-anchor", "--json"],
    ("audit", "list"): ["--who", "--action", "--target", "--since", "--until", "--limit", "--json"],
    ("audit", "restore"): ["--json"],
    ("evidence",): ["verify"],
    ("evidence", "verify"): ["ID", "--dir", "--json"],
    ("rules",): ["check"],
    ("rules", "check"): ["[PATH]"],
    ("services",): ["up", "down", "status"],
    ("services", "status"): ["--json"],
    ("run",): ["--web-port", "--log-level", "--rules"],
    ("demo",): ["--duration", "--rate"],
    ("drill",): ["SCENARIOS...", "--url", "--json"],
}


@pytest.mark.parametrize("words", list(HELP), ids=lambda w: " ".join(w) or "monitor")
def test_every_command_has_its_help(capsys: pytest.CaptureFixture[str], words: tuple[str, ...]) -> None:
    code, out, _ = run(capsys, *words, "--help")
    assert code == 0
    assert out.startswith(f"Usage: monitor {' '.join(words)}".rstrip())
    for expected in HELP[words]:
        assert expected in out, (expected, out)


def test_version_comes_from_the_distribution(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert (code, out) == (0, f"monitor {version('aimon')}\n")


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["incidents", "show"], "Missing argument 'ID'"),
        (["incidents", "ack"], "Missing argument 'ID'"),
        (["incidents", "ack", "INC-1"], "Missing option '--why'"),
        (["incidents", "resolve", "INC-1", "--by", "bob"], "Missing option '--why'"),
        (["models", "escalate", "m1", "--why", "x"], "Missing option '--level'"),
        (["models", "escalate", "m1", "--level", "7", "--why", "x"], "7 is not in the range 0<=x<=4"),
        (["models", "release", "--why", "x"], "Missing argument 'MODEL'"),
        (["incidents", "list", "--status", "bogus"], "'bogus' is not one of"),
        (["incidents", "list", "--limit", "0"], "0 is not in the range 1<=x<=1000"),
        (["drill"], "Missing argument 'SCENARIOS...'"),
    ],
)
def test_a_missing_or_wrong_argument_is_a_usage_error_before_any_request(
    capsys: pytest.CaptureFixture[str], stub: Stub, argv: list[str], complaint: str
) -> None:
    code, out, err = run(capsys, *argv, "--url", stub.url)
    assert code == 2
    assert complaint in err and err.startswith("Usage: monitor ")
    assert stub.requests == []


def test_an_action_is_posted_with_the_token_and_without_by(
    capsys: pytest.CaptureFixture[str], stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MONITOR_CLI_TOKEN", "alice-token")
    monkeypatch.setenv("MONITOR_API_TOKEN", "the-shared-one")  # MONITOR_CLI_TOKEN comes first
    stub.routes[("POST", "/incidents/INC-1/acknowledge")] = (
        200,
        {"command": "c1", "ok": True, "error": None, "incident": {**INCIDENT, "status": "acknowledged"}},
    )
    code, out, err = run(capsys, "incidents", "ack", "INC-1", "--why", "on it", "--url", stub.url)
    assert code == 0 and err == ""
    assert stub.requests == [("POST", "/incidents/INC-1/acknowledge", {"why": "on it"})]
    assert stub.authorizations == ["Bearer alice-token"]
    assert out == "INC-1: acknowledged (command c1)\n"


def test_by_is_sent_as_a_deprecated_claim(capsys: pytest.CaptureFixture[str], stub: Stub) -> None:
    stub.routes[("POST", "/models/m1/release")] = (200, {"command": "c4", "ok": True, "error": None})
    code, _, err = run(capsys, "models", "release", "m1", "--by", "dana", "--why", "x", "--url", stub.url)
    assert code == 0 and "--by is deprecated" in err
    assert stub.requests == [("POST", "/models/m1/release", {"why": "x", "by": "dana"})]


def test_reads_send_the_token_and_models_are_read_page_by_page(
    capsys: pytest.CaptureFixture[str], stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MONITOR_API_TOKEN", "shared")  # still read when MONITOR_CLI_TOKEN is unset
    row = {"level": 0, "override": None, "seq": 0, "open_incidents": 0, "known_from": ["predictions"]}
    stub.routes[("GET", "/models")] = (200, {"models": [{**row, "model_id": "a"}], "next": "a"})
    stub.routes[("GET", "/models?after=a")] = (200, {"models": [{**row, "model_id": "b"}], "next": None})
    code, out, _ = run(capsys, "models", "status", "--json", "--url", stub.url)
    assert code == 0
    assert [m["model_id"] for m in json.loads(out)] == ["a", "b"]
    assert [r[1] for r in stub.requests] == ["/models", "/models?after=a"]
    assert stub.authorizations == ["Bearer shared", "Bearer shared"]


def test_escalate_sends_the_level(capsys: pytest.CaptureFixture[str], stub: Stub) -> None:
    stub.routes[("POST", "/models/m%2F1/escalate")] = (200, {"command": "c2", "ok": True, "error": None})
    code, out, _ = run(
        capsys,
        "models",
        "escalate",
        "m/1",
        "--level",
        "3",
        "--by",
        "bob",
        "--why",
        "drill",
        "--url",
        stub.url,
    )
    assert code == 0
    assert stub.requests == [("POST", "/models/m%2F1/escalate", {"by": "bob", "why": "drill", "level": 3})]
    assert stub.authorizations == [None]  # no token configured: the API will say 401
    assert out == "m/1: held at level 3 (command c2)\n"


def test_a_queued_action_says_so(capsys: pytest.CaptureFixture[str], stub: Stub) -> None:
    stub.routes[("POST", "/incidents/INC-1/resolve")] = (
        202,
        {"command": "c3", "status": "queued: the evaluator has not applied it yet"},
    )
    code, out, _ = run(capsys, "incidents", "resolve", "INC-1", "--why", "fixed", "--url", stub.url)
    assert (code, out) == (0, "INC-1: queued: the evaluator has not applied it yet (command c3)\n")


@pytest.mark.parametrize("argv", [["incidents", "list"], ["models", "status"], ["models", "status", "m1"]])
def test_an_empty_list_prints_none(capsys: pytest.CaptureFixture[str], stub: Stub, argv: list[str]) -> None:
    stub.routes[("GET", "/incidents?status=open")] = (200, {"incidents": []})
    stub.routes[("GET", "/models")] = (200, {"models": []})
    stub.routes[("GET", "/models/m1")] = (
        200,
        {
            "model_id": "m1",
            "level": 0,
            "override": None,
            "seq": 0,
            "control": None,
            "versions": [],
            "open_incidents": [],
        },
    )
    code, out, _ = run(capsys, *argv, "--url", stub.url)
    assert code == 0
    assert out.splitlines()[-1] == "(none)"
    assert "None" not in out


def test_list_passes_the_filters_and_prints_a_plain_table(
    capsys: pytest.CaptureFixture[str], stub: Stub
) -> None:
    stub.routes[("GET", "/incidents?status=all&model=credit&limit=5")] = (200, {"incidents": [INCIDENT]})
    code, out, _ = run(
        capsys, "incidents", "list", "--status", "all", "--model", "credit", "--limit", "5", "--url", stub.url
    )
    assert code == 0
    assert [r[1] for r in stub.requests] == ["/incidents?status=all&model=credit&limit=5"]
    header, row = out.splitlines()
    assert header.split() == [
        "ID",
        "STATUS",
        "SEVERITY",
        "LEVEL",
        "MODEL",
        "RULE",
        "GROUP",
        "OPENED",
        "(UTC)",
    ]
    assert row.split() == [
        "INC-20260101-abcd1234",
        "open",
        "HIGH",
        "2",
        "credit",
        "error-rate",
        "-",
        "2026-01-01",
        "00:00",
    ]
    assert "\x1b[" not in out  # no colour codes when stdout is not a terminal


def test_json_is_the_api_record(capsys: pytest.CaptureFixture[str], stub: Stub) -> None:
    stub.routes[("GET", "/incidents?status=open")] = (200, {"incidents": [INCIDENT]})
    code, out, _ = run(capsys, "incidents", "list", "--json", "--url", stub.url)
    assert code == 0 and json.loads(out) == [INCIDENT]


def test_show_has_no_raw_none_or_seconds(capsys: pytest.CaptureFixture[str], stub: Stub) -> None:
    stub.routes[("GET", "/incidents/INC-20260101-abcd1234")] = (200, INCIDENT)
    code, out, _ = run(capsys, "incidents", "show", "INC-20260101-abcd1234", "--url", stub.url)
    assert code == 0
    assert "None" not in out and "86400" not in out
    lines = [line.strip() for line in out.splitlines()]
    assert "window_s   24h" in lines
    assert "value      0.08123" in lines
    assert "baseline   -" in lines
    assert "model     credit -" in lines
    assert "2026-01-01 00:00:00  opened  by=-" in lines
    assert "test       interval=[0.07, 0.09], p_value=0.00123, significant=yes" in lines


def test_an_api_error_is_one_line_with_status_and_message(
    capsys: pytest.CaptureFixture[str], stub: Stub
) -> None:
    stub.routes[("GET", "/incidents/INC-9")] = (404, {"error": "no incident INC-9"})
    code, out, err = run(capsys, "incidents", "show", "INC-9", "--url", stub.url)
    assert (code, out) == (1, "")
    assert err == f"monitor: GET {stub.url}/incidents/INC-9: 404 no incident INC-9\n"


def test_no_worker_is_one_line_that_says_what_to_do(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, _, err = run(capsys, "models", "status", "--url", url)
    assert code == 1
    assert err == f"monitor: no worker answers at {url} (start `monitor run`, or pass --url)\n"


def test_audit_verify_without_redis_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    monkeypatch.setenv("MONITOR_REDIS_URL", url)
    code, out, err = run(capsys, "audit", "verify")
    assert code == 1 and out == ""
    assert err.startswith(f"monitor: Redis at {url} does not answer (") and err.count("\n") == 1


def test_a_drill_with_no_worker_is_refused_before_it_produces(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = run(
        capsys,
        "--kafka-bootstrap",
        "127.0.0.1:1",
        "drill",
        str(ROOT / "drills" / "outage.yaml"),
        "--url",
        url,
    )
    assert code == 1
    assert err == f"monitor: no worker answers at {url} (start `monitor run`, or pass --url)\n"


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"MONITOR_WEBHOOK_URLS": "http://x"},
            """monitor: bad setting MONITOR_WEBHOOK_URLS: must be a JSON list of URLs, e.g. ["http://x"] (got 'http://x')""",
        ),
        (
            {"MONITOR_PARTITIONS": "zero"},
            "monitor: bad setting MONITOR_PARTITIONS: Input should be a valid integer, unable to parse "
            "string as an integer (got 'zero')",
        ),
        (
            {"MONITOR_REDIS_URL": "localhost:6379"},
            "monitor: bad setting MONITOR_REDIS_URL: Value error, must start with redis://, rediss:// "
            "or unix://, e.g. redis://127.0.0.1:6379/0 (got 'localhost:6379')",
        ),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_variable(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    stub: Stub,
    env: dict[str, str],
    line: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = run(capsys, "incidents", "list", "--url", stub.url)
    assert (code, out, err) == (2, "", line + "\n")
    assert stub.requests == []


def test_the_console_script_prints_one_line_for_a_bad_setting() -> None:
    """As a user types it: a new process, so nothing of pytest's logging set-up hides a traceback."""
    env = {"MONITOR_WEBHOOK_URLS": "http://x", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "incidents", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        """monitor: bad setting MONITOR_WEBHOOK_URLS: must be a JSON list of URLs, e.g. ["http://x"] (got 'http://x')"""
    ]


def test_library_logs_are_off_unless_verbose(capsys: pytest.CaptureFixture[str], stub: Stub) -> None:
    stub.routes[("GET", "/models")] = (200, {"models": []})
    run(capsys, "models", "status", "--url", stub.url)
    assert not logging.getLogger("aiokafka").isEnabledFor(logging.CRITICAL)
    assert not logging.getLogger("faust").isEnabledFor(logging.CRITICAL)
    run(capsys, "--verbose", "models", "status", "--url", stub.url)
    assert logging.getLogger("aiokafka").level == logging.NOTSET


def _bundle(root: Path) -> None:
    write_evidence(root, "INC-1", {"incident.json": b'{"id": "INC-1"}', "window.json": b"[1, 2, 3]"})


def test_evidence_verify_intact(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _bundle(tmp_path)
    code, out, _ = run(capsys, "evidence", "verify", "INC-1", "--dir", str(tmp_path))
    assert (code, out) == (0, f"evidence of INC-1 intact ({tmp_path / 'INC-1'})\n")


def test_evidence_verify_unknown_id_is_not_tampering(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _bundle(tmp_path)
    code, out, err = run(capsys, "evidence", "verify", "INC-2", "--dir", str(tmp_path))
    assert (code, out, err) == (2, "", f"monitor: no evidence for INC-2 under {tmp_path}\n")


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        (
            lambda d: (d / "window.json").write_bytes(b"[1, 2, 4]"),
            "window.json: changed (sha256 does not match the manifest)",
        ),
        (lambda d: (d / "window.json").unlink(), "window.json: missing"),
        (lambda d: (d / "extra.txt").write_text("x"), "extra.txt: not in the manifest"),
        (lambda d: (d / "manifest.json").write_text("{not json"), "manifest.json: unreadable"),
    ],
)
def test_evidence_verify_tampered_bundle(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tamper: Any, problem: str
) -> None:
    _bundle(tmp_path)
    tamper(tmp_path / "INC-1")
    code, out, err = run(capsys, "evidence", "verify", "INC-1", "--dir", str(tmp_path))
    assert code == 1 and out == ""
    assert err.startswith(f"TAMPERED INC-1: {problem}")
    code, out, _ = run(capsys, "evidence", "verify", "INC-1", "--dir", str(tmp_path), "--json")
    body = json.loads(out)
    assert code == 1 and body["ok"] is False and body["problems"][0].startswith(problem)


def test_rules_check_of_the_shipped_rules(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "rules", "check", str(ROOT / "monitor" / "rules" / "default.yaml"))
    assert code == 0 and out.startswith("OK: ")
