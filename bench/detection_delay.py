"""Detection delay of the sequential detectors beside today's fixed-window tests, same traffic.

For each rule, a few change sizes at three traffic levels (requests/s per model): R replications
(models) run in one monitor.rules.detectors.DetectorSet with 1 s ticks and an injected clock; the
rule's budget is the shipped 90 d, scaled so each row's threshold is that of a fleet of --fleet
models (B · fleet / R, R a power of two). The rule's window (and its baseline: 8 days of history
where it has one) is filled with healthy traffic first, then 120 s of healthy 1 s ticks, then the
change, sustained. Today's tests (bench/_oldtests.py: evaluate / evaluate_bias, BH over the R
models' findings of the tick for bias rules, a smaller family than a real fleet's, so kinder to
them) run on the same windows every tick. Boundaries are re-stated every 60 s (the evaluator's
refresh). Delay = time from the change to the first alarm of the base step (and, for
accuracy-drop-24h, of its CRITICAL step); events = the rule's trials since the change (requests,
labelled predictions, or the changed group's decisions / actual positives). "> h" = no alarm
within the horizon for at least that share of replications.

Pre-change traffic: errors 0.4 %, toxic flags 0.02 %, accuracy 0.90 (60 % labelled), p95 ≈ 82 ms,
favourable rate 0.50 for everyone (for disparate impact: F at 0.45, DI 0.9), FNR 0.10 everywhere.

Usage: .venv/bin/python bench/detection_delay.py [--seed 1] [--quick] [--reps 32] [--fleet 1024]
           [--horizon 1h] [--rates 10,100,1000] [--rules error-rate,...]
Full run (BENCHMARKS.md): --reps 32 --horizon 2h
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._detsim import (
    ATTRS,
    HOUR,
    STATS,
    T0,
    History,
    Layout,
    Traffic,
    latency_probabilities,
    prefill,
    restate_all,
)
from bench._oldtests import old_bias, old_rate
from monitor.aggregates.predictions import (
    ACTUAL_POSITIVE,
    CORRECT,
    COUNT,
    DECISIONS,
    ERRORS,
    FALSE_NEGATIVE,
    FAVOURABLE,
    LABELLED,
    flag_field,
    group_field,
)
from monitor.rules.bias import BIAS_METRICS
from monitor.rules.detectors import DetectorSet
from monitor.rules.durations import parse_duration
from monitor.rules.loader import load_rules
from monitor.rules.schema import ModelFacts, Rule, RuleSet

RULES_PATH = ROOT / "monitor" / "rules" / "default.yaml"
WARMUP_S = 120
Change = Callable[[Traffic, Layout], None]


def _error(p: float) -> Change:
    def apply(t: Traffic, lay: Layout) -> None:
        t.p_err[:] = p

    return apply


def _toxic(p: float) -> Change:
    def apply(t: Traffic, lay: Layout) -> None:
        t.flags[:, 0] = p

    return apply


def _accuracy(relative: float) -> Change:
    def apply(t: Traffic, lay: Layout) -> None:
        t.fnr[:] = t.fpr[:] = 1.0 - 0.9 * (1.0 - relative)

    return apply


def _latency(factor: float) -> Change:
    def apply(t: Traffic, lay: Layout) -> None:
        t.latency = latency_probabilities(np.full(len(t.rate), 50.0 * factor))

    return apply


def _favourable_f(q: float) -> Change:
    def apply(t: Traffic, lay: Layout) -> None:
        t.set_favourable(slice(None), lay.cells_with("sex", "F"), np.full(len(t.rate), q))

    return apply


def _fnr_f(points: float) -> Change:
    def apply(t: Traffic, lay: Layout) -> None:
        female = lay.cells_with("sex", "F")
        q = t.favourable()
        t.fnr[:, female] = 0.1 + points
        t.set_favourable(slice(None), female, q[:, female])  # the same decisions rate: only FNR moves

    return apply


# rule -> (prefill hours, pre-change set-up, [(label, change)], trials field)
CASES: dict[str, tuple[int, Change | None, list[tuple[str, Change]], str]] = {
    "error-rate": (
        1,
        None,
        [("0.4 % → 1.5 %", _error(0.015)), ("0.4 % → 2 %", _error(0.02)), ("0.4 % → 5 %", _error(0.05))],
        COUNT,
    ),
    "toxic-outputs": (
        1,
        None,
        [("0.02 % → 0.2 % (2× threshold)", _toxic(0.002)), ("0.02 % → 0.5 % (5×)", _toxic(0.005))],
        COUNT,
    ),
    "accuracy-drop-24h": (
        8 * 24,
        None,
        [("−6 %", _accuracy(0.06)), ("−12 %", _accuracy(0.12)), ("−25 %", _accuracy(0.25))],
        LABELLED,
    ),
    "accuracy-below-minimum": (
        24,
        None,
        [("0.90 → 0.79 (−12 %, min 0.80)", _accuracy(0.12)), ("0.90 → 0.675 (−25 %)", _accuracy(0.25))],
        LABELLED,
    ),
    "latency-vs-normal": (8 * 24, None, [("p95 × 4", _latency(4.0)), ("p95 × 8", _latency(8.0))], COUNT),
    "disparate-impact": (
        1,
        _favourable_f(0.45),
        [("DI 0.9 → 0.75", _favourable_f(0.375)), ("DI 0.9 → 0.6", _favourable_f(0.3))],
        group_field("sex", "F", DECISIONS),
    ),
    "fnr-gap": (
        24,
        None,
        [("FNR gap 0 → +8 points", _fnr_f(0.08)), ("0 → +15 points", _fnr_f(0.15))],
        group_field("sex", "F", ACTUAL_POSITIVE),
    ),
    "group-shift": (
        8 * 24,
        None,
        [("F favourable −15 points", _favourable_f(0.35)), ("−25 points", _favourable_f(0.25))],
        group_field("sex", "F", DECISIONS),
    ),
}


def _subset(rule: Rule, layout: Layout) -> np.ndarray:
    """The totals columns the rule reads (the others are left out of absorb, for speed)."""
    names = [COUNT, ERRORS]
    if rule.metric == "flag_rate":
        names.append(flag_field(rule.flag or ""))
    elif rule.metric == "accuracy":
        names += [LABELLED, CORRECT]
    elif rule.metric == "latency":
        return np.array([layout.col[n] for n in names] + list(layout.lat_cols))
    elif rule.metric in BIAS_METRICS:
        wanted = (ACTUAL_POSITIVE, FALSE_NEGATIVE) if rule.metric == "fnr_gap" else (DECISIONS, FAVOURABLE)
        names += [group_field(a, v, s) for a, v in layout.groups for s in STATS if s in wanted]
    return np.array([layout.col[n] for n in names])


@dataclass
class Delays:
    """Seconds and trials from the change to the first alarm per replication (inf: none)."""

    seconds: np.ndarray
    events: np.ndarray


@dataclass
class CaseResult:
    """One (rule, change, traffic) row: the detectors' and today's delays."""

    rule_id: str
    change: str
    rate: float
    detector: Delays
    today: Delays
    detector_top: Delays | None
    today_top: Delays | None
    seconds: float


def run_case(
    rule_id: str, label: str, change: Change, rate: float, reps: int, fleet: int, horizon_s: float, seed: int
) -> CaseResult:
    """Simulate one change at one traffic level for `reps` replications."""
    assert reps & (reps - 1) == 0 and fleet >= reps
    rng = np.random.default_rng(seed)
    shipped = load_rules(RULES_PATH)
    rule0 = shipped.by_id(rule_id)
    rule = rule0.model_copy(
        update={"false_alarm_every_s": rule0.false_alarm_every_s * fleet // reps, "inhibited_by": ()}
    )
    ids = [f"rep-{i:04d}" for i in range(reps)]
    facts = {m: ModelFacts(published_min_accuracy=0.8) for m in ids}
    rules = RuleSet(rules=(rule,), models=facts, fairness=shipped.fairness)
    layout = Layout(ATTRS if rule.metric in BIAS_METRICS else {})
    hours, setup, _, trials = CASES[rule_id]
    traffic = Traffic.healthy(layout, reps, rate)
    if setup is not None:
        setup(traffic, layout)
    history = History(reps, len(layout.fields), start=T0 - hours * HOUR)
    prefill(history, traffic, rng, hours)
    subset = _subset(rule, layout)
    detectors = DetectorSet(rules, 1.0)
    published = np.full(reps, 0.8)
    # accuracy-drop-24h: the time to its CRITICAL step (ladder step 1, a 10 % drop) is reported too
    top_step = 1 if rule_id == "accuracy-drop-24h" else None
    nan = np.full(reps, np.inf)
    got = {k: (nan.copy(), nan.copy()) for k in ("det", "old", "det_top", "old_top")}
    started = time.perf_counter()
    changed_at, at_change = math.inf, np.zeros(reps)
    last_restate = -math.inf
    owner: np.ndarray | None = None
    for tick in range(int(WARMUP_S + horizon_s)):
        if tick == WARMUP_S:
            change(traffic, layout)
            changed_at, at_change = history.now, history.cum[:, layout.col[trials]].copy()
        history.advance(traffic.draw(rng, 1.0), 1.0)
        now = history.now
        detectors.absorb(dict(zip(ids, layout.totals(history.cum, subset), strict=True)), now)
        if now - last_restate >= 60:
            restate_all(detectors, layout, history, [rule], ids, subset)
            last_restate = now
        if tick < WARMUP_S:
            continue
        if owner is None:
            owner = np.array([ids.index(m) for m in detectors.row_model])
            steps = np.array([q.step for q in detectors.rows])
        alarm = detectors.alarm[: len(owner)]
        det = np.zeros(reps, dtype=bool)
        det[owner[alarm & (steps == 0)]] = True
        det_top = np.zeros(reps, dtype=bool)
        if top_step is not None:
            det_top[owner[alarm & (steps == top_step)]] = True
            det_top &= det  # the ladder counts only while the base step fires
        if rule.metric in BIAS_METRICS:
            fired, _ = old_bias(rule, layout, history, rules.fairness)
            old, old_top = fired.any(axis=1), np.zeros(reps, dtype=bool)
        else:
            old, top = old_rate(rule, layout, history, published)
            old_top = old & (top >= (top_step or 99))
        events = history.cum[:, layout.col[trials]] - at_change
        for key, hit in (("det", det), ("old", old), ("det_top", det_top), ("old_top", old_top)):
            secs, evs = got[key]
            new = hit & ~np.isfinite(secs)
            secs[new], evs[new] = now - changed_at, events[new]
        wanted = ["det", "old"] + (["det_top", "old_top"] if top_step is not None else [])
        if all(np.isfinite(got[k][0]).all() for k in wanted):
            break
    tops = (Delays(*got["det_top"]), Delays(*got["old_top"])) if top_step is not None else (None, None)
    return CaseResult(
        rule_id, label, rate, Delays(*got["det"]), Delays(*got["old"]), *tops, time.perf_counter() - started
    )


def _q(x: np.ndarray, q: float) -> float:
    ordered = np.sort(x)
    return float(ordered[max(0, math.ceil(q * len(ordered)) - 1)])


def _cell(d: Delays, horizon_s: float) -> str:
    parts = []
    for q in (0.5, 0.95):
        s, e = _q(d.seconds, q), _q(d.events, q)
        parts.append(f"> {_fmt(horizon_s)}" if not math.isfinite(s) else f"{_fmt(s)} ({_events(e)})")
    return " / ".join(parts)


def _fmt(s: float) -> str:
    return f"{s:.0f} s" if s < 600 else (f"{s / 60:.0f} min" if s < 2 * HOUR else f"{s / HOUR:.1f} h")


def _events(e: float) -> str:
    return f"{e / 1e6:.1f}M" if e >= 1e6 else (f"{e / 1e3:.1f}k" if e >= 1e4 else f"{e:.0f}")


def _faster(a: Delays, b: Delays) -> str:
    da, db = _q(a.seconds, 0.5), _q(b.seconds, 0.5)
    if da == db:
        return "tie" if math.isfinite(da) else "neither"
    return "detector" if da < db else "today"


def table(results: list[CaseResult], horizon_s: float, reps: int, fleet: int) -> str:
    """Markdown table, one row per (rule, change, traffic) and one more for a CRITICAL step."""
    lines = [
        f"1 s ticks for both; {reps} replications per row; detector thresholds of a {fleet}-model fleet "
        f"(budget 90 d); horizon {horizon_s / HOUR:g} h after the change. Cells: median / p95 delay "
        "(the rule's events since the change).",
        "",
        "| rule | change | req/s | detector: median / p95 | today: median / p95 | faster (median) |",
        "|---|---|---:|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.rule_id} | {r.change} | {r.rate:g} | {_cell(r.detector, horizon_s)} | "
            f"{_cell(r.today, horizon_s)} | {_faster(r.detector, r.today)} |"
        )
        if r.detector_top is not None and r.today_top is not None and "−6" not in r.change:
            lines.append(
                f"| {r.rule_id} **CRITICAL** | {r.change} | {r.rate:g} | "
                f"{_cell(r.detector_top, horizon_s)} | {_cell(r.today_top, horizon_s)} | "
                f"{_faster(r.detector_top, r.today_top)} |"
            )
    return "\n".join(lines)


def run(
    rules: list[str], rates: list[float], reps: int, fleet: int, horizon_s: float, seed: int
) -> list[CaseResult]:
    """Every case of every rule at every traffic level."""
    results = []
    for i, rule_id in enumerate(rules):
        for j, (label, change) in enumerate(CASES[rule_id][2]):
            for k, rate in enumerate(rates):
                results.append(
                    run_case(
                        rule_id, label, change, rate, reps, fleet, horizon_s, seed + 100 * i + 10 * j + k
                    )
                )
    return results


def main(argv: list[str] | None = None) -> int:
    """Run and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="CI size: 4 replications, 10 min, 2 rates")
    parser.add_argument("--reps", type=int, default=32)
    parser.add_argument("--fleet", type=int, default=1024)
    parser.add_argument("--horizon", default="1h")
    parser.add_argument("--rates", default="10,100,1000")
    parser.add_argument("--rules", default=",".join(CASES))
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.horizon, args.rates = 4, "10m", "100,1000"
    words = argv if argv is not None else sys.argv[1:]
    command = " ".join([".venv/bin/python", "bench/detection_delay.py", *words])
    print(f"`{command}` — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    horizon = parse_duration(args.horizon)
    started = time.perf_counter()
    results = run(
        args.rules.split(","),
        [float(r) for r in args.rates.split(",")],
        args.reps,
        args.fleet,
        horizon,
        args.seed,
    )
    print(table(results, horizon, args.reps, args.fleet))
    print(f"\n({time.perf_counter() - started:.0f} s wall)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
