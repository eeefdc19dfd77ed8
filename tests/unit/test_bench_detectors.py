"""The detector benchmarks run at a tiny size, and their vectorised copy of today's tests decides
exactly as monitor.rules.evaluate / monitor.rules.bias (with BH) do on the same windows."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bench import detection_delay, false_alarms
from bench._detsim import ATTRS, HOUR, T0, History, Layout, Traffic, prefill
from bench._oldtests import old_bias, old_rate
from monitor.aggregates.window import VersionWindows, WindowStats
from monitor.incidents.decide import control_false_discoveries
from monitor.rules.bias import evaluate_bias
from monitor.rules.evaluate import evaluate
from monitor.rules.schema import ModelFacts


def test_the_healthy_fleet_has_no_detector_incident_and_the_table_has_every_rule() -> None:
    result = false_alarms.run_healthy(models=3, days=0.25, tick_s=60, restate_s=3600, old_every_s=60, seed=3)
    assert sum(result.detector.values()) == 0
    assert {"error-rate", "accuracy-drop-24h", "disparate-impact", "fnr-gap", "group-shift"} <= set(
        result.rows
    )
    assert result.rows["disparate-impact"] == 3 * 10  # 3 models × 10 group values, one step
    table = false_alarms.healthy_table(result)
    assert table.count("\n| ") == len(result.rows) + 2  # the header, a row per rule, the total


def test_on_the_threshold_and_delay_tables() -> None:
    b = false_alarms.run_boundary("error-rate", 3600, 8, 1800, 10.0, 60.0, seed=4)
    assert len(b.first) == 8 and b.restricted_mean <= 1800
    assert "| error-rate | error rate 1 % |" in false_alarms.boundary_table([b])
    d = detection_delay.run_case(
        "error-rate", "0.4 % → 5 %", detection_delay._error(0.05), 1000.0, 4, 1024, 300, 5
    )
    assert np.isfinite(d.detector.seconds).all() and (d.detector.seconds <= d.today.seconds).all()
    table = detection_delay.table([d], 300, 4, 1024)
    assert "| error-rate | 0.4 % → 5 % | 1000 |" in table


class _Windows(VersionWindows):
    """A VersionWindows whose windows are given (the rule functions read only `window`)."""

    def __init__(self, by_window: dict[int, WindowStats]) -> None:
        super().__init__(now=0.0, minutes=[], hours=[])
        self.by_window = by_window

    def window(self, window_s: int, *, shift_s: int = 0) -> WindowStats:
        return self.by_window[window_s]


@pytest.fixture(scope="module")
def mixed() -> tuple[Layout, History, list[str]]:
    """Eight models from healthy to clearly past every threshold, with 8 days of history."""
    rng = np.random.default_rng(7)
    layout = Layout(ATTRS)
    m = 8
    t = Traffic.healthy(layout, m, 30.0)
    prefill_hours = 8 * 24
    history = History(m, len(layout.fields), start=T0 - prefill_hours * HOUR)
    prefill(history, t, rng, prefill_hours)
    spread = np.linspace(0.0, 1.0, m)
    t.p_err = 0.005 + 0.03 * spread
    t.flags[:, 0] = 0.0005 + 0.003 * spread
    t.fnr[:] = t.fpr[:] = 0.1 + 0.2 * spread[:, None]
    female = layout.cells_with("sex", "F")
    t.set_favourable(slice(None), female, 0.5 - 0.25 * spread)
    t.fnr[:, female] += 0.1 * spread[:, None]
    for _ in range(20):
        history.advance(t.draw(rng, 60.0), 60.0)
    return layout, history, [f"m{i}" for i in range(m)]


def _stats(layout: Layout, sums: np.ndarray) -> list[WindowStats]:
    return layout.window_stats(sums)


def test_the_vectorised_tests_decide_as_evaluate_and_evaluate_bias(mixed: Any) -> None:
    layout, history, ids = mixed
    rules = false_alarms.shipped()
    fired_somewhere = 0
    for rule in rules.rules:
        if not rule.id.startswith(("error-rate", "toxic", "accuracy-drop-24h", "accuracy-below", "latency")):
            if rule.metric not in ("disparate_impact", "fnr_gap", "group_shift"):
                continue
        current = _stats(layout, history.window(rule.window_s))
        sums = history.baseline(rule)
        base = _stats(layout, sums) if sums is not None else [None] * len(ids)
        if rule.metric in ("disparate_impact", "fnr_gap", "group_shift"):
            findings = {
                mid: {
                    rule.id: evaluate_bias(
                        rule, mid, "1", _Windows({rule.window_s: c}), baseline=b, fairness=rules.fairness
                    )
                }
                for mid, c, b in zip(ids, current, base, strict=True)
            }
            decided = control_false_discoveries([rule], findings)
            expected = {(mid, f.group) for mid in ids for f in decided[mid][rule.id] if f.fired}
            hit, _ = old_bias(rule, layout, history, rules.fairness)
            got = {
                (ids[i], f"{a}={v}")
                for i, g in zip(*np.nonzero(hit), strict=True)
                for a, v in [layout.groups[g]]
            }
        else:
            facts = ModelFacts(published_min_accuracy=0.8)
            expected = set()
            levels = {}
            for mid, c, b in zip(ids, current, base, strict=True):
                for f in evaluate(rule, mid, "1", _Windows({rule.window_s: c}), baseline=b, facts=facts):
                    if f.fired:
                        expected.add((mid, None))
                        levels[mid] = f.level
            hit, top = old_rate(rule, layout, history, np.full(len(ids), 0.8))
            got = {(ids[i], None) for i in np.flatnonzero(hit)}
            steps = rule.steps(0.8)
            assert {ids[i]: steps[int(top[i])].level for i in np.flatnonzero(hit)} == levels, rule.id
        assert got == expected, rule.id
        fired_somewhere += len(expected)
    assert fired_somewhere >= 5  # the comparison covered firing cases, not only quiet ones
