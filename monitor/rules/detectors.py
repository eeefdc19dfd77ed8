"""Every sequential rule's detectors for every model version, fed from the versions' totals (pure).

Each tick the evaluator hands over each model's totals hash (monotonic counters per version, written
by ingest in the same atomic step as the buckets and the replay guard). The set keeps the totals it
last absorbed (its cursor), so the difference is exactly the events that arrived since: late events
and late labels count when they arrive, a replayed batch was never counted by ingest, and a restart
that restores the cursor with the detector state (`dump` / `load`) absorbs what it missed in one step.
The difference goes to the detectors as arrays: a sparse matrix maps the totals' columns to each
row's bad and total counts, so a tick costs a few array operations, not a loop over versions.

The budget of a rule (`false_alarm_every`, B) is split over the ticks, the rule's rows m (every
model, version, group and ladder step it watches) and the K alternatives of each row:
monitor.detect.sequential.alarm_threshold. Where a boundary is estimated from data (a baseline,
another group), it rests on a one-sided bound at the rule's confidence, so the guarantee holds
with that confidence over the sampling of the data it was estimated from (the "guaranteed
conditional performance" of Gandy & Kvaløy 2013), and the detector gets the whole budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import msgspec
import numpy as np
import numpy.typing as npt
from scipy import sparse

from monitor.aggregates import histogram
from monitor.aggregates.predictions import SEP, escape, latency_field, unescape
from monitor.aggregates.window import WindowStats
from monitor.detect.sequential import Bank, alarm_threshold
from monitor.rules.questions import (
    UNTESTABLE,
    Boundary,
    Memo,
    Question,
    estimated,
    estimated_boundary,
    fixed_boundary,
    questions,
    sequential,
)
from monitor.rules.schema import Fairness, ModelFacts, Rule, RuleSet
from monitor.text import text

Array = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
STATE_VERSION = 2  # 2: rows keep the events that waited for their boundary
_GROUP = "g" + SEP


@dataclass
class RowState:
    """One row's verdict at this tick (for the findings)."""

    question: Question
    row: int
    alarm: bool
    inside: bool


@dataclass
class _Model:
    """What the set keeps per model: its totals columns and the groups each version has shown."""

    columns: dict[bytes, int] = field(default_factory=dict)
    groups: dict[str, dict[str, set[str]]] = field(default_factory=dict)  # version -> attr -> values
    pending: dict[str, Array] = field(default_factory=dict)  # restored rows not yet rebuilt
    order: list[str | bytes] = field(default_factory=list)  # the totals' fields as last read ...
    cols: Ints = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # ... and their columns


class _Saved(msgspec.Struct):
    v: int
    fields: list[str]
    seen: list[int]
    rows: list[str]
    state: bytes


class DetectorSet:
    """The detector rows of every sequential rule of a rule set, and their totals cursor."""

    def __init__(self, rules: RuleSet, tick_s: float) -> None:
        self.rules = rules
        self.tick_s = tick_s
        self.watched: tuple[Rule, ...] = tuple(r for r in rules.rules if sequential(r))
        self.bank = Bank()
        self.rows: list[Question] = []
        self.row_model: list[str] = []
        self.index: dict[tuple[str, str], int] = {}  # (model, row key) -> row
        self.by_finding: dict[tuple[str, str, str | None], list[int]] = {}  # (model, rule, group) -> rows
        self.by_version: dict[tuple[str, str], list[int]] = {}  # (model, version) -> rows
        self.boundaries: list[Boundary] = []
        self.models: dict[str, _Model] = {}
        self.now = np.zeros(0)
        self.seen = np.zeros(0)
        self.last_tick: float | None = None
        self._changed: set[tuple[str, str]] = set()  # (model, version) whose rows must be rebuilt
        self._fresh: set[tuple[str, str]] = set()  # (model, version) with rows new since the last step
        self._matrices: tuple[sparse.csr_matrix, sparse.csr_matrix] | None = None
        self._arrays_stale = True
        self.alarm = np.zeros(0, dtype=bool)
        self.inside = np.zeros(0, dtype=bool)
        self._alarmed: dict[str, set[tuple[str, str | None]]] | None = None  # of `alarm`, by model
        self._p0 = np.zeros(0)
        self._cap = np.zeros(0)
        self._min_events = np.zeros(0)
        self._cut = np.zeros(0, dtype=np.int64)
        self._windows = np.zeros(0)

    # --- input ------------------------------------------------------------------------------------

    def absorb(self, totals: Mapping[str, Mapping[str | bytes, str | bytes | int]], now: float) -> None:
        """A whole tick of a fixed boundary set (benchmarks and tests): `take`, then `step`."""
        self.take(totals)
        self.step(now)

    def take(self, totals: Mapping[str, Mapping[str | bytes, str | bytes | int]]) -> None:
        """The first half of a tick: read the totals and create the rows of new versions and
        groups (so their boundaries can be stated, `restate`, before `step` feeds them)."""
        for model_id, raw in totals.items():
            self._read(model_id, raw)
        self._rebuild()

    def new_versions(self) -> set[tuple[str, str]]:
        """(model, version) pairs whose rows were created since the last `step`."""
        return set(self._fresh)

    def step(self, now: float) -> None:
        """The second half of a tick: feed every row the events since the previous step."""
        self._rebuild()
        self._fresh.clear()
        delta = np.where(self.now < self.seen, self.now, self.now - self.seen)  # a recreated key starts over
        self.seen = self.now.copy()
        if self.bank.size:
            bad, total = self._counts(delta)
            since = self.last_tick if self.last_tick is not None else now - self.tick_s
            decay = np.exp(-max(now - since, 0.0) / self._windows)
            self.bank.update(bad, total, self._p0, self._cap, since, decay)
            self.alarm = self.bank.alarms(self._cap, self._min_events)
            self.inside = self.bank.inside(self._p0)
            self._alarmed = None
        self.last_tick = now

    def _read(self, model_id: str, raw: Mapping[str | bytes, str | bytes | int]) -> None:
        model = self.models.setdefault(model_id, _Model())
        order = list(raw)
        if order != model.order:  # else the same fields in the same order: the same columns
            columns = model.columns
            keys = [k if isinstance(k, bytes) else k.encode() for k in order]
            new = [k for k in keys if k not in columns]
            if new:
                self._grow(len(new))
                for key in new:
                    columns[key] = self._next
                    self._next += 1
                    self._note_field(model_id, model, key.decode())
            model.order, model.cols = order, np.array([columns[k] for k in keys], dtype=np.int64)
        self.now[model.cols] = np.fromiter(map(float, raw.values()), dtype=float, count=len(order))

    _next = 0

    def _grow(self, extra: int) -> None:
        need = self._next + extra
        if need > len(self.now):
            size = max(need, 2 * len(self.now), 1024)
            self.now = np.concatenate([self.now, np.zeros(size - len(self.now))])
            self.seen = np.concatenate([self.seen, np.zeros(size - len(self.seen))])

    def _note_field(self, model_id: str, model: _Model, key: str) -> None:
        escaped, _, name = key.partition(SEP)
        version = unescape(escaped)
        groups = model.groups.setdefault(version, {})
        if not groups and (model_id, version) not in self._changed:
            self._changed.add((model_id, version))
        if name.startswith(_GROUP):
            attr, value, _stat = name[len(_GROUP) :].split(SEP)
            attr, value = unescape(attr), unescape(value)
            values = groups.setdefault(attr, set())
            if value not in values:
                values.add(value)
                self._changed.add((model_id, version))

    # --- rows -------------------------------------------------------------------------------------

    def _rebuild(self) -> None:
        if not self._changed and not self._arrays_stale:
            return
        before = len(self.rows)
        restored: list[tuple[int, Array]] = []
        for model_id, version in sorted(self._changed):
            facts = self.rules.models.get(model_id)
            model = self.models[model_id]
            groups = {a: frozenset(v) for a, v in model.groups.get(version, {}).items()}
            for rule in self.watched:
                for q in questions(rule, version, groups, self.rules.fairness, facts):
                    if (model_id, q.key) in self.index:
                        continue
                    row = len(self.rows)
                    self.rows.append(q)
                    self.row_model.append(model_id)
                    self.boundaries.append(fixed_boundary(q, facts))
                    self.index[(model_id, q.key)] = row
                    self.by_finding.setdefault((model_id, q.rule.id, q.group), []).append(row)
                    self.by_version.setdefault((model_id, q.version), []).append(row)
                    saved = model.pending.pop(q.key, None)
                    if saved is not None:
                        restored.append((row, saved))
        self._fresh |= self._changed
        self._changed.clear()
        if len(self.rows) > before:  # one resize for every new row of the tick
            keep = np.concatenate([np.arange(before, dtype=np.int64), np.full(len(self.rows) - before, -1)])
            self.bank.resize(keep.astype(np.int64), len(self.rows))
            if restored:
                rows = np.array([r for r, _ in restored], dtype=np.int64)
                self.bank.load_rows(rows, np.stack([state for _, state in restored]))
            self._matrices = None
        self._arrays()

    def forget(self, model_id: str) -> None:
        """Drop a model (retired, or no longer this worker's): its rows and its columns' meaning."""
        rows = [i for i, m in enumerate(self.row_model) if m != model_id]
        if len(rows) == len(self.rows):
            self.models.pop(model_id, None)
            return
        keep = np.array(rows, dtype=np.int64)
        self.bank.resize(keep, len(rows))
        stepped = keep[keep < len(self.alarm)]  # the verdicts follow their rows (new rows have none yet)
        self.alarm, self.inside = self.alarm[stepped], self.inside[stepped]
        self._alarmed = None
        self.rows = [self.rows[i] for i in rows]
        self.row_model = [self.row_model[i] for i in rows]
        self.boundaries = [self.boundaries[i] for i in rows]
        self.index = {(m, q.key): i for i, (m, q) in enumerate(zip(self.row_model, self.rows, strict=True))}
        self.by_finding, self.by_version = {}, {}
        for i, (m, q) in enumerate(zip(self.row_model, self.rows, strict=True)):
            self.by_finding.setdefault((m, q.rule.id, q.group), []).append(i)
            self.by_version.setdefault((m, q.version), []).append(i)
        model = self.models.pop(model_id, None)
        if model is not None:
            cols = list(model.columns.values())
            self.now[cols] = 0.0
            self.seen[cols] = 0.0
        self._matrices = None
        self._arrays()

    def set_boundary(self, model_id: str, q: Question, boundary: Boundary) -> None:
        """A row's boundary from fresh data (estimated rules, and the label-coverage gate)."""
        row = self.index.get((model_id, q.key))
        if row is not None:
            self.boundaries[row] = boundary
            if row < len(self._p0):  # in place: a refresh must not rebuild every row's arrays
                self._p0[row] = boundary.p0
                self._cut[row] = _cut_index(boundary.cut_s)
            else:
                self._arrays_stale = True

    def restate(
        self,
        model_id: str,
        version: str,
        current_for: Callable[[Rule], WindowStats],
        baseline_for: Callable[[Rule], WindowStats | None],
    ) -> None:
        """Re-state one version's boundaries from fresh data: `current_for(rule)` is the rule's
        window now, `baseline_for(rule)` its baseline. Estimated boundaries are recomputed with
        their bounds at this set's `delta`; a rule with `min_label_coverage` waits (NaN) while its
        window has fewer labels than that."""
        facts = self.rules.models.get(model_id)
        memo: Memo = {}  # bounds shared by the rows of one rule (its steps, its groups)
        baselines: dict[str, WindowStats | None] = {}
        for q in self.version_questions(model_id, version):
            rule = q.rule
            current = current_for(rule)
            if estimated(rule):
                if rule.id not in baselines:
                    baselines[rule.id] = baseline_for(rule)
                boundary = estimated_boundary(
                    q, current, baselines[rule.id], self.rules.fairness, self.delta(rule), memo
                )
            else:
                boundary = fixed_boundary(q, facts)
            if rule.min_label_coverage and (current.label_coverage or 0.0) < rule.min_label_coverage:
                boundary = UNTESTABLE  # too few labels yet: the first ones are not a fair sample
            self.set_boundary(model_id, q, boundary)

    def _arrays(self) -> None:
        """Per-row arrays: boundaries, caps (the rule's budget over its rows), minimum events."""
        self._p0 = np.array([b.p0 for b in self.boundaries], dtype=float)
        per_rule: dict[str, int] = {}
        for q in self.rows:
            per_rule[q.rule.id] = per_rule.get(q.rule.id, 0) + 1
        caps = {rule_id: self.threshold(self.rules.by_id(rule_id), m) for rule_id, m in per_rule.items()}
        self._cap = np.array([caps[q.rule.id] for q in self.rows], dtype=float)
        self._min_events = np.array([float(q.rule.min_samples) for q in self.rows])
        self._windows = np.array([float(q.rule.window_s) for q in self.rows])
        self._cut = np.array([_cut_index(b.cut_s) for b in self.boundaries], dtype=np.int64)
        self._arrays_stale = False

    def threshold(self, rule: Rule, rows: int) -> float:
        """The alarm threshold c of each of `rows` rows of `rule` (rows rounded up to a power of two,
        so a fleet that grows by one version does not move every threshold)."""
        return alarm_threshold(rule.false_alarm_every_s, self.tick_s, _pow2(rows), self.bank.width)

    @staticmethod
    def delta(rule: Rule) -> float:
        """The level of the bound an estimated boundary rests on: 1 − the rule's confidence (the
        guarantee then holds with that confidence over the baseline's sampling)."""
        return 1.0 - rule.confidence

    def _counts(self, delta: Array) -> tuple[Array, Array]:
        if self._matrices is None or self._matrices[0].shape[1] != max(self._next, 1):
            self._matrices = self._build_matrices()  # new rows, or new fields (a new latency bucket)
        bad_m, total_m = self._matrices
        vec = delta[: self._next]
        bad = np.asarray(bad_m @ vec, dtype=float)
        total = np.asarray(total_m @ vec, dtype=float)
        lat_rows = np.flatnonzero(self._latency_rows)
        if len(lat_rows):
            cols = self._latency_cols  # rows × buckets, −1 where the version has no such bucket
            padded = np.concatenate([vec, [0.0]])
            counts = padded[np.where(cols >= 0, cols, len(vec))]
            above = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1]
            cut = np.minimum(self._cut[lat_rows], histogram.BUCKETS)
            above = np.concatenate([above, np.zeros((len(lat_rows), 1))], axis=1)
            bad[lat_rows] = above[np.arange(len(lat_rows)), cut]
            total[lat_rows] = above[:, 0]
        return np.maximum(bad, 0.0), np.maximum(total, 0.0)

    def _build_matrices(self) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
        shape = (len(self.rows), max(self._next, 1))
        parts: list[tuple[list[int], list[int], list[float]]] = [([], [], []), ([], [], [])]
        lat_rows: list[int] = []
        lat_cols: list[list[int]] = []
        for i, (model_id, q) in enumerate(zip(self.row_model, self.rows, strict=True)):
            columns = self.models[model_id].columns
            head = (escape(q.version) + SEP).encode()
            if q.latency:
                lat_rows.append(i)
                lat_cols.append(
                    [columns.get(head + latency_field(b).encode(), -1) for b in range(histogram.BUCKETS)]
                )
                continue
            for (rows, cols, data), terms in zip(parts, (q.bad, q.total), strict=True):
                for name, coef in terms:
                    col = columns.get(head + name.encode())
                    if col is not None:
                        rows.append(i)
                        cols.append(col)
                        data.append(coef)
        self._latency_rows = np.zeros(len(self.rows), dtype=bool)
        self._latency_rows[lat_rows] = True
        self._latency_cols = np.array(lat_cols, dtype=np.int64).reshape(len(lat_rows), histogram.BUCKETS)
        built = [sparse.csr_matrix((data, (rows, cols)), shape=shape) for rows, cols, data in parts]
        return built[0], built[1]

    # --- persistence ------------------------------------------------------------------------------

    def dump(self, model_id: str) -> bytes:
        """The model's detector state and its totals cursor, to restore exactly after a restart."""
        model = self.models.get(model_id, _Model())
        names = list(model.columns)
        rows = sorted(i for version in model.groups for i in self.by_version.get((model_id, version), []))
        state = self.bank.rows_state(np.array(rows, dtype=np.int64)) if rows else np.zeros((0, 0))
        saved = _Saved(
            v=STATE_VERSION,
            fields=[text(n) for n in names],
            seen=[int(self.seen[model.columns[n]]) for n in names],
            rows=[self.rows[i].key for i in rows],
            state=np.ascontiguousarray(state, dtype=np.float64).tobytes(),
        )
        return msgspec.msgpack.encode(saved)

    def load(self, model_id: str, blob: bytes) -> None:
        """Restore a model's state from `dump` before its first totals are absorbed (a state of
        another format is ignored: the model then starts from its whole history)."""
        try:
            saved = msgspec.msgpack.decode(blob, type=_Saved)
        except msgspec.DecodeError:
            return
        if saved.v != STATE_VERSION:
            return
        model = self.models.setdefault(model_id, _Model())
        width = self.bank.state_width
        state = np.frombuffer(saved.state, dtype=np.float64)
        if state.size != len(saved.rows) * width:
            return
        self._grow(len(saved.fields))
        for name, seen in zip(saved.fields, saved.seen, strict=True):
            key = name.encode()
            if key not in model.columns:
                model.columns[key] = self._next
                self._next += 1
                self._note_field(model_id, model, name)
            self.seen[model.columns[key]] = float(seen)
            self.now[model.columns[key]] = float(seen)
        model.pending.update(zip(saved.rows, state.reshape(len(saved.rows), width), strict=True))

    # --- output -----------------------------------------------------------------------------------

    def states(self, model_id: str, rule_id: str, group: str | None) -> list[RowState]:
        """The rows of one (model, rule, group), each with this tick's verdict."""
        return [
            RowState(self.rows[i], i, bool(self.alarm[i]), bool(self.inside[i]))
            for i in self.by_finding.get((model_id, rule_id, group), [])
            if i < len(self.alarm)
        ]

    def alarmed_by_model(self) -> dict[str, set[tuple[str, str | None]]]:
        """model -> (rule, group) of its rows in alarm now (made once per step: the evaluator asks
        for every model)."""
        if self._alarmed is None:
            self._alarmed = {}
            for i in np.flatnonzero(self.alarm):
                q = self.rows[i]
                self._alarmed.setdefault(self.row_model[i], set()).add((q.rule.id, q.group))
        return self._alarmed

    def version_questions(self, model_id: str, version: str) -> list[Question]:
        """Every row of one model version (the evaluator re-states their boundaries)."""
        return [self.rows[i] for i in self.by_version.get((model_id, version), [])]

    def p0(self, row: int) -> float:
        """Row's boundary now."""
        return float(self._p0[row])

    def cap(self, row: int) -> float:
        """Row's alarm threshold now."""
        return float(self._cap[row])


def _pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def _cut_index(cut_s: float | None) -> int:
    """The first latency bucket all of whose values are slower than `cut_s` (BUCKETS: none)."""
    if cut_s is None or not math.isfinite(cut_s):
        return histogram.BUCKETS
    limit_ms = cut_s * 1000.0
    for index in range(1, histogram.BUCKETS):
        if histogram.upper_bound_ms(index - 1) >= limit_ms:
            return index
    return histogram.BUCKETS


__all__ = ["DetectorSet", "Fairness", "ModelFacts", "RowState"]
