"""Every shipped drill passes against a real `monitor run` worker on the real broker and Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from monitor.dev.drill import load_scenario, run_drill
from monitor.settings import Settings
from monitor.topics import ensure_topics
from tests.conftest import WorkerProcess, unique_settings

pytestmark = pytest.mark.integration

DRILLS = sorted((Path(__file__).resolve().parents[2] / "drills").glob("*.yaml"))


@pytest.fixture(scope="module")
async def worker(
    services: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Settings]:
    settings = unique_settings(*services)
    await ensure_topics(settings)
    process = WorkerProcess(settings, tmp_path_factory.mktemp("drills") / "worker.log")
    process.start()
    try:
        await process.wait_ready()
        yield settings
    finally:
        process.stop()


def test_the_playbook_cases_are_all_shipped() -> None:
    assert {p.stem for p in DRILLS} >= {
        "retrain-introduced-bias",
        "feature-lowered-accuracy",
        "accuracy-collapse",
        "tampered-weights",
        "training-data-exfiltration",
        "outage",
    }


@pytest.mark.parametrize("path", DRILLS, ids=lambda p: p.stem)
async def test_drill(worker: Settings, path: Path) -> None:
    report = await run_drill(load_scenario(path), worker)
    print("\n" + report.text())
    assert report.passed, report.text()
    assert all(o.delay_s is not None and o.delay_s <= o.expectation.within for o in report.outcomes)
