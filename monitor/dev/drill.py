"""Tabletop drills: produce a scenario's traffic into Kafka against a running worker, and check that
the right incidents and control messages come out in time.

A scenario (YAML, see `drills/`) has phases of traffic, placed in time relative to the drill's
start (history in the past, live traffic now), and expectations: which rule opens an incident, at
what severity and level, within how long, with which rollback and revocations; and which rules
must stay quiet. Every run uses a fresh model id, so drills never see each other's state.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import aiohttp
import orjson
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from monitor.exceptions import ConfigError, MonitorError
from monitor.rules.durations import parse_duration
from monitor.security import kafka_client_options
from monitor.settings import Settings
from monitor.topics import TOPIC_MAX_MESSAGE_BYTES


def _offset(value: str | int) -> int:
    """A time relative to the drill's start: "-8d", "-30m", "0" (seconds)."""
    text = str(value).strip()
    sign = -1 if text.startswith("-") else 1
    body = text.lstrip("+-")
    return 0 if body in ("", "0") else sign * parse_duration(body)


class Phase(BaseModel):
    """A slice of traffic."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["predictions", "access", "registry"] = "predictions"
    start: Annotated[int, BeforeValidator(_offset)]
    end: Annotated[int, BeforeValidator(_offset)]
    events: int = Field(1, ge=1, le=200_000)
    version: str = "1.0"
    accuracy: float | None = Field(None, ge=0, le=1)  # label every prediction with this accuracy
    approval: float = Field(0.6, ge=0, le=1)
    group_approval: dict[str, float] | None = None  # attribute `sex`: value -> approval rate
    error_rate: float = Field(0.0, ge=0, le=1)
    latency_ms: float = Field(40.0, ge=0)
    principal: str = "svc-training-etl"
    action: str = "read"
    resource_type: str = "training_data"
    resource: str = "s3://datasets/train"
    outcome: Literal["allowed", "denied"] = "allowed"
    bytes: int | None = None
    event: Literal["approved", "deployed", "artifact_written", "retired"] = "deployed"
    sha256: str = "0" * 64


class Expectation(BaseModel):
    """An incident that must open."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rule: str
    severity: Literal["MEDIUM", "HIGH", "CRITICAL"]
    level: int = Field(ge=0, le=4)
    within: Annotated[int, BeforeValidator(parse_duration)] = 60
    rollback_to: str | None = "unchecked"
    revoke: list[str] | None = None


class Scenario(BaseModel):
    """A drill scenario file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    model: str
    phases: list[Phase]
    expect: list[Expectation]
    quiet: list[str] = []  # rules that must not fire


def load_scenario(path: Path) -> Scenario:
    """Read and check a scenario file; a wrong one is refused with the field that is wrong."""
    try:
        return Scenario.model_validate(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise ConfigError(f"{path}: {where}: {error['msg']}") from None


PROGRESS_EVERY_S = 5.0
TICK_METRIC = "aimon_evaluator_tick_seconds_count"


class NoWorker(MonitorError):
    """Nothing answers at the worker's address, so a drill would only wait for its timeout."""


async def evaluator_ticks(session: aiohttp.ClientSession, url: str) -> float | None:
    """How many ticks the evaluator behind `url` has run (from /metrics); None if nothing answers."""
    try:
        async with session.get(f"{url.rstrip('/')}/metrics") as resp:
            if resp.status != 200:
                return None
            text = await resp.text()
    except (TimeoutError, aiohttp.ClientError):
        return None
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(TICK_METRIC))


class Watchdog:
    """Progress lines while a drill waits, and one clear line when the worker does not evaluate."""

    def __init__(self, url: str | None, progress: Callable[[str], None] | None, grace_s: float) -> None:
        self.url = url
        self.say = progress or (lambda line: None)
        self.grace_s = grace_s
        self.session: aiohttp.ClientSession | None = None
        self.first_ticks: float | None = None
        self.started = time.monotonic()
        self.last_check = self.started
        self.warned = False

    async def start(self) -> None:
        """Refuse to run a drill that nothing will evaluate (no worker answers at the URL)."""
        if self.url is None:
            return
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        self.first_ticks = await evaluator_ticks(self.session, self.url)
        if self.first_ticks is None:
            await self.stop()
            raise NoWorker(f"no worker answers at {self.url} (start `monitor run`, or pass --url)")

    async def check(self, waiting_for: str, limit_s: float) -> None:
        """Every few seconds: say what the drill waits for; warn once if the evaluator makes no progress."""
        now = time.monotonic()
        if now - self.last_check < PROGRESS_EVERY_S:
            return
        self.last_check = now
        self.say(f"  … {now - self.started:.0f}s of {limit_s:.0f}s: waiting for {waiting_for}")
        if self.session is None or self.url is None or self.warned or now - self.started < self.grace_s:
            return
        ticks = await evaluator_ticks(self.session, self.url)
        if ticks is None or ticks == self.first_ticks:
            self.warned = True
            self.say(
                f"  no worker is evaluating at {self.url}: start `monitor run`"
                + (" (it stopped answering)" if ticks is None else " (its evaluator has not ticked)")
            )

    async def stop(self) -> None:
        """Close the HTTP session."""
        if self.session is not None:
            await self.session.close()
            self.session = None


@dataclass
class Outcome:
    """How one expectation fared."""

    expectation: Expectation
    passed: bool
    detail: str
    delay_s: float | None = None


@dataclass
class DrillReport:
    """The result of a drill."""

    scenario: Scenario
    model_id: str
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Every expectation met and nothing fired that had to stay quiet."""
        return all(o.passed for o in self.outcomes)

    def text(self) -> str:
        """A report a person reads."""
        lines = [f"drill {self.scenario.name} on {self.model_id}: {'PASS' if self.passed else 'FAIL'}"]
        for o in self.outcomes:
            delay = f" after {o.delay_s:.1f}s" if o.delay_s is not None else ""
            lines.append(f"  {'✓' if o.passed else '✗'} {o.expectation.rule}{delay}: {o.detail}")
        return "\n".join(lines)


def _events(
    phase: Phase, model_id: str, now: float, rng: random.Random, tag: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    start, end = now + phase.start, now + phase.end
    out: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    for i in range(phase.events):
        ts = start + (end - start) * (i + 0.5) / phase.events
        if phase.kind == "access":
            out.append(
                {
                    "ts": ts,
                    "principal": phase.principal,
                    "action": phase.action,
                    "resource_type": phase.resource_type,
                    "resource": phase.resource,
                    "outcome": phase.outcome,
                    "model_id": model_id,
                    "source_ip": "10.0.0.9",
                    "bytes": phase.bytes,
                }
            )
            continue
        if phase.kind == "registry":
            out.append(
                {
                    "ts": ts,
                    "model_id": model_id,
                    "version": phase.version,
                    "event": phase.event,
                    "sha256": phase.sha256,
                    "actor": "drill",
                }
            )
            continue
        rid = f"{tag}-{phase.version}-{i}"
        sex = rng.choice(sorted(phase.group_approval)) if phase.group_approval else rng.choice("FM")
        approval = phase.group_approval[sex] if phase.group_approval else phase.approval
        failed = rng.random() < phase.error_rate
        approved = rng.random() < approval
        event: dict[str, Any] = {
            "model_id": model_id,
            "model_version": phase.version,
            "request_id": rid,
            "ts": ts,
            "latency_ms": phase.latency_ms,
            "groups": {"sex": sex},
            "subject_id": f"s-{rid}",
            "user_id": f"u{rng.randrange(2000)}",
        }
        if failed:
            event["error"] = "drill"
        else:
            event.update(prediction=int(approved), positive=approved, confidence=0.9)
            if phase.accuracy is not None:
                correct = rng.random() < phase.accuracy
                truth = approved if correct else not approved
                labels.append(
                    {
                        "request_id": rid,
                        "model_id": model_id,
                        "ts": min(ts + 60, now),
                        "label": int(truth),
                        "positive": truth,
                    }
                )
        out.append(event)
    return out, labels


async def run_drill(
    scenario: Scenario,
    settings: Settings,
    *,
    timeout_s: float | None = None,
    seed: int = 7,
    worker_url: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> DrillReport:
    """Produce the scenario and watch the incidents and control topics until it passes or times out.

    With `worker_url`, a drill that no worker answers for is refused before anything is produced,
    and one that sees the evaluator make no progress says so; `progress` gets the lines to show.
    """
    model_id = f"{scenario.model}-drill-{uuid.uuid4().hex[:6]}"
    report = DrillReport(scenario, model_id)
    t = settings.topics
    # A tick every eval_interval_s: three missed ones (at least 10 s) mean nothing is evaluating.
    watchdog = Watchdog(worker_url, progress, grace_s=max(10.0, 3 * settings.eval_interval_s))
    await watchdog.start()
    watchdog.say(f"drill {scenario.name} on {model_id}: producing {len(scenario.phases)} phase(s)")
    watcher = AIOKafkaConsumer(
        t.incidents,
        t.control,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="latest",
        enable_auto_commit=False,
        **kafka_client_options(settings),
    )
    await watcher.start()
    await watcher.seek_to_end()
    for partition in watcher.assignment():  # resolve "latest" now, before anything is produced
        await watcher.position(partition)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        max_request_size=TOPIC_MAX_MESSAGE_BYTES,
        **kafka_client_options(settings),
    )
    await producer.start()
    rng = random.Random(seed)
    now = time.time()
    topics = {"predictions": t.predictions, "access": t.access_logs, "registry": t.model_registry}
    try:
        for phase in scenario.phases:
            events, labels = _events(phase, model_id, now, rng, uuid.uuid4().hex[:6])
            for topic, batch in ((topics[phase.kind], events), (t.labels, labels)):
                for start in range(0, len(batch), 500):
                    await producer.send(
                        topic, orjson.dumps(batch[start : start + 500]), key=model_id.encode()
                    )
        await producer.flush()
        produced_at = time.time()
        limit = timeout_s or max(e.within for e in scenario.expect) + 30
        opened: dict[str, dict[str, Any]] = {}
        controls: list[dict[str, Any]] = []
        deadline = produced_at + limit

        # An incident may open at a lower step and rise as its detectors gather evidence: an
        # expectation is met by the incident's latest severity (from "opened" or "updated").
        def met(e: Expectation) -> bool:
            return e.rule in opened and opened[e.rule]["severity"] == e.severity

        while time.time() < deadline and not all(met(e) for e in scenario.expect):
            missing = [e.rule for e in scenario.expect if not met(e)]
            await watchdog.check(f"{', '.join(missing)} ({len(opened)}/{len(scenario.expect)} opened)", limit)
            for records in (await watcher.getmany(timeout_ms=250)).values():
                for record in records:
                    body = orjson.loads(record.value)
                    if body.get("model_id") != model_id:
                        continue
                    if record.topic == t.control:
                        controls.append(body)
                    elif body["event"] == "opened":
                        opened.setdefault(body["rule"], {**body, "_seen": time.time()})
                    elif body["event"] == "updated" and body["rule"] in opened:
                        seen = opened[body["rule"]]
                        if body["id"] == seen["id"] and body["severity"] != seen["severity"]:
                            opened[body["rule"]] = {**body, "_seen": time.time()}
        await asyncio.sleep(1.5)  # let the control message of the last incident arrive
        for records in (await watcher.getmany(timeout_ms=500)).values():
            controls += [orjson.loads(r.value) for r in records if r.topic == t.control]
        controls = [c for c in controls if c.get("model_id") == model_id]
    finally:
        await producer.stop()
        await watcher.stop()
        await watchdog.stop()
    for expectation in scenario.expect:
        report.outcomes.append(_judge(expectation, opened.get(expectation.rule), controls, produced_at))
    for rule in scenario.quiet:
        if rule in opened:
            report.outcomes.append(
                Outcome(
                    Expectation(rule=rule, severity="MEDIUM", level=0),
                    False,
                    "fired but should have stayed quiet",
                )
            )
    return report


def _judge(
    e: Expectation, incident: dict[str, Any] | None, controls: list[dict[str, Any]], produced_at: float
) -> Outcome:
    if incident is None:
        return Outcome(e, False, f"no incident within {e.within}s")
    delay = max(0.0, incident["_seen"] - produced_at)
    problems = []
    if incident["severity"] != e.severity:
        problems.append(f"severity {incident['severity']}, wanted {e.severity}")
    mine = [c for c in controls if incident["id"] in c["incident_ids"]]
    if not mine:
        problems.append("no control message names it")
    else:
        last = mine[-1]
        if last["level"] < e.level:
            problems.append(f"level {last['level']}, wanted {e.level}")
        if e.rollback_to != "unchecked" and last["rollback_to"] != e.rollback_to:
            problems.append(f"rollback_to {last['rollback_to']}, wanted {e.rollback_to}")
        if e.revoke is not None and sorted(last["revoke_principals"]) != sorted(e.revoke):
            problems.append(f"revoke {last['revoke_principals']}, wanted {e.revoke}")
    if delay > e.within:
        problems.append(f"took {delay:.1f}s, allowed {e.within}s")
    detail = "; ".join(problems) or f"{incident['severity']} level {e.level} ({incident['id']})"
    return Outcome(e, not problems, detail, delay)
