"""The detector set on totals (pure): deltas, lateness tiers, state round trips, ladders, budget."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from monitor.aggregates.window import WindowStats
from monitor.detect.sequential import ODDS_RATIOS, alarm_threshold
from monitor.rules.detectors import DetectorSet
from monitor.rules.loader import load_rules
from monitor.rules.questions import timely
from monitor.rules.schema import Rule, RuleSet
from monitor.rules.verdicts import finding

RULES = load_rules(Path(__file__).resolve().parents[2] / "monitor" / "rules" / "default.yaml")


def only(*ids: str) -> RuleSet:
    return RULES.model_copy(update={"rules": tuple(r for r in RULES.rules if r.id in ids)})


def row(d: DetectorSet, key: str) -> int:
    (i,) = [i for i, q in enumerate(d.rows) if q.key == key]
    return i


def test_the_totals_difference_is_what_a_tick_feeds_and_a_repeat_feeds_nothing() -> None:
    d = DetectorSet(only("error-rate"), 1.0)
    d.absorb({"m": {"1|n": 1000, "1|err": 10}}, 100.0)
    i = row(d, "error-rate|1||0|up")
    assert d.bank.recent_total[i] == 1000 and d.bank.stat[i].max() == 0  # 1 %: on the threshold
    d.absorb({"m": {"1|n": 1000, "1|err": 10}}, 101.0)  # nothing new (a replay ingest refused)
    assert d.bank.recent_total[i] == pytest.approx(1000 * math.exp(-1 / 300))
    d.absorb({"m": {"1|n": 1500, "1|err": 60}}, 102.0)  # 500 new, 50 of them failed
    assert d.bank.total[i].max() == 500 and d.bank.bad[i].max() == 50
    # a totals key that expired and came back starts over: its values are the new events
    d.absorb({"m": {"1|n": 200, "1|err": 2}}, 103.0)
    decay = math.exp(-1 / 300)
    assert d.bank.recent_total[i] == pytest.approx(((1000 * decay) * decay + 500) * decay + 200)


def test_a_five_percent_error_rate_fires_the_base_step_and_its_own_step() -> None:
    d = DetectorSet(only("error-rate"), 1.0)
    n = err = 0
    fired_at = None
    for t in range(60):
        n, err = n + 100, err + 8  # 8 % for a minute at 100 requests a second
        d.absorb({"m": {"1|n": n, "1|err": err}}, float(t))
        if fired_at is None and d.alarmed_by_model():
            fired_at = t
    states = d.states("m", "error-rate", None)
    f = finding(d, "m", RULES.by_id("error-rate"), states, None)
    assert fired_at is not None and fired_at < 20
    assert (f.fired, f.severity, f.level) == (True, "HIGH", 2)  # past 5 %, not past 20 %
    assert f.observation["explanation"].startswith("Since ")
    assert f.observation["rate_interval"][0] < 0.08 < f.observation["rate_interval"][1]


def test_late_tiers_older_than_the_window_are_left_out() -> None:
    assert timely((("err", 1.0),), 3600) == (
        ("err", 1.0),
        ("~3|err", -1.0),
        ("~4|err", -1.0),
        ("~5|err", -1.0),
    )
    d = DetectorSet(only("error-rate"), 1.0)  # a 5-minute rule: anything over 5 minutes late is out
    d.absorb({"m": {"1|n": 1000, "1|err": 500, "1|~4|n": 1000, "1|~4|err": 500}}, 0.0)
    i = row(d, "error-rate|1||0|up")
    assert d.bank.recent_total[i] == 0 and not d.alarmed_by_model()


def test_state_and_cursor_round_trip_exactly() -> None:
    a, b = DetectorSet(only("error-rate"), 1.0), DetectorSet(only("error-rate"), 1.0)
    a.absorb({"m": {"1|n": 3000, "1|err": 60}}, 0.0)
    a.absorb({"m": {"1|n": 3300, "1|err": 75}}, 1.0)
    b.load("m", a.dump("m"))
    for d in (a, b):
        d.absorb({"m": {"1|n": 3600, "1|err": 95}}, 2.0)
    assert np.array_equal(a.bank.stat, b.bank.stat) and np.array_equal(a.bank.total, b.bank.total)
    assert np.allclose(a.bank.recent_total, b.bank.recent_total)
    b.load("x", b"not msgpack")  # a state of another format is ignored, not fatal


def test_a_sustained_accuracy_fall_reaches_the_critical_step() -> None:
    """0.90 → 0.78 (−13 %) against a reference of 20,000 labels: the 10 % step's detector fires
    once its evidence is in, whatever the 24 h window still holds."""
    rules = only("accuracy-drop-24h")
    d = DetectorSet(rules, 1.0)
    reference = WindowStats(labelled=20_000, correct=18_000, count=20_000)
    lab = cor = 0
    severity = None
    for t in range(7200):  # two hours of 2 labels a second
        lab, cor = lab + 2, cor + (2 if t % 50 < 28 else 1)  # 78 of every 100 correct
        d.take({"m": {"1|n": lab, "1|lab": lab, "1|cor": cor}})
        if t == 0:
            current = WindowStats(count=lab, labelled=lab, correct=cor)

            def now_window(rule: Rule, c: WindowStats = current) -> WindowStats:
                return c

            d.restate("m", "1", now_window, lambda rule: reference)
        d.step(float(t))
        if d.alarmed_by_model():
            f = finding(d, "m", rules.rules[0], d.states("m", "accuracy-drop-24h", None), None)
            severity = f.severity
            if severity == "CRITICAL":
                break
    assert severity == "CRITICAL"


def test_the_threshold_is_the_rules_budget_over_its_rows() -> None:
    d = DetectorSet(only("error-rate"), 1.0)
    d.absorb({f"m{i}": {"1|n": 10, "1|err": 0} for i in range(5)}, 0.0)
    assert sum(q.rule.id == "error-rate" for q in d.rows) == 15  # 5 models × 3 steps, counted as 16
    assert d.cap(0) == pytest.approx(alarm_threshold(90 * 86_400, 1.0, 16, len(ODDS_RATIOS)))


def test_groups_found_in_the_totals_get_rows_of_the_bias_rules() -> None:
    d = DetectorSet(only("disparate-impact"), 1.0)
    fields: dict[str | bytes, str | bytes | int] = {"1|n": 10, "1|g|sex|F|dec": 5, "1|g|sex|M|dec": 5}
    fields["1|g|zip3|941|dec"] = 10
    d.absorb({"m": fields}, 0.0)
    assert sorted(q.group or "" for q in d.rows) == ["sex=F", "sex=M", "zip3=941"]
    assert all(math.isnan(d.p0(i)) for i in range(len(d.rows)))  # no boundary before a refresh
