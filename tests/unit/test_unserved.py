""" "Unserved users" means users who got no successful prediction in the window (pure parts)."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from monitor.aggregates.predictions import Located, fold
from monitor.aggregates.window import VersionWindows, unserved
from monitor.events import PredictionEvent
from monitor.rules.evaluate import evaluate
from monitor.rules.loader import load_rules
from monitor.rules.schema import Rule

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_800_000_000.0
HOUR = 3600


def ev(user: str | None, ts: float, failed: bool, version: str = "1") -> PredictionEvent:
    return PredictionEvent(
        model_id="m",
        model_version=version,
        request_id=f"{user}-{ts}",
        ts=ts,
        prediction=None if failed else 1,
        error=True if failed else None,
        user_id=user,
    )


def test_the_fold_keeps_each_users_newest_request_and_newest_success_per_version() -> None:
    batch = [
        ev("a", NOW - 30, False),
        ev("a", NOW - 10, True),
        ev("a", NOW - 50, False),  # newest success: -30
        ev("b", NOW - 20, True),
        ev("b", NOW - 40, True),  # never served
        ev("c", NOW - 5, False, version="2"),
        ev(None, NOW, True),  # no user id: not a user
    ]
    share = fold(Located(e, 0, i) for i, e in enumerate(batch))["m"]
    assert share.users == {"1": {"a": NOW - 10, "b": NOW - 20}, "2": {"c": NOW - 5}}
    assert share.served == {"1": {"a": NOW - 30}, "2": {"c": NOW - 5}}


def test_unserved_is_seen_minus_served() -> None:
    assert unserved(1000, 1000) == (1000, 0)
    assert unserved(1080, 1000) == (1080, 80)
    assert unserved(10, 12) == (10, 0)  # a trim between the two reads never makes it negative


def windows(users: int, unserved_users: int) -> VersionWindows:
    return VersionWindows(NOW, [Counter() for _ in range(60)], [Counter()], {HOUR: (users, unserved_users)})


def rule() -> Rule:
    return load_rules(ROOT / "monitor" / "rules" / "default.yaml").by_id("unserved-users")


def simulate(repeat_users: int, error_rate: float, never_served: int, seed: int = 8) -> tuple[int, int]:
    """An hour of traffic: repeat users ~20 requests each at `error_rate`, plus `never_served` users
    whose every request fails; returns (users, unserved) as the sorted sets count them."""
    rng = random.Random(seed)
    seen: dict[str, float] = {}
    served: dict[str, float] = {}
    for u in range(repeat_users + never_served):
        for _ in range(20):
            ts = NOW - rng.uniform(0, HOUR)
            ok = u < repeat_users and rng.random() >= error_rate
            seen[f"u{u}"] = max(seen.get(f"u{u}", 0.0), ts)
            if ok:
                served[f"u{u}"] = max(served.get(f"u{u}", 0.0), ts)
    return unserved(len(seen), len(served))


def test_repeat_users_at_a_healthy_error_rate_are_served() -> None:
    users, never = simulate(1000, 0.005, 0)
    assert (users, never) == (1000, 0)
    # What the old definition ("had a request fail") counted: about 1 - 0.995^20 ≈ 9.5 % of users.
    (finding,) = evaluate(rule(), "m", "1", windows(users, never), baseline=None, facts=None)
    assert not finding.fired and finding.observation["value"] == 0.0


def test_a_subset_of_users_whose_every_request_fails_fires() -> None:
    users, never = simulate(920, 0.005, 80)
    assert (users, never) == (1000, 80)
    (finding,) = evaluate(rule(), "m", "1", windows(users, never), baseline=None, facts=None)
    assert finding.fired and finding.severity == "HIGH" and finding.observation["value"] == 0.08


def test_just_inside_does_not_fire() -> None:
    (finding,) = evaluate(rule(), "m", "1", windows(1000, 50), baseline=None, facts=None)
    assert not finding.fired  # 5.0 % is not "more than 5 %"
