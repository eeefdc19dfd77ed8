"""The evaluator's sequential detectors on Redis: totals in, state kept, findings out.

Each tick: restore the state of models seen for the first time (`Keys.detectors`), read every
model's totals hash in one pipelined round trip, and hand them to the DetectorSet
(monitor.rules.detectors), which updates every row as arrays. Windows are not read per tick for
this: a version's windows are refreshed about once a `refresh_s` (all of them every tick in a small
fleet), and each refresh re-states the boundaries that come from data. State is written back every
`save_s`, with the totals it was computed from, so a restart or a new leader resumes exactly.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from redis.asyncio import Redis

from monitor.aggregates.window import VersionWindows, WindowStats
from monitor.rules.detectors import DetectorSet, RowState
from monitor.rules.evaluate import Finding
from monitor.rules.questions import WINDOWED_METRICS
from monitor.rules.schema import Rule, RuleSet
from monitor.rules.verdicts import finding
from monitor.store.keys import Keys

log = logging.getLogger(__name__)

# A fleet this small has every version's windows read every tick, as before detectors.
REFRESH_ALL_BELOW = 32
STATE_TTL_S = 8 * 86_400  # as long as a quiet model's totals are kept
Pair = tuple[str, str]
About = tuple[str, str | None]  # what an open incident is about: (rule, group)
Display = Callable[[Rule, str, str | None], Mapping[str, object] | None]


class Detection:
    """Sequential detectors of every model, with their state in Redis."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        rules: RuleSet,
        *,
        tick_s: float,
        refresh_s: float = 60.0,
        save_s: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.rules = rules
        self.detectors = DetectorSet(rules, tick_s)
        self.tick_s = tick_s
        self.refresh_s = refresh_s
        self.save_s = save_s
        self.monotonic = monotonic
        self.active = bool(self.detectors.watched)
        self._loaded: set[str] = set()
        self._read_at: dict[Pair, float] = {}
        self._saved_at = monotonic()

    async def take(self, model_ids: Sequence[str]) -> None:
        """Read every model's totals (restoring saved state first); `step` feeds them, once the
        boundaries of new rows are stated."""
        if not self.active:
            return
        new = [m for m in model_ids if m not in self._loaded]
        if new:
            async with self.redis.pipeline(transaction=False) as pipe:
                for model_id in new:
                    pipe.get(self.keys.detectors(model_id))
                blobs = await pipe.execute()
            for model_id, blob in zip(new, blobs, strict=True):
                if blob:
                    self.detectors.load(model_id, blob)
            self._loaded.update(new)
        gone = self._loaded - set(model_ids)
        if gone:
            await self.save(sorted(gone))
            for model_id in gone:
                self.detectors.forget(model_id)
            self._loaded -= gone
        async with self.redis.pipeline(transaction=False) as pipe:
            for model_id in model_ids:
                pipe.hgetall(self.keys.totals(model_id))
            totals = await pipe.execute()
        self.detectors.take(dict(zip(model_ids, totals, strict=True)))

    def step(self, now: float) -> None:
        """Feed every detector the events since the last tick."""
        if self.active:
            self.detectors.step(now)

    async def save_due(self, model_ids: Sequence[str]) -> None:
        """Write the state of every model when `save_s` has passed since the last write."""
        if self.active and self.monotonic() - self._saved_at >= self.save_s:
            await self.save(model_ids)

    async def save(self, model_ids: Iterable[str]) -> None:
        """Write the detector state of `model_ids` (one pipelined round trip)."""
        ids = [m for m in model_ids if m in self.detectors.models]
        self._saved_at = self.monotonic()
        if not ids:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for model_id in ids:
                pipe.set(self.keys.detectors(model_id), self.detectors.dump(model_id), ex=STATE_TTL_S)
            await pipe.execute()

    def due(self, pairs: Sequence[Pair], now: float, wanted: set[str]) -> list[Pair]:
        """The (model, version) pairs whose windows to read this tick: all of a small fleet, else
        those not read for `refresh_s` (a share per tick, so the reads spread over the period),
        and every version of a model in `wanted` (it has something to show)."""
        new = self.detectors.new_versions()
        if len(pairs) < REFRESH_ALL_BELOW or not self.active:
            chosen = list(pairs)
        else:
            share = max(1, math.ceil(2 * len(pairs) * self.tick_s / self.refresh_s))
            late = sorted(
                (self._read_at.get(p, -math.inf), p)
                for p in pairs
                if now - self._read_at.get(p, -math.inf) >= self.refresh_s or p[0] in wanted
            )
            # New rows must have their boundaries before their first events are fed to them.
            picked = {p for _, p in late[:share]} | {p for p in pairs if p[0] in wanted or p in new}
            chosen = [p for p in pairs if p in picked]
        for pair in chosen:
            self._read_at[pair] = now
        live = {m for m, _ in pairs}
        for pair in [p for p in self._read_at if p[0] not in live]:
            del self._read_at[pair]
        return chosen

    def wanted(self, open_about: Mapping[str, Iterable[About]]) -> set[str]:
        """Models with a row in alarm or an open incident of a sequential rule (their windows are
        read for the incident's display and evidence); `open_about` holds each model's open
        incidents as (rule, group)."""
        models = set(self.detectors.alarmed_by_model())
        watched = {r.id for r in self.detectors.watched}
        for model_id, about in open_about.items():
            if any(rule_id in watched for rule_id, _ in about):
                models.add(model_id)
        return models

    def refresh(
        self,
        model_id: str,
        version: str,
        windows: VersionWindows,
        baseline_for: Callable[[Rule], WindowStats | None],
    ) -> None:
        """Re-state the data-dependent boundaries of one version from its fresh windows."""
        self.detectors.restate(model_id, version, lambda rule: windows.window(rule.window_s), baseline_for)

    def findings(
        self, model_id: str, versions: Sequence[str], open_about: Iterable[About], display: Display
    ) -> dict[str, list[Finding]]:
        """Findings of the sequential rules for one model: every (version, group) with a row in
        alarm, and every one an open incident is about (so it can settle and recover)."""
        about = self.detectors.alarmed_by_model().get(model_id, set()) | set(open_about)
        facts = self.rules.models.get(model_id)
        found: dict[str, list[Finding]] = {}
        for rule in self.detectors.watched:
            for group in sorted((g for r, g in about if r == rule.id), key=lambda g: g or ""):
                by_version: dict[str, list[RowState]] = {}
                for state in self.detectors.states(model_id, rule.id, group):
                    by_version.setdefault(state.question.version, []).append(state)
                for version, states in by_version.items():
                    if version in versions:
                        shown = display(rule, version, group)
                        found.setdefault(rule.id, []).append(
                            finding(self.detectors, model_id, rule, states, facts, shown)
                        )
        return found

    def windowed_rules(self, windows: Sequence[VersionWindows]) -> dict[str, Rule]:
        """Each windowed rule (not `test: none`) at its share of the false-alarm budget for the
        tests it makes this tick on `windows`: each at level tick / (2·B·tests), so P(a false
        alarm within T) ≤ T / (2B) by a union bound."""
        tests = windowed_tests(self.rules.rules, windows)
        shared = {}
        for rule in self.rules.rules:
            if rule.id in tests and rule.test != "none":
                alpha = self.tick_s / (2.0 * rule.false_alarm_every_s * max(tests[rule.id], 1))
                shared[rule.id] = rule.model_copy(update={"confidence": max(rule.confidence, 1.0 - alpha)})
        return shared


def windowed_tests(rules: Sequence[Rule], windows: Sequence[VersionWindows]) -> dict[str, int]:
    """How many tests each windowed rule makes over these versions' windows (its budget is shared
    among them): one per version, or one per group of a rule over every attribute."""
    tests: dict[str, int] = {}
    for rule in rules:
        if rule.metric not in WINDOWED_METRICS:
            continue
        per_group = not (rule.attribute or rule.metric == "unserved_users")
        tests[rule.id] = sum(max(1, len(w.window(rule.window_s).groups)) if per_group else 1 for w in windows)
    return tests
