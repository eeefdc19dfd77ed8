"""`monitor demo` watches its own worker, and a drill says when no worker is evaluating.

On the real broker and Redis; the demo runs as a user starts it (a new `python -m monitor demo`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from monitor.dev.drill import load_scenario, run_drill
from monitor.topics import ensure_topics
from tests.conftest import ROOT, free_port, unique_settings

pytestmark = pytest.mark.integration


def demo(
    env: dict[str, str], *args: str, timeout_s: float = 120
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "demo", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    return result, time.monotonic() - started


def test_the_demo_stops_with_its_workers_log_when_the_worker_dies(
    services: tuple[str, str], tmp_path: Path
) -> None:
    broken = tmp_path / "rules.yaml"
    broken.write_text("rules:\n  - id: [unclosed\n")
    result, took = demo(
        {"MONITOR_RULES_PATH": str(broken), "MONITOR_WEB_PORT": str(free_port())}, "--duration", "30"
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert took < 60
    assert "Traceback" not in result.stderr
    first, *tail = result.stderr.splitlines()
    assert first.startswith("monitor: the demo's worker (pid ") and "exited with code 1 at start" in first
    # the worker's own refusal, as its log has it
    assert any(line.strip().startswith("monitor:") and str(broken) in line for line in tail), result.stderr
    assert "t=" not in result.stdout  # no figures were shown for a worker that never ran


def test_the_demo_refuses_a_web_port_that_something_else_holds(services: tuple[str, str]) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result, took = demo({"MONITOR_WEB_PORT": str(port)}, "--duration", "30")
    assert result.returncode == 1, result.stdout + result.stderr
    assert took < 60
    assert result.stderr.splitlines() == [
        f"monitor: 127.0.0.1:{port} is already in use (another worker?), so the demo could not tell its own"
        " worker's answers from that process's; stop it or set MONITOR_WEB_PORT to a free port"
    ]
    assert "worker pid" not in result.stdout  # no worker was started


class IdleWorker:
    """Something that answers /metrics like a worker whose evaluator never ticks."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
                body = b"aimon_evaluator_tick_seconds_count 3.0\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def idle_worker() -> Iterator[IdleWorker]:
    worker = IdleWorker()
    yield worker
    worker.server.shutdown()
    worker.server.server_close()


async def test_a_drill_says_when_no_worker_is_evaluating(
    services: tuple[str, str], idle_worker: IdleWorker
) -> None:
    settings = unique_settings(*services)
    await ensure_topics(settings)
    lines: list[str] = []
    report = await run_drill(
        load_scenario(ROOT / "drills" / "outage.yaml"),
        settings,
        timeout_s=16,
        worker_url=idle_worker.url,
        progress=lines.append,
    )
    assert not report.passed
    assert lines[0].startswith("drill ")
    assert any(line.strip().startswith("… ") and "of 16s: waiting for" in line for line in lines), lines
    warnings = [line.strip() for line in lines if "no worker is evaluating" in line]
    assert warnings == [
        f"no worker is evaluating at {idle_worker.url}: start `monitor run` (its evaluator has not ticked)"
    ]
