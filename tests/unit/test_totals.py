"""A share's totals carry every bucket counter per version, and `split_totals` reads them back."""

from __future__ import annotations

from collections import Counter

from monitor.aggregates.predictions import LATENCY_SUM_US, Located, escape, fold, split_totals, version_totals
from monitor.events import PredictionEvent

T0 = 1_700_000_000.0  # a minute start
VERSIONS = ("1", "a|b%7C", "%25|")


def _events() -> list[Located]:
    events = []
    for i in range(300):
        version = VERSIONS[i % 3]
        failed = i % 11 == 0
        events.append(
            PredictionEvent(
                model_id="m",
                model_version=version,
                request_id=f"r{i}",
                ts=T0 + i * 1.7,  # spans several minutes
                positive=None if i % 7 == 0 else i % 2 == 0,
                error="timeout" if failed else None,
                latency_ms=None if i % 5 == 0 else 0.35 * i,
                groups={"sex": "FM"[i % 2], "band|x": i % 3, "ok": i % 4 == 0},
                flags=["toxic"] if i % 13 == 0 else [],
            )
        )
    return [Located(e, 0, i) for i, e in enumerate(events)]


def test_totals_are_every_minute_counter_summed_per_version() -> None:
    share = fold(_events())["m"]
    assert len({minute for _, minute in share.minutes}) > 3
    want: Counter[str] = Counter()
    for (version, _), counts in share.minutes.items():
        for name, value in counts.items():
            want[escape(version) + "|" + name] += value
    latency = {v: sum(0.35 * i for i in range(300) if VERSIONS[i % 3] == v and i % 5) for v in VERSIONS}
    got = version_totals(share)
    for version, total_ms in latency.items():
        # in whole microseconds (summed in another order here, so a rounding apart at most)
        assert abs(got.pop(escape(version) + "|" + LATENCY_SUM_US) - total_ms * 1000) <= 1
    assert got == want
    # the fields the detectors read are there, groups and flags included
    head = escape("1") + "|"
    for name in (
        "n",
        "err",
        "dec",
        "pos",
        "latn",
        "f|toxic",
        "g|sex|F|n",
        "g|band%7Cx|0|dec",
        "g|ok|true|pos",
    ):
        assert got[head + name] > 0, name
    assert got[head + "n"] == 100 and got[head + "err"] == sum(1 for i in range(0, 300, 3) if i % 11 == 0)


def test_split_totals_round_trips_versions_with_separators() -> None:
    share = fold(_events())["m"]
    totals = version_totals(share)
    as_redis = {name.encode(): str(value).encode() for name, value in totals.items()}
    for raw in (as_redis, {name: str(value) for name, value in totals.items()}):
        split = split_totals(raw)
        assert set(split) == set(VERSIONS)
        for version, fields in split.items():
            assert {escape(version) + "|" + name: value for name, value in fields.items()} == {
                name: value for name, value in totals.items() if name.startswith(escape(version) + "|")
            }
    split = split_totals(as_redis)
    assert split["a|b%7C"]["g|band%7Cx|1|n"] == sum(1 for i in range(1, 300, 3) if i % 3 == 1)
    assert split["1"]["never-written"] == 0  # a missing field reads as zero


def test_split_totals_keeps_fields_it_does_not_know() -> None:
    assert split_totals({"v|n": "3", "v|some|future|stat": "7", "w|lab": 2}) == {
        "v": {"n": 3, "some|future|stat": 7},
        "w": {"lab": 2},
    }
