"""False alarms of the sequential detectors, driven with an injected clock (no Kafka, no Redis).

(a) Healthy fleet: M models (default 50) × 10 group values (sex 2 × age_band 4 × zip3 4, the
    attributes of default.yaml's `fairness:`), every metric inside its threshold with realistic
    margins: errors 0.2–0.6 %, flags 5–10× below their thresholds, disparate impact ≥ 0.9 per
    group, false-negative-rate gaps ≤ ~4 points, accuracy 0.88–0.92 with 50–80 % labelled,
    log-normal latency (p95 ~50–200 ms), a daily traffic cycle (±50 %), 14 days of history first so
    every baseline exists from day 0. The shipped rules (monitor/rules/default.yaml, budget 90 d) run
    through monitor.rules.detectors.DetectorSet on the models' cumulative totals every tick; the
    estimated boundaries are re-stated (DetectorSet.restate) from the simulated windows every
    --restate-s. An incident is an alarm episode of a base-step row's (model, rule, group): it
    opens on an alarm with none open and closes after the rule's `hold` without one.
(b) Each rate rule with its true rate exactly on its threshold (estimated boundaries: the truth on
    the rule's own definition, e.g. accuracy exactly 5 % below the reference's true accuracy), a
    short budget (--budget, default 1 h), R replications in one DetectorSet (each model a fleet of
    one: the rule's budget in the shared set is B / R, R a power of two, so every row's threshold
    and bound level are those of one model with budget B; asserted): time to each replication's
    first false alarm, censored at the horizon (so the mean shown is a lower bound of the mean).
(c) Today's fixed-window tests (bench/_oldtests.py: evaluate / evaluate_bias with BH) on the
    traffic of (a), evaluated every --old-every-s, counted the same way.

Usage: .venv/bin/python bench/false_alarms.py [--seed 1] [--quick] [--models 50] [--days 5]
           [--tick-s 60] [--restate-s 3600] [--old-every-s 60] [--budget 1h] [--reps 128]
           [--horizon 4h] [--tick-b 10] [--parts abc]
Full run (BENCHMARKS.md): --days 30 --models 50 --tick-s 60 --restate-s 60 --tick-b 1 --reps 256
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._detsim import (
    ATTRS,
    HOUR,
    T0,
    Episodes,
    History,
    Layout,
    Traffic,
    base_alarm_keys,
    latency_probabilities,
    prefill,
    restate_all,
)
from bench._oldtests import old_bias, old_rate
from monitor.detect.sequential import ODDS_RATIOS, alarm_threshold
from monitor.rules.bias import BIAS_METRICS
from monitor.rules.detectors import DetectorSet
from monitor.rules.durations import parse_duration
from monitor.rules.loader import load_rules
from monitor.rules.questions import sequential
from monitor.rules.schema import Fairness, ModelFacts, Rule, RuleSet

RULES_PATH = ROOT / "monitor" / "rules" / "default.yaml"
PUBLISHED_MODEL = "credit-scoring"


def shipped() -> RuleSet:
    """The shipped rules (the file the product loads by default)."""
    return load_rules(RULES_PATH)


def _fmt_s(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "—"
    if seconds >= 86_400:
        return f"{seconds / 86_400:.1f} d"
    if seconds >= HOUR:
        return f"{seconds / HOUR:.2f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


# --- (a) and (c): the healthy fleet ---------------------------------------------------------------


def healthy_fleet(layout: Layout, models: int, rng: np.random.Generator) -> Traffic:
    """Every model inside every threshold, with realistic margins (module docstring)."""
    t = Traffic.healthy(layout, models, 1.0)
    t.rate = np.exp(rng.uniform(math.log(5.0), math.log(50.0), models))
    t.p_err = rng.uniform(0.002, 0.006, models)
    t.label = rng.uniform(0.5, 0.8, models)
    err = rng.uniform(0.08, 0.12, models)
    cells = len(layout.cells)
    fnr_shift = np.zeros((models, cells))
    ratio = np.ones((models, cells))
    for a, values in enumerate(layout.attrs.values()):
        r = rng.uniform(0.9, 1.0, (models, len(values)))
        r[np.arange(models), rng.integers(0, len(values), models)] = 1.0  # the most favoured
        d = rng.uniform(-0.01, 0.01, (models, len(values)))
        index = np.array([cell[a] for cell in layout.cells])
        ratio *= r[:, index] / r.mean(axis=1, keepdims=True)
        fnr_shift += d[:, index]
    t.fnr = np.clip(err[:, None] + fnr_shift, 0.01, 0.5)
    t.fpr = np.tile(err[:, None], (1, cells))
    t.set_favourable(slice(None), np.ones(cells, dtype=bool), 0.5 * ratio)
    t.flags = np.array([0.0001, 0.001, 0.002, 0.001])[None, :] * rng.uniform(1.0, 2.0, (models, 1))
    t.latency = latency_probabilities(rng.uniform(30.0, 120.0, models))
    return t


@dataclass
class HealthyResult:
    """Per rule: detector rows, keys, incidents of the detectors and of today's tests."""

    models: int
    days: float
    tick_s: float
    restate_s: float
    old_every_s: float
    rows: dict[str, int] = field(default_factory=dict)
    keys: dict[str, int] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    detector: dict[str, int] = field(default_factory=dict)
    old: dict[str, int] = field(default_factory=dict)
    old_keys_hit: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def run_healthy(
    models: int, days: float, tick_s: float, restate_s: float, old_every_s: float, seed: int
) -> HealthyResult:
    """Parts (a) and (c) on the same simulated traffic."""
    rng = np.random.default_rng(seed)
    base = shipped()
    rules = base.model_copy(update={"models": {PUBLISHED_MODEL: ModelFacts(published_min_accuracy=0.8)}})
    watched = [r for r in rules.rules if sequential(r)]
    layout = Layout(ATTRS)
    ids = [PUBLISHED_MODEL] + [f"model-{i:03d}" for i in range(1, models)]
    traffic = healthy_fleet(layout, models, rng)
    base_rate = traffic.rate.copy()
    history = History(models, len(layout.fields), start=T0 - 14 * 86_400)
    prefill(history, traffic, rng, 14 * 24)
    published = np.full(models, np.nan)
    published[0] = 0.8
    keys: dict[tuple[str, str, str | None], int] = {}
    key_index: dict[str, np.ndarray] = {}
    for rule in watched:
        if rule.metric in BIAS_METRICS:
            attrs = {a for a, _ in rules.fairness.attributes(rule.attributes)}
            grid = np.full((models, len(layout.groups)), -1)
            for m, model in enumerate(ids):
                for g, (a, v) in enumerate(layout.groups):
                    if a in attrs:
                        grid[m, g] = keys.setdefault((model, rule.id, f"{a}={v}"), len(keys))
            key_index[rule.id] = grid
        else:
            owners = ids[:1] if rule.compare == "below_published_minimum" else ids
            key_index[rule.id] = np.array(
                [keys.setdefault((m, rule.id, None), len(keys)) if m in owners else -1 for m in ids]
            )
    hold = np.zeros(len(keys))
    for (_, rule_id, _), k in keys.items():
        hold[k] = rules.by_id(rule_id).hold_s
    det, old = Episodes(len(keys), hold), Episodes(len(keys), hold)
    detectors = DetectorSet(rules, tick_s)
    started = time.perf_counter()
    ticks = int(round(days * 86_400 / tick_s))
    last_restate = last_old = -math.inf
    for _ in range(ticks):
        day = (history.now - T0) / 86_400
        traffic.rate = base_rate * (1.0 + 0.5 * math.sin(2 * math.pi * day))
        history.advance(traffic.draw(rng, tick_s), tick_s)
        now = history.now
        detectors.absorb(dict(zip(ids, layout.totals(history.cum), strict=True)), now)
        if now - last_restate >= restate_s:
            restate_all(detectors, layout, history, watched, ids)
            last_restate = now
        det.step(base_alarm_keys(detectors, lambda m, r, g: keys[(m, r, g)], len(keys)), now)
        if now - last_old >= old_every_s:
            last_old = now
            fired = np.zeros(len(keys), dtype=bool)
            for rule in watched:
                if rule.metric in BIAS_METRICS:
                    hit, _ = old_bias(rule, layout, history, rules.fairness)
                else:
                    hit, _ = old_rate(rule, layout, history, published)
                idx = key_index[rule.id]
                fired[idx[(idx >= 0) & hit]] = True
            old.step(fired, now)
    result = HealthyResult(
        models, days, tick_s, restate_s, old_every_s, seconds=time.perf_counter() - started
    )
    for rule in watched:
        mine = [k for (_, r, _), k in keys.items() if r == rule.id]
        result.keys[rule.id] = len(mine)
        result.rows[rule.id] = sum(q.rule.id == rule.id for q in detectors.rows)
        result.thresholds[rule.id] = detectors.threshold(rule, result.rows[rule.id])
        result.detector[rule.id] = int(det.count[mine].sum())
        result.old[rule.id] = int(old.count[mine].sum())
        result.old_keys_hit[rule.id] = int((old.count[mine] > 0).sum())
    return result


def healthy_table(r: HealthyResult) -> str:
    """Markdown table of (a) and (c)."""
    lines = [
        f"Healthy fleet: {r.models} models × 10 groups, {r.days:g} simulated days, detector tick "
        f"{r.tick_s:g} s (production 1 s: a longer tick gives each CUSUM a lower threshold c, so this "
        f"is conservative), boundaries re-stated every {r.restate_s:g} s, today's tests every "
        f"{r.old_every_s:g} s; {r.seconds:.0f} s wall.",
        "",
        "| rule | detector rows | (model, group) keys | threshold c | detector incidents | today's incidents "
        "| keys with one |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for rule_id in r.rows:
        lines.append(
            f"| {rule_id} | {r.rows[rule_id]} | {r.keys[rule_id]} | {r.thresholds[rule_id]:.1f} | "
            f"{r.detector[rule_id]} | {r.old[rule_id]} | {r.old_keys_hit[rule_id]} |"
        )
    lines.append(
        f"| **all** | {sum(r.rows.values())} | {sum(r.keys.values())} | | **{sum(r.detector.values())}** | "
        f"**{sum(r.old.values())}** | {sum(r.old_keys_hit.values())} |"
    )
    return "\n".join(lines)


# --- (b): every rule exactly on its threshold ---------------------------------------------------------

SEX_ONLY = {"sex": ATTRS["sex"]}
BOUNDARY_RULES = (
    "error-rate",
    "toxic-outputs",
    "accuracy-below-minimum",
    "accuracy-drop-24h",
    "latency-vs-normal",
    "disparate-impact",
    "fnr-gap",
    "group-shift",
)


def _on_threshold(rule: Rule, layout: Layout, reps: int) -> tuple[Traffic, Traffic, int, str]:
    """(history traffic, traffic on the threshold, prefill hours, what is on the threshold)."""
    before = Traffic.healthy(layout, reps, 20.0)
    t = Traffic.healthy(layout, reps, 20.0)
    female = layout.cells_with("sex", "F") if "sex" in layout.attrs else None
    if rule.metric == "error_rate":
        t.p_err[:] = before.p_err[:] = 0.01
        return before, t, 1, "error rate 1 %"
    if rule.metric == "flag_rate":
        t.flags[:, 0] = before.flags[:, 0] = rule.threshold or 0.0
        return before, t, 1, f"{rule.flag} rate {rule.threshold:.2%}"
    if rule.compare == "below_published_minimum":
        for x in (before, t):
            x.fnr[:] = x.fpr[:] = 0.2
        return before, t, 24, "accuracy 0.80 = published minimum"
    if rule.metric == "accuracy":
        t.fnr[:] = t.fpr[:] = 1.0 - 0.9 * 0.95
        return before, t, 8 * 24, "accuracy 0.855 = reference 0.90 × (1 − 5 %)"
    if rule.metric == "latency":
        t.latency = latency_probabilities(np.full(reps, 150.0))
        return before, t, 8 * 24, "p95 = 3 × the reference's p95"
    assert female is not None
    if rule.metric == "disparate_impact":
        for x in (before, t):
            x.set_favourable(slice(None), female, np.full(reps, 0.4))
        return before, t, 1, "F favourable 0.40 = 0.80 × M's 0.50"
    if rule.metric == "fnr_gap":
        for x in (before, t):
            x.fnr[:, female] = 0.15
            x.set_favourable(slice(None), np.ones(len(layout.cells), dtype=bool), np.full(reps, 0.5))
        return before, t, 24, "F FNR 0.15 = M's 0.10 + 5 points"
    t.set_favourable(slice(None), female, np.full(reps, 0.4))
    return before, t, 8 * 24, "F favourable moved 0.50 → 0.40, M unchanged (10 points)"


@dataclass
class BoundaryResult:
    """One rule's false alarms on its threshold."""

    rule_id: str
    truth: str
    budget_s: float
    reps: int
    horizon_s: float
    tick_s: float
    first: np.ndarray  # time to the first false alarm per replication (inf: none)
    seconds: float

    @property
    def restricted_mean(self) -> float:
        """Mean time to the first false alarm, a censored one counted as the horizon (≤ the mean)."""
        return float(np.minimum(self.first, self.horizon_s).mean())


def run_boundary(
    rule_id: str, budget_s: float, reps: int, horizon_s: float, tick_s: float, restate_s: float, seed: int
) -> BoundaryResult:
    """Part (b) for one rule."""
    assert reps & (reps - 1) == 0, "replications must be a power of two (see the module docstring)"
    rng = np.random.default_rng(seed)
    rule0 = shipped().by_id(rule_id)
    rule = rule0.model_copy(update={"false_alarm_every_s": budget_s / reps, "inhibited_by": ()})
    ids = [f"rep-{i:04d}" for i in range(reps)]
    facts = {m: ModelFacts(published_min_accuracy=0.8) for m in ids}
    rules = RuleSet(rules=(rule,), models=facts, fairness=Fairness(protected={"sex": {}}))
    layout = Layout(SEX_ONLY if rule.metric in BIAS_METRICS else {})
    before, traffic, hours, truth = _on_threshold(rule, layout, reps)
    history = History(reps, len(layout.fields), start=T0 - hours * HOUR)
    prefill(history, before, rng, hours)
    detectors = DetectorSet(rules, tick_s)
    base_rows: np.ndarray | None = None
    first = np.full(reps, np.inf)
    started = time.perf_counter()
    last_restate = -math.inf
    for _ in range(int(round(horizon_s / tick_s))):
        history.advance(traffic.draw(rng, tick_s), tick_s)
        now = history.now
        detectors.absorb(dict(zip(ids, layout.totals(history.cum), strict=True)), now)
        if now - last_restate >= restate_s:
            restate_all(detectors, layout, history, [rule], ids)
            last_restate = now
        if base_rows is None:
            base_rows = np.array([q.step == 0 for q in detectors.rows])
            owner = np.array([ids.index(m) for m in detectors.row_model])
            per_model = len(detectors.rows) // reps
            single = alarm_threshold(
                budget_s,
                tick_s,
                1 << math.ceil(math.log2(per_model)),
                len(ODDS_RATIOS),
            )
            assert abs(detectors.cap(0) - single) < 1e-9, (detectors.cap(0), single)
        hit = detectors.alarm[: len(base_rows)] & base_rows
        if hit.any():
            models = np.unique(owner[hit])
            first[models] = np.minimum(first[models], now - T0)
    return BoundaryResult(
        rule_id, truth, budget_s, reps, horizon_s, tick_s, first, time.perf_counter() - started
    )


def boundary_table(results: list[BoundaryResult]) -> str:
    """Markdown table of (b)."""
    r0 = results[0]
    lines = [
        f"Each rule exactly on its threshold, budget {_fmt_s(r0.budget_s)} per fleet of one model, "
        f"{r0.reps} replications, horizon {_fmt_s(r0.horizon_s)}, tick {r0.tick_s:g} s. Censored "
        "replications count as the horizon, so the mean shown is a lower bound of the true mean.",
        "",
        "| rule | on the threshold | budget | replications | mean time to 1st false alarm (≥) | median "
        "| no alarm within horizon | mean / budget (≥) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        median = float(np.median(r.first))
        lines.append(
            f"| {r.rule_id} | {r.truth} | {_fmt_s(r.budget_s)} | {r.reps} | {_fmt_s(r.restricted_mean)} | "
            f"{_fmt_s(median) if math.isfinite(median) else '> horizon'} | "
            f"{np.mean(~np.isfinite(r.first)):.1%} | {r.restricted_mean / r.budget_s:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the parts asked for and print their tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="CI size: 5 models, 1 day, 32 replications")
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--days", type=float, default=5.0)
    parser.add_argument("--tick-s", type=float, default=60.0)
    parser.add_argument("--restate-s", type=float, default=3600.0)
    parser.add_argument("--old-every-s", type=float, default=60.0)
    parser.add_argument("--budget", default="1h")
    parser.add_argument("--reps", type=int, default=128)
    parser.add_argument("--horizon", default="4h")
    parser.add_argument("--tick-b", type=float, default=10.0)
    parser.add_argument("--parts", default="abc")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.days, args.reps, args.horizon = 5, 1.0, 32, "2h"
    words = argv if argv is not None else sys.argv[1:]
    command = " ".join([".venv/bin/python", "bench/false_alarms.py", *words])
    print(f"`{command}` — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    if "a" in args.parts or "c" in args.parts:
        print(
            healthy_table(
                run_healthy(args.models, args.days, args.tick_s, args.restate_s, args.old_every_s, args.seed)
            )
        )
        print()
    if "b" in args.parts:
        budget, horizon = parse_duration(args.budget), parse_duration(args.horizon)
        results = [
            run_boundary(r, budget, args.reps, horizon, args.tick_b, 60.0, args.seed + i)
            for i, r in enumerate(BOUNDARY_RULES)
        ]
        print(boundary_table(results))
        print(f"\n({sum(r.seconds for r in results):.0f} s wall for (b))")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
