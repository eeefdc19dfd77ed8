"""Folding a batch into per-model shares, and reading windows back from the counters."""

from __future__ import annotations

from collections import Counter

from monitor.aggregates import histogram
from monitor.aggregates.predictions import (
    Located,
    after_offsets,
    escape,
    fold,
    group_field,
    unescape,
)
from monitor.aggregates.window import WindowStats, sum_buckets
from monitor.events import PredictionEvent

T0 = 1_760_000_040.0  # a minute boundary


def ev(model: str = "m", version: str = "1", ts: float = T0, **kw: object) -> PredictionEvent:
    return PredictionEvent(model_id=model, model_version=version, request_id="r", ts=ts, **kw)  # type: ignore[arg-type]


def test_fold_groups_by_model_version_and_minute() -> None:
    batch = [
        Located(ev(positive=True, groups={"sex": "F"}, latency_ms=10.0), 0, 5),
        Located(ev(positive=False, groups={"sex": "M"}, latency_ms=20.0), 1, 9),
        Located(ev(error="boom", groups={"sex": "F"}), 0, 6),
        Located(ev(ts=T0 + 61, flags=["toxic", "gibberish"]), 0, 7),
        Located(ev(version="2"), 2, 1),
        Located(ev(model="other", positive=True), 0, 8),
    ]
    shares = fold(batch)
    assert set(shares) == {"m", "other"}
    m = shares["m"]
    assert m.events == 5
    assert m.offsets == {0: (5, 7), 1: (9, 9), 2: (1, 1)}
    assert m.last_event_s == T0 + 61
    first = m.minutes[("1", int(T0))]
    assert first["n"] == 3 and first["err"] == 1 and first["dec"] == 2 and first["pos"] == 1
    assert first[group_field("sex", "F", "n")] == 2
    assert first[group_field("sex", "F", "pos")] == 1
    assert first[group_field("sex", "F", "err")] == 1
    assert first[group_field("sex", "M", "dec")] == 1
    assert first["latn"] == 2
    assert first[f"lat|{histogram.bucket_of(10.0)}"] == 1
    second = m.minutes[("1", int(T0) + 60)]
    assert second["f|toxic"] == 1 and second["f|gibberish"] == 1 and second["n"] == 1
    assert m.minutes[("2", int(T0))]["n"] == 1
    hours = m.hours()
    assert sum(c["n"] for c in hours.values()) == 5


def test_hour_rollup_equals_sum_of_minutes() -> None:
    batch = [Located(ev(ts=T0 + 60 * i, positive=i % 2 == 0), 0, i) for i in range(180)]
    share = fold(batch)["m"]
    minutes_total = sum_buckets([{k: str(v) for k, v in c.items()} for c in share.minutes.values()])
    hours_total = sum_buckets([{k: str(v) for k, v in c.items()} for c in share.hours().values()])
    assert minutes_total == hours_total
    assert len(share.hours()) in (3, 4)


def test_after_offsets_drops_exactly_the_applied_events() -> None:
    batch = [Located(ev(), p, o) for p in (0, 1) for o in range(10)]
    fresh = after_offsets(batch, {0: 4, 1: 9})
    assert [(x.partition, x.offset) for x in fresh] == [(0, o) for o in range(5, 10)]


def test_escape_round_trips_separators() -> None:
    for text in ("a|b", "100%", "%7C", "plain", "|%|"):
        assert unescape(escape(text)) == text
        assert "|" not in escape(text)


def test_window_stats_parse_summed_counters() -> None:
    counters = Counter(
        {
            "n": 10,
            "err": 1,
            "dec": 9,
            "pos": 6,
            group_field("zip|3", "94|1", "n"): 4,
            group_field("zip|3", "94|1", "pos"): 1,
            group_field("zip|3", "94|1", "dec"): 4,
            "f|toxic": 2,
            f"lat|{histogram.bucket_of(50.0)}": 10,
            "latn": 10,
        }
    )
    stats = WindowStats.from_counters(counters)
    assert stats.count == 10 and stats.error_rate == 0.1 and stats.favourable == 6
    assert stats.groups["zip|3"]["94|1"].favourable == 1
    assert stats.groups["zip|3"]["94|1"].decisions == 4
    assert stats.flags == {"toxic": 2}
    assert stats.latency_count == 10
    assert stats.latency_quantile_s(0.5) is not None
    assert abs(stats.latency_quantile_s(0.5) - 0.05) / 0.05 < 0.05  # type: ignore[operator]


def test_an_errored_request_is_no_decision_even_with_positive() -> None:
    batch = [
        Located(ev(positive=True, groups={"sex": "F"}), 0, 1),
        Located(ev(positive=True, error="timeout", groups={"sex": "F"}), 0, 2),
        Located(ev(positive=False, error=True, groups={"sex": "F"}), 0, 3),
    ]
    share = fold(batch)["m"]
    counts = share.minutes[("1", int(T0))]
    assert counts["n"] == 3 and counts["err"] == 2
    assert counts["dec"] == 1 and counts["pos"] == 1
    assert counts[group_field("sex", "F", "dec")] == 1 and counts[group_field("sex", "F", "pos")] == 1
    assert share.unfavourable == []  # the errored "unfavourable" request affected nobody's decision


def test_fold_sums_latency_per_version() -> None:
    batch = [
        Located(ev(latency_ms=10.0), 0, 1),
        Located(ev(latency_ms=2.5, ts=T0 + 60), 0, 2),
        Located(ev(version="2", latency_ms=7.0), 0, 3),
        Located(ev(version="2"), 0, 4),
    ]
    assert fold(batch)["m"].latency_sum_ms == {"1": 12.5, "2": 7.0}
