"""Evaluator scale: how long one evaluation tick takes for N models x 20 groups, all default rules.

Issue 13: "1,000 models x 20 groups, all default rules, <= 250 ms per tick on one worker; the table for
10 / 100 / 1,000 / 10,000 models."

Population. For each N a fresh Redis prefix is filled at steady state by `bench/_population.py` (see
its docstring: bucket hashes are server-side COPYs of template buckets computed with the ingest fold,
checked field by field against `apply_predictions`/`apply_labels` at start; each model's totals hash
holds every bucket counter of every version since its first event, as ingest writes it). Every model
has version 1; every other model also runs version 2 as a 50/50 canary for the last 48 h (so N models
= 1.5 N versions); 60 predictions/min per model (1,000 models = 1,000 predictions/s); 20 group values
(sex 2, age_band 6, zip3 12); labels joined (50 % of the last hour, 80 % before); latency histogram;
two output flags; users seen / served sets and the totals hash; per version 60 minute buckets and 360
hour buckets (15 days). Model 0 is `credit-scoring` (the one model with a published minimum accuracy
in monitor/rules/default.yaml).

What a tick does (monitor/evaluator.py, monitor/detection.py): every tick reads every model's totals
hash and steps the sequential detectors (one numpy CUSUM bank over every row of every model); the
windows (for display, the windowed rules and the boundaries estimated from data) are read only for
the versions `Detection.due` picks: all of them below 32 versions, else a share of
2 * versions * tick / window_refresh_s per tick (50 at 1,000 models), the new versions and the
models with a row in alarm or an open incident.

Ticks. A real `Evaluator` (monitor/rules/default.yaml, an in-memory publisher, a temporary evidence
dir) ticks with an injected event clock stepping 1 s per tick, as in production, and an injected
monotonic clock for the `WindowReader`'s closed-hour cache (refreshed every 60 s):
  cold     the first tick: empty reader cache, every closed hour read (335 per version), and every
           version new to the detectors (every row created, every version's windows read and its
           boundaries stated)
  warm     >= 5 ticks 1 s apart. Before them every version is marked as last read long ago, so each
           warm tick reads its full share of windows (the most `due` reads in steady state; in a
           real run the reads spread out and a tick often reads fewer)
  refresh  60 s of monotonic time later: the reader's caches expire for the versions read
  breach   ~1 % of models breach in the current minute (half: a retry storm of 240 requests, 4x
           the model's normal rate for a minute, 40 % failing: the error-rate detector needs its
           min_samples of 200 events since the change, so 60 requests could never open it; half: a
           burst of 2,400 decisions approving no woman); the tick that opens their incidents
           (evidence files, control messages)
  after    the next tick, with those incidents open
Everything else is healthy: no incident opens before the breach (checked).

Above --prime-above models (default 300) the cold read would hold every closed hour of every version
as Python objects while it sums them, so it is given --cold-guard-s and then the reader's cache is
primed with what a cold read leaves in it, computed from the template counters the buckets were
copied from (checked equal to a real cold read at the smallest N); the "first" tick after priming is
still cold for the detectors (every row new, every version read and stated). The cold read itself
is estimated from the per-hour-bucket cost measured at the largest N that ran it (or --hour-cost-ms).

Each tick is also split into phases by timing wrappers around evaluator/detection/reader functions
(monkeypatched at run time; nothing under monitor/ is edited), and the Redis server's own time for
HGETALL/ZCOUNT is read from INFO commandstats (shared server: includes other clients' calls).

Usage: .venv/bin/python bench/evaluator_scale.py [--models 10,100,1000] [--warm 5]
           [--history-hours 360] [--prime-above 300] [--profile] [--profilers cprofile,pyinstrument]
           [--profile-out DIR] [--hour-cost-ms MS]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import gc
import io
import logging
import math
import pstats
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import monitor.stats as stats_module  # noqa: E402
import monitor.store.windows as windows_module  # noqa: E402
from bench._population import (  # noqa: E402
    Population,
    closed_hours,
    count_prefix,
    delete_prefix,
    populate,
    verify_against_ingest,
    write_breach,
)
from monitor.aggregates.window import (
    VersionWindows,  # noqa: E402
    WindowStats,  # noqa: E402
)
from monitor.cli.base import GC_THRESHOLD  # noqa: E402
from monitor.detection import REFRESH_ALL_BELOW, Detection  # noqa: E402
from monitor.evaluator import Evaluator, TickReport  # noqa: E402
from monitor.events import ControlMessage, IncidentEvent  # noqa: E402
from monitor.incidents import decide  # noqa: E402
from monitor.incidents.commands import CommandQueue  # noqa: E402
from monitor.incidents.store import IncidentStore  # noqa: E402
from monitor.rules.loader import default_rules_path, load_rules  # noqa: E402
from monitor.settings import Settings  # noqa: E402
from monitor.store.catalog import ModelCatalog  # noqa: E402
from monitor.store.keys import Keys  # noqa: E402
from monitor.store.windows import WindowReader  # noqa: E402

TARGET_MS = 250.0


class MemoryPublisher:
    """A `monitor.control.Publisher` that keeps what it is given (Kafka is not what is measured)."""

    def __init__(self) -> None:
        self.controls: list[ControlMessage] = []
        self.incidents: list[IncidentEvent] = []

    async def control(self, message: ControlMessage) -> None:
        """Keep a control message."""
        self.controls.append(message)

    async def incident(self, event: IncidentEvent) -> None:
        """Keep an incident event."""
        self.incidents.append(event)


class Clock:
    """A settable clock (event time for the evaluator, or monotonic time for the window reader)."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


# --- phases: inclusive time of a few functions, without a profiler's overhead ---------------------

PHASES: list[tuple[str, str]] = [  # (label, what it covers)
    ("models", "ModelCatalog.models: SMEMBERS + 3 hash reads per model (1 round trip each)"),
    (
        "read",
        "WindowReader.read: one pipeline, 3 HGETALL + 4 ZCOUNT per version (+ older minutes when the minute "
        "turns, closed hours when stale)",
    ),
    ("read.sum_buckets", "  of which sum_buckets: reply dicts -> Counter[str] (bytes decode, int())"),
    ("read.range_sums", "  of which range_sums (closed-hour range sums, cold/refresh only)"),
    ("read.redis", "  of which the pipeline round trip: send, Redis, RESP parsing in redis-py"),
    ("freeze", "Evaluator._freeze_references: HGETALL of the predecessors' frozen references"),
    ("state", "open incidents, control states, command queue (MULTI/EXEC), quiet keys"),
    ("detect-take", "Detection.take: HGETALL of every model's totals, parsed into the detectors' columns"),
    ("detect-step", "Detection.step: the CUSUM bank's update (sparse matrices, numpy)"),
    ("detect-restate", "Detection.refresh: boundaries re-stated from the versions read this tick"),
    ("detect-due", "Detection.due + wanted: which versions' windows to read this tick"),
    ("detect-save", "Detection.save_due: the detectors' state written back (every save_s)"),
    ("windowed", "Detection.windowed_rules: each windowed rule at its share of the budget"),
    ("findings", "Evaluator._model_findings: detector findings + windowed rules per model"),
    (
        "findings.det",
        "  of which Detection.findings (sequential rules, built only for rows in alarm or open)",
    ),
    ("findings.tests", "  of which statistical tests (monitor.stats -> scipy.stats)"),
    ("any.sums", "window sums, wherever they run (VersionWindows.counters / _sum: Counter.update)"),
    ("any.parse", "WindowStats.from_counters, wherever it runs (field names -> stats)"),
    ("fdr", "Benjamini-Hochberg over each bias rule's family"),
    ("act", "Evaluator._act: decide.incident_transitions, evidence, control messages"),
    ("any.gc", "Python's cyclic garbage collector, wherever it ran (inside the phases above)"),
]


class Phases:
    """Accumulates the wall time spent inside wrapped functions, and in the garbage collector."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._undo: list[Callable[[], None]] = []
        self._gc_started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.seconds["gc"] += time.perf_counter() - self._gc_started
            self.seconds[f"gc.gen{info['generation']}"] += 1

    def wrap(self, owner: Any, name: str, label: str, *, is_classmethod: bool = False) -> None:
        """Replace `owner.name` by a timing wrapper (sync or async)."""
        original = owner.__dict__[name] if is_classmethod else getattr(owner, name)
        target = original.__func__ if is_classmethod else original
        seconds = self.seconds

        if asyncio.iscoroutinefunction(target):

            @functools.wraps(target)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return await target(*args, **kwargs)
                finally:
                    seconds[label] += time.perf_counter() - started

            wrapper: Any = async_wrapper
        else:

            @functools.wraps(target)
            def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return target(*args, **kwargs)
                finally:
                    seconds[label] += time.perf_counter() - started

            wrapper = sync_wrapper
        setattr(owner, name, classmethod(wrapper) if is_classmethod else wrapper)
        self._undo.append(lambda: setattr(owner, name, original))

    def install(self) -> None:
        """Wrap the evaluator's phases (module and class attributes; restored by `remove`)."""
        self.wrap(ModelCatalog, "models", "models")
        self.wrap(WindowReader, "read", "read")
        self.wrap(windows_module, "sum_buckets", "read.sum_buckets")
        self.wrap(Evaluator, "_freeze_references", "freeze")
        for owner, name in (
            (IncidentStore, "open_incidents"),
            (IncidentStore, "control_states"),
            (CommandQueue, "take"),
            (IncidentStore, "quiet"),
        ):
            self.wrap(owner, name, "state")
        self.wrap(Evaluator, "_model_findings", "findings")
        self.wrap(Detection, "findings", "findings.det")
        self.wrap(Detection, "take", "detect-take")
        self.wrap(Detection, "step", "detect-step")
        self.wrap(Detection, "refresh", "detect-restate")
        self.wrap(Detection, "due", "detect-due")
        self.wrap(Detection, "wanted", "detect-due")
        self.wrap(Detection, "save_due", "detect-save")
        self.wrap(Detection, "windowed_rules", "windowed")
        if hasattr(VersionWindows, "counters"):  # newer windows.py: all window sums go through it
            self.wrap(VersionWindows, "counters", "any.sums")
        else:
            self.wrap(windows_module, "_sum", "any.sums")
        if hasattr(windows_module, "range_sums"):
            self.wrap(windows_module, "range_sums", "read.range_sums")
        self.wrap(WindowStats, "from_counters", "any.parse", is_classmethod=True)
        for name in ("_binomial", "difference_above", "ratio_below", "shift_beyond"):
            self.wrap(stats_module, name, "findings.tests")
        self.wrap(decide, "control_false_discoveries", "fdr")
        self.wrap(Evaluator, "_act", "act")

    def remove(self) -> None:
        """Put the original functions back."""
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()

    @contextmanager
    def window(self) -> Iterator[dict[str, float]]:
        """The seconds per phase accumulated inside the block."""
        before = dict(self.seconds)
        result: dict[str, float] = {}
        yield result
        for label, total in self.seconds.items():
            result[label] = total - before.get(label, 0.0)


REDIS_COMMANDS = ("hgetall", "zcount")


async def redis_usec(redis: Redis) -> dict[str, float]:
    """Server-side microseconds spent in HGETALL and ZCOUNT so far (all clients)."""
    stats = await redis.info("commandstats")
    return {c: float(stats.get(f"cmdstat_{c}", {}).get("usec", 0)) for c in REDIS_COMMANDS}


@dataclass
class Tick:
    """One measured tick."""

    wall_ms: float
    report: TickReport
    phases: dict[str, float]
    redis_ms: dict[str, float]
    error: str = ""

    @property
    def redis_total_ms(self) -> float:
        return sum(self.redis_ms.values())

    @property
    def opened(self) -> int:
        return len(self.report.opened)


@dataclass
class Row:
    """The measurements of one N."""

    models: int
    pairs: int
    keys: int
    populate_s: float
    primed: bool
    cold: Tick | None
    first: Tick | None  # the first tick after priming the reader (cold for the detectors)
    rows: int  # detector rows
    share: int  # versions whose windows each warm tick reads
    warm: list[Tick]
    steady: list[Tick]  # warm ticks with the window reads spread over the refresh period
    steady_share: int
    refresh: Tick | None
    breach: Tick
    after: Tick
    breach_models: list[str]
    findings: int
    tests: int
    controls: int
    rss_mb: float
    cache_mb: float  # the reader's closed-hour cache (measured, or estimated when primed)
    closed_hours: int  # closed hours a cold/refresh tick reads per version
    rules: dict[str, int] = field(default_factory=dict)

    @property
    def warm_ms(self) -> list[float]:
        return [t.wall_ms for t in self.warm if not t.error]

    def median_warm(self) -> Tick:
        ok = sorted((t for t in self.warm if not t.error), key=lambda t: t.wall_ms)
        return ok[len(ok) // 2]


def closed_hours_read(reader: WindowReader) -> int:
    """How many closed hours a cold or refresh tick reads per version (336 in monitor/rules/default.yaml)."""
    return int(getattr(reader, "closed_hours", getattr(windows_module, "CLOSED_HOURS", 14 * 24)))


def _cached(reader: WindowReader) -> list[Counter[str]]:
    """The Counters the reader's closed-hour cache holds: a list of hours (older code) or a dict of
    closed-hour range sums (monitor.aggregates.window.range_sums)."""
    out: list[Counter[str]] = []
    for _, _, closed in reader._closed.values():  # noqa: SLF001 (a benchmark may look inside)
        out.extend(closed.values() if isinstance(closed, dict) else closed)
    return out


def counter_bytes(counter: Counter[str]) -> int:
    """Bytes a Counter built by `sum_buckets` holds: the dict, its str keys, its large ints."""
    size = sys.getsizeof(counter) + sum(sys.getsizeof(k) for k in counter)
    return size + sum(sys.getsizeof(v) for v in counter.values() if not -5 <= v <= 256)


def cache_bytes(reader: WindowReader) -> tuple[int, int]:
    """(bytes, non-empty Counters) of the reader's closed-hour cache, each Counter counted once."""
    seen: set[int] = set()
    total = nonempty = 0
    for counter in _cached(reader):
        if id(counter) in seen:
            continue
        seen.add(id(counter))
        total += counter_bytes(counter)
        nonempty += bool(counter)
    return total, nonempty


async def timed(evaluator: Evaluator, phases: Phases, admin: Redis, guard_s: float | None = None) -> Tick:
    """Run one tick, timed from outside. A Redis error (the daemon's 5 s socket timeout) or the
    guard running out ends the tick; it is recorded, not raised."""
    usec = await redis_usec(admin)
    error = ""
    report = TickReport()
    with phases.window() as spent:
        started = time.perf_counter()
        try:
            report = await asyncio.wait_for(evaluator.tick(), guard_s)
        except (TimeoutError, RedisError, LookupError) as exc:  # LookupError: older code, see BENCHMARKS.md
            error = f"{type(exc).__name__}: {exc}" if str(exc) else f"gave up after {guard_s:.0f} s"
        wall = time.perf_counter() - started
    after = await redis_usec(admin)
    redis_ms = {c: (after[c] - usec[c]) / 1000 for c in REDIS_COMMANDS}
    return Tick(wall * 1000, report, spent, redis_ms, error)


def make_evaluator(
    redis: Redis, keys: Keys, clock: Clock, mono: Clock, evidence: Path
) -> tuple[Evaluator, MemoryPublisher]:
    """An Evaluator as the daemon builds one, with injected clocks and an in-memory publisher."""
    rules = load_rules(default_rules_path())
    publisher = MemoryPublisher()
    reader = WindowReader(redis, keys, clock=mono)  # closed_refresh_s stays at its default, 60 s
    evaluator = Evaluator(redis, keys, rules, publisher, clock=clock, reader=reader, evidence_dir=evidence)
    return evaluator, publisher


def primed_cache(reader: WindowReader, population: Population) -> dict[tuple[str, str], Any]:
    """What a cold read leaves in the reader's cache for every version, built from the template
    counters the buckets were copied from: the closed hours themselves (older code) or their
    range sums (`range_sums`, computed once per distinct sequence of templates)."""
    hours_by_pair = closed_hours(population, closed_hours_read(reader))
    range_sums = getattr(windows_module, "range_sums", None)
    if range_sums is None:
        return dict(hours_by_pair)
    memo: dict[tuple[int, ...], Any] = {}
    cache = {}
    for pair, hours in hours_by_pair.items():
        signature = tuple(id(c) for c in hours)
        if signature not in memo:
            memo[signature] = range_sums(hours, reader.ranges)
        cache[pair] = memo[signature]
    return cache


def prime_reader(reader: WindowReader, population: Population, mono: float) -> None:
    """Fill the closed-hour cache as a cold read would, so the warm ticks of a large N can be
    measured without holding every closed hour of every version in memory at once."""
    hour0 = int(population.now) - int(population.now) % 3600
    for pair, closed in primed_cache(reader, population).items():
        reader._closed[pair] = (mono, hour0, closed)  # noqa: SLF001


def settle(reader: WindowReader, mono: float) -> bool:
    """As if the evaluator had been running for a while: a reader that re-reads young versions'
    sums every few seconds after it first sees them (`_first_read`, YOUNG_S in the working tree)
    is told it saw them long ago, so the warm ticks measure the steady state. Returns whether the
    reader has such a notion."""
    first = getattr(reader, "_first_read", None)
    if not isinstance(first, dict):
        return False
    for pair in list(first):
        first[pair] = mono - 1e6
    return True


def settle_detection(evaluator: Evaluator, versions: int, now: float, *, spread: bool = False) -> int:
    """Mark every version's windows as read long ago, so each warm tick reads its full share (the
    most `Detection.due` reads per tick, catching up after a start); or, with `spread`, as read at
    times spread evenly over the last refresh period, so that each tick finds versions *
    tick / refresh_s of them due (the steady state). Returns how many a tick reads."""
    detection = evaluator.detection
    pairs = list(detection._read_at)  # noqa: SLF001 (a benchmark may look inside)
    for i, pair in enumerate(pairs):
        offset = (i + 0.5) * detection.refresh_s / max(len(pairs), 1)
        detection._read_at[pair] = now - detection.refresh_s + offset if spread else -1e12  # noqa: SLF001
    if versions < REFRESH_ALL_BELOW:
        return versions
    per_tick = versions * detection.tick_s / detection.refresh_s
    return max(1, math.ceil(per_tick if spread else 2 * per_tick))


def check_primed_equals_cold(reader: WindowReader, population: Population) -> str:
    """The primed cache must equal what the cold tick read from Redis."""
    expected = primed_cache(reader, population)
    for pair, (_, _, got) in reader._closed.items():  # noqa: SLF001
        want = expected[pair]
        items = list(got.items()) if isinstance(got, dict) else list(enumerate(got))
        wanted = dict(want.items()) if isinstance(want, dict) else dict(enumerate(want))
        assert len(items) == len(wanted), pair
        for where, counter in items:
            assert counter == +wanted[where], (
                pair,
                where,
                sorted(set(counter.items()) ^ set(wanted[where].items()))[:4],
            )
    return (
        f"closed-hour cache after the cold tick equals the primed one ({len(expected)} versions, "
        f"{closed_hours_read(reader)} closed hours each)"
    )


async def measure(
    redis: Redis,
    admin: Redis,
    n: int,
    *,
    warm: int,
    cold_guard_s: float,
    history_hours: int,
    prime: bool,
    check_prime: bool,
    profile_out: Path | None,
    phases: Phases,
    profilers: set[str],
) -> Row:
    """Populate N models under a fresh prefix, tick, clean up."""
    prefix = f"bench-eval-{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix)
    evidence = Path(tempfile.mkdtemp(prefix="aimon-bench-evidence-"))
    real = time.time()
    start = real - real % 60 + 5  # mid-minute: 20 ticks 1 s apart never cross a minute or an hour
    try:
        population: Population = await populate(admin, keys, n, now=start, history_hours=history_hours)
        total_keys = await count_prefix(admin, prefix)
        print(
            f"  N={n}: populated {population.pairs} versions, {total_keys:,} keys "
            f"({population.commands:,} commands) in {population.seconds:.1f} s",
            flush=True,
        )
        clock, mono = Clock(start), Clock(1_000.0)
        evaluator, publisher = make_evaluator(redis, keys, clock, mono, evidence)

        async def step(*, refresh: bool = False) -> Tick:
            clock.now += 1.0
            mono.now += 60.0 if refresh else 1.0
            tick = await timed(evaluator, phases, admin)
            print(f"    tick {'refresh' if refresh else ''} {tick.wall_ms:.0f} ms {tick.error}", flush=True)
            return tick

        cold = refresh = first = None
        if prime:
            # Does a cold tick get through at all? (Bounded: it is cancelled after cold_guard_s, before
            # the replies of every closed hour pile up in memory.)
            cold = await timed(evaluator, phases, admin, guard_s=cold_guard_s)
            print(f"    cold tick attempt: {cold.wall_ms:.0f} ms {cold.error or 'completed'}", flush=True)
            if not cold.error:
                prime = False
        if prime:
            mono.now += 1.0
            prime_reader(evaluator.reader, population, mono.now)
            # Reads no closed hour, but every row and every version is new to the detectors.
            first = await timed(evaluator, phases, admin)
            print(f"    first tick (primed cache) {first.wall_ms:.0f} ms {first.error}", flush=True)
            # Estimated as every cached Counter distinct (a real cold read makes each one anew).
            counters = _cached(evaluator.reader)
            cache_mb = sum(counter_bytes(c) for c in counters) / 2**20
        else:
            if cold is None:
                cold = await timed(evaluator, phases, admin)
                print(f"    cold tick {cold.wall_ms:.0f} ms {cold.error}", flush=True)
            size, _ = cache_bytes(evaluator.reader)
            cache_mb = size / 2**20
            if check_prime:
                print("  " + check_primed_equals_cold(evaluator.reader, population), flush=True)
        if settle(evaluator.reader, mono.now):
            young = getattr(windows_module, "YOUNG_S", "?")
            every = getattr(windows_module, "YOUNG_REFRESH_S", "?")
            print(
                f"    (the reader re-reads every version's sums every {every} s for {young} s after it "
                "first sees it, e.g. after a restart; the warm ticks below are past that: a refresh "
                "tick shows its cost)",
                flush=True,
            )
        share = settle_detection(evaluator, population.pairs, clock.now)
        print(
            f"    detectors: {len(evaluator.detection.detectors.rows):,} rows; each warm tick reads the "
            f"windows of {share} of {population.pairs} versions",
            flush=True,
        )
        warm_ticks = [await step() for _ in range(warm)]
        steady_share = settle_detection(evaluator, population.pairs, clock.now, spread=True)
        print(f"    steady state: each tick reads the windows of {steady_share} versions", flush=True)
        steady_ticks = [await step() for _ in range(warm)]
        if profile_out is not None:
            await profile_ticks(evaluator, clock, mono, profile_out, n, phases, profilers)
        if not prime:
            refresh = await step(refresh=True)
        healthy = [t for t in (cold, first, *warm_ticks, *steady_ticks, refresh) if t is not None]
        opened_early = [(i.model_id, i.rule) for t in healthy for i in t.report.opened]
        if opened_early:
            print(f"  WARNING: {len(opened_early)} incidents opened on healthy traffic: {opened_early[:10]}")
        breach_models = await write_breach(admin, population)
        breach = await step()
        after = await step()
        rules: dict[str, int] = defaultdict(int)
        for incident in breach.report.opened:
            rules[incident.rule] += 1
        last = ([t for t in warm_ticks if not t.error] or warm_ticks)[-1].report
        tests = sum(
            1
            for f in last.findings
            if "p_value" in f.observation.get("test", {})
            and not str(f.observation["test"].get("method", "")).startswith("not tested")
        )
        return Row(
            models=n,
            pairs=population.pairs,
            keys=total_keys,
            populate_s=population.seconds,
            primed=prime,
            cold=cold,
            first=first,
            rows=len(evaluator.detection.detectors.rows),
            share=share,
            warm=warm_ticks,
            steady=steady_ticks,
            steady_share=steady_share,
            refresh=refresh,
            breach=breach,
            after=after,
            breach_models=breach_models,
            findings=len(last.findings),
            tests=tests,
            controls=len(publisher.controls),
            rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            cache_mb=cache_mb,
            closed_hours=closed_hours_read(evaluator.reader),
            rules=dict(rules),
        )
    finally:
        await delete_prefix(admin, prefix)
        shutil.rmtree(evidence, ignore_errors=True)


# --- profiling -----------------------------------------------------------------------------------

CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("waiting in epoll (Redis working / network)", ("select.epoll", "selectors.py")),
    ("redis-py reply parsing (hiredis if installed, else pure Python)", ("redis/_parsers", "hiredis")),
    ("asyncio stream reads under the parser (readline/readexactly)", ("asyncio/streams",)),
    ("redis-py command packing, pipeline, connection", ("redis/",)),
    ("sum_buckets (reply dict -> Counter: decode, int())", ("window.py:sum_buckets", "window.py:_text")),
    (
        "WindowStats.from_counters (field names -> stats)",
        ("window.py:from_counters", "window.py:_counts", "batch.py:unescape"),
    ),
    ("Counter.update (window sums)", ("collections/__init__.py",)),
    ("scipy / numpy (tests, BH)", ("scipy/", "numpy/")),
    ("monitor rules + stats (pure Python)", ("monitor/rules", "monitor/stats.py")),
    ("evaluator, incidents, control, windows", ("monitor/",)),
    ("asyncio event loop", ("asyncio/",)),
]


def categorise(stats: pstats.Stats) -> list[tuple[str, float]]:
    """Self time (tottime) per category, by the file and function each profiled function lives in."""
    totals: dict[str, float] = defaultdict(float)
    raw = stats.stats  # type: ignore[attr-defined]
    for (filename, _line, func), (_cc, _nc, tottime, _ct, _callers) in raw.items():
        where = f"{filename}:{func}"
        for name, needles in CATEGORIES:
            if any(needle in where for needle in needles):
                totals[name] += tottime
                break
        else:
            totals["builtins (int(), dict.get, bytes.decode, len ...)"] += tottime
    return sorted(totals.items(), key=lambda kv: -kv[1])


def _print_stats(profiler: cProfile.Profile, sort: str, limit: int, title: str, path: Path) -> None:
    buffer = io.StringIO()
    pstats.Stats(profiler, stream=buffer).sort_stats(sort).print_stats(limit)
    text = buffer.getvalue()
    path.write_text(text)
    print(f"  {title}:")
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("ncalls") or stripped[:1].isdigit() and ("(" in line):
            print(
                "    "
                + line.rstrip()
                .replace(str(ROOT) + "/", "")
                .replace("/root/.pyenv/versions/3.11.7/lib/python3.11/", "")
                .replace(".venv/lib/python3.11/site-packages/", "")[:160]
            )


async def profile_ticks(
    evaluator: Evaluator, clock: Clock, mono: Clock, out: Path, n: int, phases: Phases, profilers: set[str]
) -> None:
    """Profile one warm tick with cProfile (self time by category, top cumulative and self-time
    functions) and one with pyinstrument (wall-clock call tree, async-aware); files go to `out`."""
    out.mkdir(parents=True, exist_ok=True)
    phases.remove()  # the wrappers would show up in the profile
    try:
        if "cprofile" in profilers:
            await _cprofile_tick(evaluator, clock, mono, out, n)
        if "pyinstrument" in profilers:
            await _pyinstrument_tick(evaluator, clock, mono, out, n)
    finally:
        phases.install()


async def _cprofile_tick(evaluator: Evaluator, clock: Clock, mono: Clock, out: Path, n: int) -> None:
    clock.now += 1
    mono.now += 1
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    await evaluator.tick()
    profiler.disable()
    wall = time.perf_counter() - started
    stats = pstats.Stats(profiler)
    stats.dump_stats(out / f"warm-{n}.pstats")
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    print(
        f"\n  cProfile, one warm tick at N={n}: {wall * 1000:.0f} ms wall under the profiler, "
        f"{total * 1000:.0f} ms self time in total; self time by category:"
    )
    for name, seconds in categorise(stats):
        print(f"    {seconds * 1000:9.0f} ms  {100 * seconds / total:5.1f} %  {name}")
    _print_stats(
        profiler,
        "cumulative",
        22,
        "top cumulative (coroutine time is split at each await)",
        out / f"warm-{n}-cumulative.txt",
    )
    _print_stats(profiler, "tottime", 15, "top self time", out / f"warm-{n}-tottime.txt")


async def _pyinstrument_tick(evaluator: Evaluator, clock: Clock, mono: Clock, out: Path, n: int) -> None:
    try:
        from pyinstrument import Profiler
    except ImportError:
        print("  (pyinstrument is not installed: .venv/bin/pip install pyinstrument)")
        return
    clock.now += 1
    mono.now += 1
    pyi = Profiler(async_mode="enabled", interval=0.005)
    pyi.start()
    await evaluator.tick()
    pyi.stop()
    text = pyi.output_text(unicode=False, color=False, show_all=False)
    (out / f"warm-{n}-pyinstrument.txt").write_text(text)
    (out / f"warm-{n}-pyinstrument.html").write_text(pyi.output_html())
    print(f"  pyinstrument, one warm tick at N={n} (wall clock, async-aware; {out}/warm-{n}-pyinstrument.*):")
    for line in text.splitlines()[6:50]:
        if line.strip():
            print("    " + line[:160])


# --- report --------------------------------------------------------------------------------------


def _median(ticks: list[Tick]) -> float:
    return statistics.median([t.wall_ms for t in ticks if not t.error] or [float("nan")])


def _ms(tick: Tick | None, estimate: float | None = None) -> str:
    if tick is not None and tick.error:
        return "failed" if estimate is None else f"fail/~{estimate:.0f}"
    if tick is not None:
        return f"{tick.wall_ms:.0f}"
    return f"~{estimate:.0f}" if estimate is not None else "-"


def print_table(rows: list[Row], hour_cost_ms: float | None = None) -> None:
    # (Only where every version is read every tick does the refresh tick re-read every closed hour.)
    measured = [
        r
        for r in rows
        if r.cold is not None and r.refresh is not None and not r.refresh.error and r.share == r.pairs
    ]
    # Cost of one closed hour bucket read (cold/refresh minus warm), per version-hour, at the largest
    # N that ran the cold read: used to estimate cold/refresh where they were not run.
    per_hour_ms = hour_cost_ms
    if measured and per_hour_ms is None:
        big = max(measured, key=lambda r: r.models)
        assert big.refresh is not None
        per_hour_ms = (big.refresh.wall_ms - statistics.median(big.warm_ms)) / (big.pairs * big.closed_hours)
    print(
        "\nEvaluator tick, monitor/rules/default.yaml, 20 groups per model, wall ms per tick "
        "(~ = estimated, see notes)"
    )
    head = (
        f"{'models':>6} {'versions':>8} {'rows':>8} {'keys':>10} {'cold':>9} {'first':>7} {'read/tick':>9} "
        f"{'warm med':>9} {'warm max':>9} {'steady':>6} {'med':>5} "
        f"{'refresh':>9} {'breach':>9} {'after':>9} {'opened':>6} {'tests':>6} "
        f"{'redis ms':>8} {'cache MB':>8} {'rss MB':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        if not r.warm_ms:
            print(f"{r.models:>6} {r.pairs:>8} {r.keys:>10,}  every warm tick failed")
            continue
        warm_med = statistics.median(r.warm_ms)
        base = r.first.wall_ms if r.first is not None else warm_med
        est = None if per_hour_ms is None else base + per_hour_ms * r.pairs * r.closed_hours
        cache = f"{'~' if r.primed else ''}{r.cache_mb:.0f}"
        print(
            f"{r.models:>6} {r.pairs:>8} {r.rows:>8,} {r.keys:>10,} {_ms(r.cold, est):>9} "
            f"{_ms(r.first):>7} {r.share:>9} {warm_med:>9.0f} "
            f"{max(r.warm_ms):>9.0f} {r.steady_share:>6} {_median(r.steady):>5.0f} "
            f"{_ms(r.refresh, est):>9} {r.breach.wall_ms:>9.0f} "
            f"{r.after.wall_ms:>9.0f} {r.breach.opened:>6} {r.tests:>6} "
            f"{r.median_warm().redis_total_ms:>8.0f} {cache:>8} {r.rss_mb:>7.0f}"
        )
    print(
        "  (rows: detector rows; first: the first tick after priming the reader's cache, cold for the "
        "detectors; read/tick: versions whose windows a warm tick reads, catching up; steady, med: the same "
        "in the steady state, reads spread over the refresh period; tests: windowed statistical "
        "tests run in the last warm tick; redis ms: Redis server time in HGETALL + ZCOUNT during the "
        "median warm tick, all clients; cache MB: the reader's closed-hour cache)"
    )
    print(f"\ntarget: one tick <= {TARGET_MS:.0f} ms at 1,000 models")
    for r in rows:
        med = statistics.median(r.warm_ms or [float("nan")])
        failed = [
            t
            for t in (r.cold, r.first, *r.warm, *r.steady, r.refresh, r.breach, r.after)
            if t is not None and t.error
        ]
        for t in failed:
            print(f"  N={r.models}: a tick failed after {t.wall_ms:.0f} ms: {t.error}")
        print(
            f"  N={r.models}: warm ticks {', '.join(f'{ms:.0f}' for ms in r.warm_ms)} ms, steady "
            f"{', '.join(f'{t.wall_ms:.0f}' for t in r.steady)} ms "
            f"({med / r.models:.1f} ms per model, {med / r.pairs:.1f} ms per version); "
            f"{r.findings} findings of which {r.tests} statistical tests; "
            f"breach: {len(r.breach_models)} models -> "
            f"opened {dict(r.rules)}, {r.controls} control messages; populate {r.populate_s:.0f} s"
            + ("; cold/refresh not run (cache primed)" if r.primed else "")
        )
    if per_hour_ms is not None:
        where = (
            f"measured at N={max(measured, key=lambda r: r.models).models}"
            if hour_cost_ms is None and measured
            else "given with --hour-cost-ms"
        )
        print(
            f"  a closed hour bucket costs {per_hour_ms * 1000:.0f} µs per version-hour "
            "on a cold/refresh tick "
            f"({where}); ~ values = the first tick (else the warm median) + that x versions x closed "
            f"hours ({rows[-1].closed_hours})"
        )
    for r in rows:
        if not r.warm_ms:
            continue
        tick = r.median_warm()
        total = tick.wall_ms / 1000
        print(
            f"\n  phases of the median warm tick, N={r.models} ({tick.wall_ms:.0f} ms; Redis server time "
            f"during it: HGETALL {tick.redis_ms['hgetall']:.0f} ms, ZCOUNT {tick.redis_ms['zcount']:.0f} ms, "
            "all clients of the shared server):"
        )
        phases = dict(tick.phases)
        phases["read.redis"] = (
            phases.get("read", 0.0) - phases.get("read.sum_buckets", 0.0) - phases.get("read.range_sums", 0.0)
        )
        phases["any.gc"] = phases.get("gc", 0.0)
        for label, what in PHASES:
            seconds = phases.get(label, 0.0)
            print(f"    {seconds * 1000:9.0f} ms {100 * seconds / total:5.1f} %  {what}")
        accounted = sum(phases.get(label, 0.0) for label, _ in PHASES if "." not in label)
        print(
            f"    {(total - accounted) * 1000:9.0f} ms {100 * (total - accounted) / total:5.1f} %  "
            "rest of tick() "
            "(catalog joins, report windows, loops over models)"
        )
        print(
            f"    collections during the tick: gen0 {phases.get('gc.gen0', 0):.0f}, "
            f"gen1 {phases.get('gc.gen1', 0):.0f}, "
            f"gen2 (full) {phases.get('gc.gen2', 0):.0f}"
        )
        for name, other in (("cold", r.cold), ("refresh", r.refresh)):
            if other is not None:
                print(
                    f"    {name} tick: read {other.phases.get('read', 0) * 1000:.0f} ms (sum_buckets "
                    f"{other.phases.get('read.sum_buckets', 0) * 1000:.0f} ms, range_sums "
                    f"{other.phases.get('read.range_sums', 0) * 1000:.0f} ms), findings "
                    f"{other.phases.get('findings', 0) * 1000:.0f} ms, "
                    f"Redis server {other.redis_total_ms:.0f} ms"
                    + (f"; {other.error}" if other.error else "")
                )


def code_state() -> str:
    """Which code was measured: the commit, and the files under monitor/ changed since."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "?"

    changed = git("status", "--porcelain", "--", "monitor").replace("\n", ", ")
    return f"code: {git('log', '-1', '--format=%h %s')}" + (f"; uncommitted: {changed}" if changed else "")


async def main() -> None:
    logging.basicConfig(level=logging.ERROR)  # the evaluator logs every incident and control change
    gc.set_threshold(GC_THRESHOLD, 20, 20)  # as `monitor run` sets it
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--models", default="10,100,1000", help="comma-separated N (default 10,100,1000)")
    parser.add_argument("--warm", type=int, default=5, help="warm ticks per N (at least 5)")
    parser.add_argument(
        "--history-hours", type=int, default=360, help="hour buckets per version (15 d TTL: 360)"
    )
    parser.add_argument(
        "--prime-above",
        type=int,
        default=300,
        help="above this N, prime the closed-hour cache instead of running the cold read",
    )
    parser.add_argument("--profile", action="store_true", help="profile a warm tick of the largest N")
    parser.add_argument(
        "--profilers",
        default="cprofile,pyinstrument",
        help="which profilers --profile runs (cProfile slows this code down several times)",
    )
    parser.add_argument(
        "--profile-out", type=Path, default=Path(tempfile.gettempdir()) / "aimon-evaluator-profile"
    )
    parser.add_argument(
        "--hour-cost-ms",
        type=float,
        default=None,
        help="cost of one closed hour bucket per version on a cold/refresh tick, for the ~ estimates "
        "(default: measured at the largest N that ran the cold read)",
    )
    parser.add_argument(
        "--socket-timeout",
        type=float,
        default=5.0,
        help="the evaluator's Redis socket timeout (monitor/app.py uses 5.0)",
    )
    parser.add_argument(
        "--cold-guard-s",
        type=float,
        default=20.0,
        help="above --prime-above, give the cold tick this long before cancelling it",
    )
    parser.add_argument("--redis-url", default=Settings().redis_url)
    args = parser.parse_args()
    sizes = sorted(int(x) for x in args.models.split(",") if x)
    # The evaluator's client as the daemon builds it (monitor/app.py); the bench's own writes and
    # INFO calls use a second client that waits longer.
    redis = Redis.from_url(args.redis_url, socket_timeout=args.socket_timeout, socket_connect_timeout=2.0)
    admin = Redis.from_url(args.redis_url, socket_timeout=120.0)
    phases = Phases()
    phases.install()
    try:
        print(code_state(), flush=True)
        print(await verify_against_ingest(admin, f"bench-verify-{uuid.uuid4().hex[:8]}"), flush=True)
        rows = []
        for n in sizes:
            prime = n > args.prime_above
            rows.append(
                await measure(
                    redis,
                    admin,
                    n,
                    warm=max(5, args.warm),
                    cold_guard_s=args.cold_guard_s,
                    history_hours=args.history_hours,
                    prime=prime,
                    check_prime=not prime and n == sizes[0],
                    profile_out=args.profile_out if args.profile and n == sizes[-1] else None,
                    phases=phases,
                    profilers=set(args.profilers.split(",")),
                )
            )
            print_table(rows, args.hour_cost_ms)
    finally:
        phases.remove()
        await redis.aclose()
        await admin.aclose()


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # on SIGTERM too, unwind through the `finally` that deletes our keys


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    asyncio.run(main())
