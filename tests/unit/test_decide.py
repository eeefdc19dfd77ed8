"""The tick's decisions without services: findings and open incidents in, transitions and control out."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from monitor.aggregates.window import WindowStats
from monitor.control import ControlState
from monitor.incidents import decide
from monitor.incidents.commands import Command
from monitor.incidents.incident import Incident, open_incident
from monitor.rules.evaluate import Finding
from monitor.rules.loader import default_rules_path, load_rules
from monitor.rules.schema import Rule

RULES = load_rules(default_rules_path())
NOW = 1_760_000_000.0


def rule(rule_id: str, **changes: Any) -> Rule:
    """A default rule, with `changes` applied."""
    return RULES.by_id(rule_id).model_copy(update=changes)


def finding(
    rule_id: str,
    *,
    fired: bool = True,
    inside: bool = False,
    severity: str | None = None,
    level: int | None = None,
    version: str = "1",
    group: str | None = None,
    model: str = "m",
    **observation: Any,
) -> Finding:
    """A finding of a default rule (its severity and level unless given)."""
    r = RULES.by_id(rule_id)
    obs = {
        "value": 0.5,
        "threshold": 0.1,
        "window_s": r.window_s,
        "samples": 1000,
        "attribute": "a",
        "group": group or "g",
        **observation,
    }
    return Finding(
        rule_id,
        model,
        version,
        group,
        fired,
        inside,
        severity or r.severity,
        r.level if level is None else level,
        obs,
    )


def incident(rule_id: str, at: float = NOW - 3600, **finding_options: Any) -> Incident:
    """An incident opened at `at` (its "opened" event already published)."""
    opened = open_incident(rule(rule_id), finding(rule_id, **finding_options), at)
    opened.outbox = []
    return opened


def transitions(decisions: decide.IncidentDecisions) -> list[tuple[str, str]]:
    return [(t.rule.id, t.kind) for t in decisions.transitions]


# --- inhibition --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("open_rules", "firing", "expected"),
    [
        pytest.param([], ["accuracy-drop-24h"], [("accuracy-drop-24h", "open")], id="nothing-open"),
        pytest.param(
            ["downtime"],
            ["accuracy-drop-24h", "accuracy-gap-widening", "downtime"],
            [("downtime", "refire")],
            id="downtime-open-inhibits-accuracy",
        ),
        pytest.param(["downtime"], ["error-rate"], [("error-rate", "open")], id="error-rate-not-inhibited"),
        # file order: accuracy-drop-24h is judged before downtime, so a downtime opened in the same
        # tick inhibits only the rules after it
        pytest.param(
            [],
            ["downtime", "accuracy-drop-24h", "accuracy-gap-widening"],
            [("accuracy-drop-24h", "open"), ("accuracy-gap-widening", "open"), ("downtime", "open")],
            id="downtime-opened-now-inhibits-only-later-rules",
        ),
        pytest.param(["group-shift"], ["disparate-impact"], [], id="bias-rules-inhibit-each-other"),
    ],
)
def test_inhibition(open_rules: list[str], firing: list[str], expected: list[tuple[str, str]]) -> None:
    incidents = [incident(r) for r in open_rules]
    findings = {r: [finding(r)] for r in firing}
    decisions = decide.incident_transitions(RULES.rules, findings, incidents, {}, NOW)
    assert transitions(decisions) == expected


def test_inhibited_names_the_rule() -> None:
    assert decide.inhibited(rule("accuracy-drop-24h"), {"downtime"})
    assert not decide.inhibited(rule("error-rate"), {"downtime"})


# --- quiet periods after a person's resolution --------------------------------------------------------


@pytest.mark.parametrize(
    ("quiet_for_s", "already_open", "expected"),
    [
        pytest.param(60.0, False, [], id="quiet-key-does-not-reopen"),
        pytest.param(0.0, False, [("error-rate", "open")], id="quiet-period-ended"),
        pytest.param(-1.0, False, [("error-rate", "open")], id="quiet-period-long-over"),
        pytest.param(60.0, True, [("error-rate", "refire")], id="quiet-does-not-touch-an-open-incident"),
    ],
)
def test_quiet_period(quiet_for_s: float, already_open: bool, expected: list[tuple[str, str]]) -> None:
    incidents = [incident("error-rate")] if already_open else []
    quiet = {"error-rate|": NOW + quiet_for_s}
    findings = {"error-rate": [finding("error-rate")]}
    decisions = decide.incident_transitions(RULES.rules, findings, incidents, quiet, NOW)
    assert transitions(decisions) == expected
    assert [i.rule for i in decisions.live] == [r for r, _ in expected]


# --- refire: an update only when severity or level rose --------------------------------------------


@pytest.mark.parametrize(
    ("now_severity", "now_level", "kind", "outbox", "severity", "level"),
    [
        pytest.param("CRITICAL", 4, "update", ["updated"], "CRITICAL", 4, id="severity-raised"),
        pytest.param("HIGH", 3, "update", ["updated"], "HIGH", 3, id="level-raised"),
        pytest.param("HIGH", 2, "refire", [], "HIGH", 2, id="same"),
        pytest.param("MEDIUM", 1, "refire", [], "HIGH", 2, id="lower-keeps-the-higher"),
    ],
)
def test_refire(
    now_severity: str, now_level: int, kind: str, outbox: list[str], severity: str, level: int
) -> None:
    open_one = incident("accuracy-drop-24h", clear_since=None)
    open_one.clear_since = NOW - 60
    again = finding("accuracy-drop-24h", severity=now_severity, level=now_level, version="2", value=0.3)
    decisions = decide.incident_transitions(RULES.rules, {"accuracy-drop-24h": [again]}, [open_one], {}, NOW)
    assert transitions(decisions) == [("accuracy-drop-24h", kind)]
    assert decisions.of("update") == ([open_one] if kind == "update" else [])
    assert open_one.outbox == outbox
    assert (open_one.severity, open_one.level) == (severity, level)
    assert open_one.observation["value"] == 0.3 and open_one.model_version == "2"
    assert open_one.clear_since is None and open_one.updated_at == NOW


def test_the_worst_version_speaks_for_the_incident() -> None:
    """Two versions' findings for one key: the one that fired, then the higher severity."""
    calm = finding("accuracy-drop-24h", fired=False, inside=True, version="1")
    high = finding("accuracy-drop-24h", version="2")
    critical = finding("accuracy-drop-24h", severity="CRITICAL", level=4, version="3")
    assert decide.merge_findings([calm, high])["accuracy-drop-24h|"] is high
    assert decide.merge_findings([high, critical, calm])["accuracy-drop-24h|"] is critical
    decisions = decide.incident_transitions(RULES.rules, {"accuracy-drop-24h": [calm, high]}, [], {}, NOW)
    assert [(i.model_version, i.severity) for i in decisions.of("open")] == [("2", "HIGH")]


# --- settle: auto-recovery after the hold, never for CRITICAL or security ----------------------------


@pytest.mark.parametrize(
    ("rule_id", "options", "clear_for_s", "inside", "kind", "status", "clear_since"),
    [
        pytest.param("error-rate", {}, 900.0, True, "resolve", "resolved", NOW - 900, id="after-the-hold"),
        pytest.param("error-rate", {}, 899.0, True, "settle", "open", NOW - 899, id="hold-not-over"),
        pytest.param("error-rate", {}, None, True, "settle", "open", NOW, id="hold-starts"),
        pytest.param("error-rate", {}, 5000.0, False, "settle", "open", None, id="outside-again-restarts"),
        pytest.param(
            "error-rate",
            {"severity": "CRITICAL", "level": 4},
            10_000.0,
            True,
            "settle",
            "open",
            NOW - 10_000,
            id="critical-never",
        ),
        pytest.param(
            "denied-burst",
            {"auto_recover": True},
            10_000.0,
            True,
            "settle",
            "open",
            NOW - 10_000,
            id="security-never",
        ),
        pytest.param(
            "accuracy-drop-7d", {}, 10_000.0, True, "settle", "open", NOW - 10_000, id="auto-recover-false"
        ),
    ],
)
def test_settle(
    rule_id: str,
    options: dict[str, Any],
    clear_for_s: float | None,
    inside: bool,
    kind: str,
    status: str,
    clear_since: float | None,
) -> None:
    r = rule(rule_id, auto_recover=options.pop("auto_recover", RULES.by_id(rule_id).auto_recover))
    rules = [r if x.id == rule_id else x for x in RULES.rules]
    open_one = open_incident(r, finding(rule_id, principal="svc", **options), NOW - 20_000)
    open_one.outbox = []
    open_one.clear_since = None if clear_for_s is None else NOW - clear_for_s
    calm = finding(rule_id, fired=False, inside=inside, principal="svc")
    decisions = decide.incident_transitions(rules, {rule_id: [calm]}, [open_one], {}, NOW)
    assert transitions(decisions) == [(rule_id, kind)]
    assert open_one.status == status and open_one.clear_since == clear_since
    assert open_one.outbox == (["resolved"] if kind == "resolve" else [])
    assert decisions.live == ([] if status == "resolved" else [open_one])


def test_a_finding_that_does_not_fire_opens_nothing() -> None:
    calm = finding("error-rate", fired=False, inside=True)
    assert decide.incident_transitions(RULES.rules, {"error-rate": [calm]}, [], {}, NOW).transitions == []


# --- level, rollback and revocations -------------------------------------------------------------------


def live_incident(
    level: int,
    *,
    version: str = "2",
    rollback: bool = False,
    rollback_to: str | None = None,
    revoke: tuple[str, ...] = (),
) -> Incident:
    i = incident("error-rate", version=version, level=level)
    i.rollback, i.rollback_to, i.revoke = rollback, rollback_to, list(revoke)
    return i


@pytest.mark.parametrize(
    ("levels", "override", "expected"),
    [
        pytest.param([], None, 0, id="nothing"),
        pytest.param([2, 4, 1], None, 4, id="max-of-incidents"),
        pytest.param([2], 3, 3, id="override-above"),
        pytest.param([4], 1, 4, id="override-below"),
        pytest.param([], 2, 2, id="override-alone"),
    ],
)
def test_level_is_the_max_of_incidents_and_override(
    levels: list[int], override: int | None, expected: int
) -> None:
    state = ControlState(seq=7, level=0, override=override)
    decision = decide.control("m", [live_incident(n) for n in levels], state, {}, NOW)
    assert decision.level == expected
    if expected == 0:
        assert decision.message is None  # already at 0: nothing to send
    else:
        assert decision.message is not None
        message = decision.message
        assert (message.level, message.seq, message.issued_at) == (expected, 8, NOW)
        assert len(decision.message.incident_ids) == len(levels)
        if not levels:
            assert decision.message.reason.endswith("manual override")


@pytest.mark.parametrize(
    ("incidents", "predecessors", "rollback_to", "revoke"),
    [
        pytest.param([live_incident(3, rollback=True)], {"2": ["1", "0"]}, "1", [], id="predecessor"),
        pytest.param([live_incident(3, rollback=True)], {"2": []}, None, [], id="no-predecessor"),
        pytest.param(
            [live_incident(3, rollback=False)], {"2": ["1"]}, None, [], id="rule-does-not-roll-back"
        ),
        pytest.param(
            [live_incident(4, rollback=True, rollback_to="0.9"), live_incident(3, rollback=True)],
            {"2": ["1"]},
            "0.9",
            [],
            id="named-by-incident-first",
        ),
        pytest.param(
            [live_incident(3, rollback=True), live_incident(4, rollback=True, rollback_to="0.9")],
            {"2": ["1"]},
            "0.9",
            [],
            id="named-by-incident-wins",
        ),
        pytest.param(
            [live_incident(4, revoke=("bob",)), live_incident(4, revoke=("alice", "bob"))],
            {},
            None,
            ["alice", "bob"],
            id="revoke-each-once-sorted",
        ),
    ],
)
def test_rollback_to_and_revoke_principals(
    incidents: list[Incident], predecessors: dict[str, list[str]], rollback_to: str | None, revoke: list[str]
) -> None:
    decision = decide.control("m", incidents, ControlState(), predecessors, NOW)
    assert decision.message is not None
    assert decision.message.rollback_to == rollback_to
    assert decision.message.revoke_principals == revoke


def test_a_control_message_only_when_something_changed() -> None:
    live = [live_incident(3, rollback=True, revoke=("alice",))]
    first = decide.control("m", live, ControlState(seq=1), {"2": ["1"]}, NOW).message
    assert first is not None and (first.seq, first.level, first.rollback_to) == (2, 3, "1")
    sent = ControlState(seq=2, level=3, last=first)
    assert decide.control("m", live, sent, {"2": ["1"]}, NOW + 1).message is None
    live[0].revoke = ["alice", "mallory"]
    changed = decide.control("m", live, sent, {"2": ["1"]}, NOW + 2).message
    assert changed is not None and (changed.seq, changed.revoke_principals) == (3, ["alice", "mallory"])
    # everything resolved: back to 0, with no rollback or revocation
    cleared = decide.control("m", [], sent, {}, NOW + 3).message
    assert cleared is not None
    assert (cleared.level, cleared.rollback_to, cleared.revoke_principals) == (0, None, [])


# --- false discoveries: Benjamini–Hochberg across the tick's family ----------------------------------


def bh_finding(model: str, p_value: float, *, fired: bool = True, group: str = "g") -> Finding:
    return finding("fnr-gap", fired=fired, model=model, group=group, test={"p_value": p_value})


def test_benjamini_hochberg_across_models_of_a_family() -> None:
    findings = {
        "a": {
            "fnr-gap": [bh_finding("a", 0.001, group="x"), bh_finding("a", 0.03, group="y")],
            "error-rate": [finding("error-rate", model="a", test={"p_value": 0.04})],
        },
        "b": {"fnr-gap": [bh_finding("b", 0.004), bh_finding("b", 1.0, fired=False, group="z")]},
    }
    result = decide.control_false_discoveries(RULES.rules, findings)
    # 4 tests: 0.001*4/1 = 0.004, 0.004*4/2 = 0.008, 0.03*4/3 = 0.04, 1.0
    got = [
        (
            f.model_id,
            f.group,
            f.fired,
            f.observation["test"].get("p_adjusted"),
            f.observation["test"].get("tests_in_family"),
        )
        for m in ("a", "b")
        for f in result[m]["fnr-gap"]
    ]
    assert [(m, g, fired, tests) for m, g, fired, _, tests in got] == [
        ("a", "x", True, 4),
        ("a", "y", False, 4),
        ("b", "g", True, 4),
        ("b", "z", False, None),
    ]
    assert [p for *_, p, _ in got][:3] == pytest.approx([0.004, 0.04, 0.008])
    assert result["a"]["error-rate"] == findings["a"]["error-rate"]  # not an fdr rule
    assert findings["a"]["fnr-gap"][1].fired  # the input is left as it was


@pytest.mark.parametrize(
    ("p_values", "fired"),
    [
        pytest.param([0.001], [True], id="alone"),
        pytest.param([0.009, 0.009], [True, True], id="two-that-both-hold"),
        pytest.param([0.009] + [0.5] * 9, [False] + [False] * 9, id="lost-in-a-large-family"),
    ],
)
def test_benjamini_hochberg_family_size_matters(p_values: list[float], fired: list[bool]) -> None:
    family = [bh_finding(f"m{i}", p) for i, p in enumerate(p_values)]
    result = decide.control_false_discoveries(RULES.rules, {f.model_id: {"fnr-gap": [f]} for f in family})
    assert [result[f.model_id]["fnr-gap"][0].fired for f in family] == fired


# --- people's commands ---------------------------------------------------------------------------------


def cmd(action: str, incident_id: str | None = None, level: int | None = None) -> Command:
    return Command(
        id="c1",
        action=action,
        model_id="m",
        who="ann",
        why="checked",  # type: ignore[arg-type]
        at=NOW,
        incident_id=incident_id,
        level=level,
    )


def test_commands() -> None:
    open_one = incident("error-rate")
    incidents, state = [open_one], ControlState()
    quiet_s = {"error-rate": 300.0}
    assert decide.command(cmd("escalate", level=3), incidents, state, quiet_s, NOW) == decide.CommandEffect(
        sets_override=True, override=3
    )
    assert state.override == 3
    assert decide.command(cmd("release"), incidents, state, quiet_s, NOW).sets_override
    assert state.override is None
    effect = decide.command(cmd("acknowledge", open_one.id), incidents, state, quiet_s, NOW)
    assert effect == decide.CommandEffect(incident=open_one) and open_one.status == "acknowledged"
    again = decide.command(cmd("acknowledge", open_one.id), incidents, state, quiet_s, NOW)
    assert again.error.startswith("cannot acknowledge") and again.incident is None
    resolved = decide.command(cmd("resolve", open_one.id), incidents, state, quiet_s, NOW)
    assert resolved.quiet_until == NOW + 300 and incidents == []
    assert open_one.outbox == ["acknowledged", "resolved"]
    missing = decide.command(cmd("resolve", open_one.id), incidents, state, {}, NOW)
    assert missing.error == f"incident {open_one.id} is not open on m"


# --- re-notification and frozen references -------------------------------------------------------------


def test_renotify_refreshes_alertmanager_and_reminds_webhooks_of_unattended_ones() -> None:
    fresh, stale, unattended, acked = (incident("error-rate") for _ in range(4))
    fresh.notified_at = fresh.reminded_at = NOW - 30
    stale.notified_at, stale.reminded_at = NOW - 60, NOW - 100
    unattended.notified_at, unattended.reminded_at = NOW - 60, NOW - 4 * 3600
    acked.status, acked.notified_at, acked.reminded_at = "acknowledged", NOW - 600, NOW - 5 * 3600
    remind, refresh = decide.renotify([fresh, stale, unattended, acked], NOW, 4 * 3600)
    assert remind == [unattended] and refresh == [stale, acked]
    assert [i.notified_at for i in (fresh, stale, unattended, acked)] == [NOW - 30, NOW, NOW, NOW]
    reminded = [i.reminded_at for i in (fresh, stale, unattended, acked)]
    assert reminded == [NOW - 30, NOW - 100, NOW, NOW - 5 * 3600]


def stats(count: int, labelled: int = 0) -> WindowStats:
    return WindowStats(count=count, labelled=labelled)


@pytest.mark.parametrize(
    ("frozen", "frozen_at", "live", "expected"),
    [
        pytest.param(None, 0.0, stats(10), True, id="never-frozen"),
        pytest.param(None, 0.0, stats(0), False, id="nothing-to-freeze"),
        pytest.param(stats(10), NOW - 60, stats(12), True, id="settling-and-grew"),
        pytest.param(stats(10, 5), NOW - 60, stats(12, 2), False, id="settling-not-grown"),
        pytest.param(stats(10), NOW - decide.REFREEZE_S, stats(50), False, id="settled"),
    ],
)
def test_refreeze(frozen: WindowStats | None, frozen_at: float, live: WindowStats, expected: bool) -> None:
    assert decide.refreeze(frozen, frozen_at, live, NOW) is expected


def test_decide_imports_no_redis_no_store() -> None:
    """The decisions stay testable without services: importing them loads no Redis client or store."""
    code = (
        "import sys, monitor.incidents.decide; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'redis' or m.startswith('monitor.store')"
        " or m in ('monitor.incidents.store', 'monitor.incidents.commands')))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
