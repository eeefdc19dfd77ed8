"""The rules loader: the shipped file, durations, each refusal with file/line/path, merging, `rules check`.

Also the access policy (monitor.rules.access): its resolved models and their checks.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from monitor.cli import main
from monitor.exceptions import ConfigError
from monitor.rules import (
    SECURITY_METRICS,
    AccessPolicy,
    Fairness,
    Grant,
    NormalHours,
    ProtectedAttribute,
    ProxyAttribute,
    Rule,
    RuleSet,
    RulesFileError,
    check_command,
    load_rules,
    parse_duration,
)

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "monitor" / "rules" / "default.yaml"
FIXTURES = Path(__file__).resolve().parent / "rules_fixtures"
PROBLEM = re.compile(r"^(?P<file>.+?):(?P<line>\d+): (?P<path>.+?): (?P<message>.+)$")


# --- the shipped rules ----------------------------------------------------------------------------

EXPECTED_DEFAULTS: dict[str, dict[str, Any]] = {
    "accuracy-drop-24h": dict(
        category="performance",
        metric="accuracy",
        window_s=86400,
        compare="relative_drop",
        baseline="reference",
        threshold=0.05,
        severity="HIGH",
        level=2,
        min_samples=200,
        min_label_coverage=0.05,
        test="sequential",
        confidence=0.99,
        rollback=False,
        auto_recover=True,
        hold_s=900,
        inhibited_by=("downtime",),
        ladder_=((0.10, "CRITICAL", 4),),
    ),
    "accuracy-drop-7d": dict(
        metric="accuracy",
        window_s=604800,
        compare="relative_drop",
        baseline="week_ago",
        threshold=0.10,
        severity="CRITICAL",
        level=4,
        min_samples=500,
        auto_recover=False,
        inhibited_by=("downtime", "accuracy-drop-24h"),
    ),
    "accuracy-below-minimum": dict(
        metric="accuracy",
        window_s=86400,
        compare="below_published_minimum",
        baseline=None,
        threshold=None,
        severity="HIGH",
        level=2,
        min_samples=200,
        ladder_=(),
        inhibited_by=("downtime",),
    ),
    "accuracy-gap-widening": dict(
        metric="accuracy_gap",
        window_s=86400,
        compare="widening",
        baseline="reference",
        threshold=0.05,
        severity="MEDIUM",
        level=1,
        min_samples=200,
        inhibited_by=("downtime",),
        attribute=None,
    ),
    "downtime": dict(
        category="availability",
        metric="silence",
        window_s=86400,
        compare="silence",
        threshold=1800.0,
        severity="HIGH",
        level=4,
        auto_recover=True,
        hold_s=300,
        test="none",
        min_label_coverage=None,
    ),
    "error-rate": dict(
        metric="error_rate",
        window_s=300,
        compare="above",
        threshold=0.01,
        severity="MEDIUM",
        level=1,
        min_samples=200,
        ladder_=((0.05, "HIGH", 2), (0.20, "CRITICAL", 4)),
        auto_recover=True,
        fdr=False,
        attributes="all",
    ),
    "latency-vs-normal": dict(
        metric="latency",
        quantile=0.95,
        window_s=300,
        compare="ratio_above",
        baseline="reference",
        threshold=3.0,
        severity="MEDIUM",
        level=1,
        min_samples=200,
        test="sequential",
    ),
    "unserved-users": dict(
        metric="unserved_users",
        window_s=3600,
        compare="above",
        threshold=0.05,
        severity="HIGH",
        level=2,
        min_samples=100,
    ),
    "gibberish-outputs": dict(
        category="output_quality",
        flag="gibberish",
        threshold=0.01,
        severity="HIGH",
        level=2,
        window_s=3600,
        compare="above",
        min_samples=200,
        test="sequential",
        auto_recover=True,
    ),
    "toxic-outputs": dict(
        flag="toxic",
        threshold=0.001,
        severity="CRITICAL",
        level=4,
        auto_recover=False,
        test="sequential",
    ),
    "contradictions": dict(flag="contradiction", threshold=0.02, severity="MEDIUM", level=1),
    "known-false-outputs": dict(flag="known_false", threshold=0.01, severity="HIGH", level=2),
    "disparate-impact": dict(
        category="bias",
        metric="disparate_impact",
        window_s=1800,
        compare="below",
        baseline=None,
        threshold=0.80,
        min_samples=100,
        min_label_coverage=None,
        test="sequential",
        severity="HIGH",
        level=3,
        ladder_=(),
        rollback=True,
        auto_recover=True,
        hold_s=900,
        inhibited_by=("group-shift", "disparate-impact-24h"),
        fdr=True,
        attributes="all",
        direction="down",
    ),
    "disparate-impact-24h": dict(
        category="bias",
        metric="disparate_impact",
        window_s=86400,
        compare="below",
        threshold=0.80,
        min_samples=100,
        severity="HIGH",
        level=3,
        inhibited_by=("disparate-impact", "group-shift"),
        fdr=True,
    ),
    "fnr-gap": dict(
        category="bias",
        metric="fnr_gap",
        window_s=86400,
        compare="above",
        baseline=None,
        threshold=0.05,
        min_samples=100,
        min_label_coverage=0.05,
        test="sequential",
        severity="HIGH",
        level=3,
        ladder_=(),
        auto_recover=True,
        inhibited_by=(),
        fdr=True,
        attributes="all",
        direction="up",
    ),
    "group-shift": dict(
        category="bias",
        metric="group_shift",
        window_s=3600,
        compare="shift",
        baseline="reference",
        threshold=0.10,
        min_samples=100,
        min_label_coverage=None,
        test="sequential",
        severity="HIGH",
        level=3,
        ladder_=(),
        auto_recover=True,
        inhibited_by=("disparate-impact", "disparate-impact-24h"),
        fdr=True,
        attributes="all",
        direction="up",
    ),
    # security: counts, no test, no sample size, never auto-recovering
    "unauthorized-access": dict(
        category="security",
        metric="policy_violations",
        window_s=3600,
        compare="above",
        baseline=None,
        threshold=0.0,
        min_samples=1,
        test="none",
        severity="CRITICAL",
        level=4,
        ladder_=(),
        rollback=False,
        auto_recover=False,
        revoke=True,
        min_volume=0,
        follow_s=3600,
        fdr=False,
        direction="up",
    ),
    "training-data-off-hours": dict(
        category="security",
        metric="off_hours_access",
        window_s=3600,
        compare="above",
        threshold=0.0,
        min_samples=1,
        test="none",
        severity="HIGH",
        level=1,
        auto_recover=False,
        revoke=False,
    ),
    "training-data-new-principal": dict(
        category="security",
        metric="new_principal_access",
        window_s=86400,
        compare="above",
        threshold=0.0,
        min_samples=1,
        test="none",
        severity="HIGH",
        level=1,
        auto_recover=False,
        revoke=False,
    ),
    "training-data-volume": dict(
        category="security",
        metric="access_volume",
        window_s=86400,
        compare="ratio_above",
        baseline="reference",
        threshold=10.0,
        min_volume=1_000_000_000,
        min_samples=1,
        test="none",
        severity="CRITICAL",
        level=4,
        auto_recover=False,
        revoke=True,
    ),
    "weights-tampered": dict(
        category="security",
        metric="unapproved_artifacts",
        window_s=86400,
        compare="above",
        threshold=0.0,
        min_samples=1,
        test="none",
        severity="CRITICAL",
        level=4,
        rollback=True,
        auto_recover=False,
        revoke=False,
    ),
    "denied-burst": dict(
        category="security",
        metric="denied_burst",
        window_s=300,
        compare="above",
        threshold=20.0,
        min_samples=1,
        test="none",
        severity="HIGH",
        level=1,
        auto_recover=False,
        revoke=False,
    ),
    "new-source-privileged": dict(
        category="security",
        metric="new_source_privileged",
        window_s=3600,
        compare="above",
        threshold=0.0,
        follow_s=3600,
        min_samples=1,
        test="none",
        severity="CRITICAL",
        level=4,
        auto_recover=False,
        revoke=True,
    ),
    "model-extraction": dict(
        category="security",
        metric="query_volume",
        window_s=3600,
        compare="ratio_above",
        baseline="reference",
        threshold=20.0,
        min_volume=5000,
        min_samples=1,
        test="none",
        severity="HIGH",
        level=2,
        auto_recover=False,
        revoke=True,
        rollback=False,
    ),
    "model-extraction-cap": dict(
        category="security",
        metric="query_volume",
        window_s=3600,
        compare="above",
        baseline=None,
        threshold=100000.0,
        min_volume=0,
        min_samples=1,
        test="none",
        severity="HIGH",
        level=2,
        auto_recover=False,
        revoke=True,
    ),
}


def test_default_file_loads_with_the_playbook_rules() -> None:
    ruleset = load_rules(DEFAULT)
    assert [r.id for r in ruleset.rules] == list(EXPECTED_DEFAULTS)
    assert ruleset.sources == (str(DEFAULT),)
    assert ruleset.sha256 == hashlib.sha256(DEFAULT.read_bytes()).hexdigest()
    assert ruleset.models["credit-scoring"].published_min_accuracy == 0.80


def test_default_fairness_section() -> None:
    fairness = load_rules(DEFAULT).fairness
    assert fairness == Fairness(
        protected={"sex": ProtectedAttribute(), "age_band": ProtectedAttribute()},
        proxies={"zip3": ProxyAttribute(proxy_for="race or ethnicity")},
    )
    assert fairness.protected["sex"].reference is None  # the most favoured group at each evaluation
    assert fairness.attributes("all") == [("age_band", False), ("sex", False), ("zip3", True)]
    assert fairness.attributes("protected") == [("age_band", False), ("sex", False)]
    assert fairness.attributes("proxies") == [("zip3", True)]


def test_bias_rules_inhibit_each_other() -> None:
    # Mutual inhibition is allowed: whichever of the two opens first silences the other.
    ruleset = load_rules(DEFAULT)
    assert ruleset.by_id("disparate-impact").inhibited_by == ("group-shift", "disparate-impact-24h")
    assert ruleset.by_id("group-shift").inhibited_by == ("disparate-impact", "disparate-impact-24h")
    assert RuleSet(rules=ruleset.rules, fairness=ruleset.fairness).by_id("group-shift").fdr


@pytest.mark.parametrize("rule_id", list(EXPECTED_DEFAULTS))
def test_default_rule_resolved_values(rule_id: str) -> None:
    rule = load_rules(DEFAULT).by_id(rule_id)
    for name, want in EXPECTED_DEFAULTS[rule_id].items():
        if name == "ladder_":
            assert tuple((s.threshold, s.severity, s.level) for s in rule.ladder) == want
        elif name == "direction":
            assert rule.direction == want
        else:
            assert getattr(rule, name) == want, name
    assert rule.confidence == 0.99 and rule.hold_s in (300, 900)


def test_rule_helpers() -> None:
    ruleset = load_rules(DEFAULT)
    drop = ruleset.by_id("accuracy-drop-24h")
    assert drop.direction == "up"
    assert [(s.threshold, s.severity, s.level) for s in drop.steps()] == [
        (0.05, "HIGH", 2),
        (0.10, "CRITICAL", 4),
    ]
    minimum = ruleset.by_id("accuracy-below-minimum")
    assert minimum.direction == "down"
    assert minimum.steps(0.8)[0].threshold == 0.8
    with pytest.raises(ValueError):
        minimum.steps()
    with pytest.raises(KeyError):
        ruleset.by_id("nope")
    assert isinstance(hash(drop), int)  # frozen: usable as a dict key by the evaluator


def test_ruleset_built_by_hand_checks_ids() -> None:
    rule = load_rules(DEFAULT).by_id("error-rate")
    with pytest.raises(ValueError, match="duplicate rule id"):
        RuleSet(rules=(rule, rule))
    with pytest.raises(ValueError, match="inhibited_by"):
        RuleSet(rules=(rule.model_copy(update={"inhibited_by": ("ghost",)}),))
    with pytest.raises(ValueError, match="inhibited_by"):
        RuleSet(rules=(rule.model_copy(update={"inhibited_by": ("error-rate",)}),))
    a = rule.model_copy(update={"id": "a", "inhibited_by": ("b",)})
    b = rule.model_copy(update={"id": "b", "inhibited_by": ("a",)})
    assert RuleSet(rules=(a, b)).fairness == Fairness()  # mutual is fine; no fairness section is empty


def test_fairness_built_by_hand_checks_names() -> None:
    assert Fairness().attributes("all") == []
    with pytest.raises(ValueError, match="both protected and proxies: zip3"):
        Fairness(protected={"zip3": ProtectedAttribute()}, proxies={"zip3": ProxyAttribute()})
    with pytest.raises(ValueError, match="must not be empty"):
        Fairness(protected={" ": ProtectedAttribute()})
    with pytest.raises(ValueError):
        ProtectedAttribute(reference="")


# --- the access policy ---------------------------------------------------------------------------


def at(text: str) -> float:
    """Epoch seconds of an ISO time with its offset, e.g. "2024-01-01T07:00:00+00:00" (a Monday)."""
    return datetime.fromisoformat(text).timestamp()


def test_default_access_policy_section() -> None:
    policy = load_rules(DEFAULT).access_policy
    hours = policy.normal_hours
    assert (hours.start_min, hours.end_min, hours.days, hours.timezone) == (
        420,
        1200,
        frozenset(range(5)),
        "UTC",
    )
    assert hours == NormalHours()
    assert policy.learning_s == 7 * 86400
    assert policy.unchecked_actions == frozenset({"login"})
    assert policy.privileged_actions == frozenset({"write", "delete", "deploy", "grant"})
    assert policy.grants[0] == Grant(
        principals=("svc-training-*",),
        actions=frozenset({"read", "download"}),
        resource_types=frozenset({"training_data"}),
        models=("*",),
        hours="any",
    )
    assert [(g.principals, g.hours) for g in policy.grants] == [
        (("svc-training-*",), "any"),
        (("role:ml-engineer*", "ml-*"), "normal"),
        (("svc-deployer",), "normal"),
        (("svc-gateway-*",), "normal"),
        (("role:security*",), "normal"),
    ]
    assert policy.grants[4].resource_types == frozenset(
        {"model_weights", "training_data", "endpoint", "config", "credentials"}
    )


# (principal, action, resource_type, model_id): what the shipped policy's organisation does every day.
NORMAL_OPERATION = [
    ("svc-training-nightly", "read", "training_data", "credit-scoring"),
    ("svc-training-nightly", "download", "training_data", None),
    ("role:ml-engineer", "write", "model_weights", "credit-scoring"),
    ("role:ml-engineer-lead", "download", "training_data", "fraud-detector"),
    ("ml-alice", "write", "config", "credit-scoring"),
    ("svc-deployer", "deploy", "endpoint", "credit-scoring"),
    ("svc-deployer", "write", "model_weights", "fraud-detector"),
    ("svc-gateway-eu-1", "query", "endpoint", "credit-scoring"),
    ("role:security-oncall", "read", "credentials", None),
    ("mallory", "login", "credentials", None),  # unchecked: anyone may log in
]
# ... and what it should never see.
VIOLATIONS = [
    ("svc-training-nightly", "read", "model_weights", "credit-scoring"),  # resource type not granted
    ("svc-training-nightly", "write", "training_data", "credit-scoring"),  # action not granted
    ("ml-alice", "deploy", "endpoint", "credit-scoring"),
    ("ml-alice", "delete", "training_data", "credit-scoring"),
    ("svc-gateway-eu-1", "download", "model_weights", "credit-scoring"),
    ("role:security-oncall", "write", "config", "credit-scoring"),
    ("SVC-DEPLOYER", "deploy", "endpoint", "credit-scoring"),  # globs are case-sensitive
    ("mallory", "download", "model_weights", "credit-scoring"),
    ("mallory", "query", "endpoint", None),
]


@pytest.mark.parametrize("access", NORMAL_OPERATION, ids=lambda a: "-".join(str(p) for p in a))
def test_default_policy_allows_normal_operation(access: tuple[str, str, str, str | None]) -> None:
    assert load_rules(DEFAULT).access_policy.allows(*access)


@pytest.mark.parametrize("access", VIOLATIONS, ids=lambda a: "-".join(str(p) for p in a))
def test_default_policy_refuses_the_rest(access: tuple[str, str, str, str | None]) -> None:
    assert not load_rules(DEFAULT).access_policy.allows(*access)


def test_default_policy_hours() -> None:
    policy = load_rules(DEFAULT).access_policy
    assert policy.any_hours("svc-training-nightly", "read", "training_data", "credit-scoring")
    assert not policy.any_hours(
        "ml-alice", "read", "training_data", "credit-scoring"
    )  # engineers: normal hours
    assert not policy.any_hours("svc-training-nightly", "write", "training_data", "m")  # not even allowed


def test_no_access_policy_section_allows_only_login(tmp_path: Path) -> None:
    source = write(tmp_path, "r.yaml", render(DENIED))
    policy = load_rules(source).access_policy
    assert policy == AccessPolicy()
    assert policy.grants == () and policy.learning_s == 7 * 86400
    assert policy.allows("anyone", "login", "endpoint", None)
    assert not policy.allows("anyone", "read", "training_data", "m")  # deny by default
    assert not policy.any_hours("anyone", "login", "endpoint", None)  # unchecked is not "any hours"


def test_access_policy_section_resolved(tmp_path: Path) -> None:
    source = write(
        tmp_path,
        "p.yaml",
        (
            "version: 1\n"
            "access_policy:\n"
            "  normal_hours: {start: '9:00', end: '24:00', days: [sun, sat], timezone: Europe/Paris}\n"
            "  learning_period: 3d\n"
            "  unchecked_actions: []\n"
            "  privileged_actions: [grant]\n"
            "  grants:\n"
            "    - {principals: [a, 'b-*'], actions: [query, read], resource_types: [endpoint], "
            "models: ['credit-*']}\n"
            "    - {principals: [c], actions: [read], resource_types: [training_data], hours: any}\n"
        ),
    )
    policy = load_rules(source).access_policy
    assert policy == AccessPolicy(
        normal_hours=NormalHours(
            start_min=540, end_min=1440, days=frozenset({5, 6}), timezone="Europe/Paris"
        ),
        learning_s=3 * 86400,
        unchecked_actions=frozenset(),
        privileged_actions=frozenset({"grant"}),
        grants=(
            Grant(
                principals=("a", "b-*"),
                actions=frozenset({"query", "read"}),
                resource_types=frozenset({"endpoint"}),
                models=("credit-*",),
            ),
            Grant(
                principals=("c",),
                actions=frozenset({"read"}),
                resource_types=frozenset({"training_data"}),
                hours="any",
            ),
        ),
    )
    assert not policy.allows("a", "login", "endpoint", None)  # no unchecked actions: login needs a grant too
    assert policy.allows("b-7", "query", "endpoint", "credit-scoring")
    assert not policy.allows(
        "b-7", "query", "endpoint", None
    )  # the grant names models: `*` only matches none
    assert isinstance(hash(policy), int)  # frozen
    code, text = check_command(source)
    assert code == 0
    assert (
        "\naccess policy: 2 grants; normal hours 09:00-24:00 sat,sun Europe/Paris; learning period 3d\n"
        in text
    )


@pytest.mark.parametrize(
    ("hours", "when", "inside"),
    [
        (NormalHours(), "2024-01-01T06:59:59+00:00", False),  # Monday, a second too early
        (NormalHours(), "2024-01-01T07:00:00+00:00", True),
        (NormalHours(), "2024-01-05T19:59:59+00:00", True),  # Friday
        (NormalHours(), "2024-01-05T20:00:00+00:00", False),  # the end is exclusive
        (NormalHours(), "2024-01-06T12:00:00+00:00", False),  # Saturday
        (NormalHours(), "2024-01-07T12:00:00+00:00", False),  # Sunday
        (NormalHours(), "2024-01-01T08:00:00+02:00", False),  # 06:00 UTC, whatever the writer's offset
        # New York: UTC-5 in January, UTC-4 in July
        (NormalHours(timezone="America/New_York"), "2024-01-01T11:59:00+00:00", False),  # 06:59 local
        (NormalHours(timezone="America/New_York"), "2024-01-01T12:00:00+00:00", True),  # 07:00 local
        (NormalHours(timezone="America/New_York"), "2024-07-01T11:00:00+00:00", True),  # 07:00 local (DST)
        (NormalHours(timezone="America/New_York"), "2024-07-01T10:59:00+00:00", False),
        (
            NormalHours(timezone="America/New_York"),
            "2024-01-06T00:59:00+00:00",
            True,
        ),  # Fri 19:59 local, Sat UTC
        (NormalHours(timezone="America/New_York"), "2024-01-06T01:00:00+00:00", False),  # Fri 20:00 local
        (NormalHours(timezone="Asia/Tokyo"), "2024-01-07T22:00:00+00:00", True),  # Mon 07:00 local, Sun UTC
        (NormalHours(timezone="Asia/Tokyo"), "2024-01-05T22:00:00+00:00", False),  # Sat 07:00 local, Fri UTC
        # the whole weekend, to midnight
        (NormalHours(start_min=0, end_min=1440, days=frozenset({5, 6})), "2024-01-07T23:59:59+00:00", True),
        (NormalHours(start_min=0, end_min=1440, days=frozenset({5, 6})), "2024-01-06T00:00:00+00:00", True),
        (NormalHours(start_min=0, end_min=1440, days=frozenset({5, 6})), "2024-01-05T23:59:59+00:00", False),
    ],
)
def test_normal_hours_contains(hours: NormalHours, when: str, inside: bool) -> None:
    assert hours.contains(at(when)) is inside


GRANT = Grant(
    principals=("svc-trainer-*", "role:ml-engineer"),
    actions=frozenset({"read", "download"}),
    resource_types=frozenset({"training_data"}),
    models=("credit-*", "fraud-v?"),
)


@pytest.mark.parametrize(
    ("principal", "action", "resource_type", "model_id", "matches"),
    [
        ("svc-trainer-7", "read", "training_data", "credit-scoring", True),
        ("role:ml-engineer", "download", "training_data", "fraud-v2", True),
        (
            "role:ml-engineer-2",
            "read",
            "training_data",
            "credit-scoring",
            False,
        ),  # no glob: exactly that name
        ("svc-trainer", "read", "training_data", "credit-scoring", False),  # the glob wants "svc-trainer-"
        ("Svc-Trainer-7", "read", "training_data", "credit-scoring", False),  # case-sensitive
        ("svc-trainer-7", "write", "training_data", "credit-scoring", False),
        ("svc-trainer-7", "read", "model_weights", "credit-scoring", False),
        ("svc-trainer-7", "read", "training_data", "fraud-v10", False),  # `?` is one character
        ("svc-trainer-7", "read", "training_data", "scoring", False),
        ("svc-trainer-7", "read", "training_data", None, False),  # no model: only "*" matches
    ],
)
def test_grant_matches(
    principal: str, action: str, resource_type: str, model_id: str | None, matches: bool
) -> None:
    assert GRANT.matches(principal, action, resource_type, model_id) is matches


def test_grant_without_models_covers_every_model_and_none() -> None:
    grant = GRANT.model_copy(update={"models": ("*",)})
    assert grant.models == ("*",) and grant.hours == "normal"
    assert grant.matches("svc-trainer-7", "read", "training_data", None)
    assert grant.matches("svc-trainer-7", "read", "training_data", "anything")
    assert Grant(
        principals=("p",), actions=frozenset({"read"}), resource_types=frozenset({"config"})
    ).models == ("*",)
    # "*" among other patterns still matches an access that names no model.
    either = GRANT.model_copy(update={"models": ("credit-*", "*")})
    assert either.matches("svc-trainer-1", "read", "training_data", None)


def test_allows_and_any_hours() -> None:
    any_hours = Grant(
        principals=("svc-etl",),
        actions=frozenset({"read"}),
        resource_types=frozenset({"training_data"}),
        hours="any",
    )
    policy = AccessPolicy(grants=(GRANT, any_hours))
    assert policy.allows("svc-trainer-1", "read", "training_data", "credit-scoring")
    assert policy.allows("svc-etl", "read", "training_data", None)
    assert policy.allows("nobody", "login", "credentials", None)
    assert not policy.allows("svc-etl", "download", "training_data", None)
    assert policy.any_hours("svc-etl", "read", "training_data", "m")
    assert not policy.any_hours(
        "svc-trainer-1", "read", "training_data", "credit-scoring"
    )  # allowed, normal hours
    assert not policy.any_hours("svc-etl", "download", "training_data", "m")  # the any-hours grant must match
    # Two grants to one principal: one with any hours is enough.
    both = AccessPolicy(grants=(any_hours.model_copy(update={"hours": "normal"}), any_hours))
    assert both.any_hours("svc-etl", "read", "training_data", "m")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: NormalHours(start_min=600, end_min=600), "must be before end"),
        (lambda: NormalHours(start_min=0, end_min=1441), "less than or equal to 1440"),
        (lambda: NormalHours(days=frozenset()), "non-empty set"),
        (lambda: NormalHours(days=frozenset({7})), "0 (Monday) .. 6 (Sunday)"),
        (lambda: NormalHours(timezone="Mars/Olympus"), "unknown timezone 'Mars/Olympus'"),
        (
            lambda: Grant(principals=(), actions=frozenset({"read"}), resource_types=frozenset({"config"})),
            "at least 1",
        ),
        (
            lambda: Grant(
                principals=("a",), actions=frozenset({"steal"}), resource_types=frozenset({"config"})
            ),
            "steal",
        ),
        (
            lambda: Grant(principals=("a",), actions=frozenset({"read"}), resource_types=frozenset({"gpu"})),
            "gpu",
        ),
        (
            lambda: Grant(
                principals=("a",),
                actions=frozenset({"read"}),
                resource_types=frozenset({"config"}),
                models=("",),
            ),
            "must not be empty",
        ),
        (
            lambda: Grant(
                principals=("a",),
                actions=frozenset({"read"}),
                resource_types=frozenset({"config"}),
                hours="sometimes",
            ),
            "'normal' or 'any'",
        ),
        (lambda: AccessPolicy(privileged_actions=frozenset()), "at least 1"),
        (lambda: AccessPolicy(unchecked_actions=frozenset({"sudo"})), "sudo"),
        (lambda: AccessPolicy(learning_s=-1), "greater than or equal to 0"),
    ],
    ids=[
        "empty-span",
        "end-past-midnight",
        "no-days",
        "day-7",
        "timezone",
        "no-principals",
        "action",
        "resource-type",
        "empty-model",
        "hours",
        "no-privileged",
        "unchecked",
        "learning",
    ],
)
def test_access_models_built_by_hand_check_values(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_rule_built_by_hand_checks_security_ranges() -> None:
    rule = load_rules(DEFAULT).by_id("training-data-volume")
    assert Rule(**{**rule.model_dump(), "follow_s": 60}).follow_s == 60
    for bad in ({"min_volume": -1}, {"follow_s": 59}, {"follow_s": 8 * 86400}):
        with pytest.raises(ValueError):
            Rule(**{**rule.model_dump(), **bad})


# --- durations ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15s", 15), ("30m", 1800), ("24h", 86400), ("7d", 604800), ("0s", 0), (90, 90), (0, 0)],
)
def test_parse_duration(text: str | int, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["1.5h", "30", "m", "-5m", "30 m", "30M", " 30m", "", -1, True, 1.5, None])
def test_parse_duration_refuses(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


# --- one refusal per case: file, line, path, message ----------------------------------------------

Fields = dict[str, str | None]
ERROR_RATE: Fields = {
    "id": "r",
    "category": "availability",
    "metric": "error_rate",
    "window": "5m",
    "compare": "above",
    "threshold": "0.01",
    "severity": "MEDIUM",
    "level": "1",
}
ACCURACY: Fields = {
    **ERROR_RATE,
    "category": "performance",
    "metric": "accuracy",
    "compare": "below",
    "threshold": "0.9",
}
DROP: Fields = {**ACCURACY, "compare": "relative_drop", "baseline": "reference", "threshold": "0.05"}
LATENCY: Fields = {
    **ERROR_RATE,
    "metric": "latency",
    "quantile": "0.95",
    "compare": "above",
    "threshold": "2.5",
}
FLAGS: Fields = {**ERROR_RATE, "metric": "flag_rate", "flag": "toxic"}
SILENCE: Fields = {
    **ERROR_RATE,
    "metric": "silence",
    "compare": "silence",
    "window": "24h",
    "threshold": "30m",
}
MINIMUM: Fields = {**ACCURACY, "compare": "below_published_minimum", "threshold": None}
GAP: Fields = {
    **ERROR_RATE,
    "category": "performance",
    "metric": "accuracy_gap",
    "compare": "widening",
    "baseline": "reference",
    "threshold": "0.05",
}
IMPACT: Fields = {
    **ERROR_RATE,
    "category": "bias",
    "metric": "disparate_impact",
    "window": "1h",
    "compare": "below",
    "threshold": "0.8",
    "severity": "HIGH",
    "level": "3",
}
FNR: Fields = {**IMPACT, "metric": "fnr_gap", "compare": "above", "threshold": "0.05"}
SHIFT: Fields = {
    **IMPACT,
    "metric": "group_shift",
    "compare": "shift",
    "baseline": "reference",
    "threshold": "0.1",
}
DENIED: Fields = {
    **ERROR_RATE,
    "category": "security",
    "metric": "denied_burst",
    "threshold": "20",
    "severity": "HIGH",
}
VOLUME: Fields = {
    **DENIED,
    "metric": "access_volume",
    "window": "24h",
    "compare": "ratio_above",
    "baseline": "reference",
    "threshold": "10",
    "min_volume": "1000000000",
}
QUERIES: Fields = {
    **VOLUME,
    "metric": "query_volume",
    "window": "1h",
    "threshold": "20",
    "min_volume": "5000",
}
CAP: Fields = {**DENIED, "metric": "query_volume", "threshold": "100000"}
NEW_SOURCE: Fields = {
    **DENIED,
    "metric": "new_source_privileged",
    "threshold": "0",
    "follow": "1h",
    "revoke": "true",
}
ARTIFACTS: Fields = {
    **DENIED,
    "metric": "unapproved_artifacts",
    "threshold": "0",
    "rollback": "true",
    "severity": "CRITICAL",
    "level": "4",
}
OTHER_RULE = (
    "  - {id: other, category: availability, metric: error_rate, window: 5m, compare: above,\n"
    "     threshold: 0.5, severity: HIGH, level: 2}\n"
)


def render(fields: dict[str, str | None]) -> str:
    """A file with one rule `rules[1]` (after a valid `other`) written one key per line."""
    lines = ["version: 1", "models:", "  m: {published_min_accuracy: 0.9}"]
    lines += ["fairness: {protected: {sex: {}}, proxies: {zip3: {}}}", "rules:"]
    lines += OTHER_RULE.rstrip("\n").split("\n")
    keys = [k for k, v in fields.items() if v is not None]
    for i, key in enumerate(keys):
        lines.append(f"{'  - ' if i == 0 else '    '}{key}: {fields[key]}")
    return "\n".join(lines) + "\n"


def line_of(text: str, key: str) -> int:
    """The line of rules[1]'s `key`, or of its first line when key is "-" (the rule's mapping)."""
    start = next(
        i for i, line in enumerate(text.split("\n")) if line.startswith("  - ") and "other" not in line
    )
    if key == "-":
        return start + 1
    for i, line in enumerate(text.split("\n")[start:], start):
        if re.match(rf"^(  - |    ){re.escape(key)}:", line):
            return i + 1
    raise AssertionError(f"no key {key} in the rendered rule")


# (case id, base rule, changes (None deletes a key), path under rules[1], key whose line it is, message part)
RULE_CASES: list[tuple[str, dict[str, str | None], dict[str, str | None], str, str, str]] = [
    (
        "typo-key",
        ERROR_RATE,
        {"threshold": None, "thresold": "0.01"},
        "thresold",
        "thresold",
        "unknown key 'thresold' (did you mean 'threshold'?)",
    ),
    ("level-type", ERROR_RATE, {"level": "high"}, "level", "level", "must be an integer (got 'high')"),
    ("level-float", ERROR_RATE, {"level": "2.0"}, "level", "level", "must be an integer"),
    ("threshold-string", ERROR_RATE, {"threshold": '"0.01"'}, "threshold", "threshold", "must be a number"),
    (
        "threshold-bool",
        ERROR_RATE,
        {"threshold": "true"},
        "threshold",
        "threshold",
        "must be a number (got true)",
    ),
    ("threshold-nan", ERROR_RATE, {"threshold": ".nan"}, "threshold", "threshold", "finite"),
    ("missing-metric", ERROR_RATE, {"metric": None}, "metric", "-", "required key is missing"),
    ("missing-threshold", ERROR_RATE, {"threshold": None}, "threshold", "-", "required for compare 'above'"),
    ("bad-category", ERROR_RATE, {"category": "perf"}, "category", "category", "'performance'"),
    ("bad-severity", ERROR_RATE, {"severity": "LOW"}, "severity", "severity", "'MEDIUM'"),
    ("bad-window", ERROR_RATE, {"window": "5 minutes"}, "window", "window", "must be a duration"),
    ("short-window", ERROR_RATE, {"window": "10s"}, "window", "window", "between 1m and 7d (got 10s)"),
    ("long-window", ERROR_RATE, {"window": "8d"}, "window", "window", "between 1m and 7d (got 8d)"),
    ("bad-id", ERROR_RATE, {"id": "Bad_Id"}, "id", "id", "lowercase"),
    ("long-id", ERROR_RATE, {"id": "a" * 65}, "id", "id", "at most 64"),
    (
        "metric-compare",
        ERROR_RATE,
        {"compare": "below"},
        "compare",
        "compare",
        "compare 'below' is not allowed for metric 'error_rate' (allowed: above)",
    ),
    (
        "latency-relative-drop",
        LATENCY,
        {"compare": "relative_drop", "baseline": "reference"},
        "compare",
        "compare",
        "allowed: above, ratio_above",
    ),
    ("baseline-missing", DROP, {"baseline": None}, "baseline", "-", "required for compare 'relative_drop'"),
    ("baseline-superfluous", ERROR_RATE, {"baseline": "reference"}, "baseline", "baseline", "not allowed"),
    ("baseline-widening", GAP, {"baseline": None}, "baseline", "-", "required for compare 'widening'"),
    ("baseline-bad", DROP, {"baseline": "yesterday"}, "baseline", "baseline", "'reference' or 'week_ago'"),
    (
        "above-negative",
        ERROR_RATE,
        {"threshold": "-1"},
        "threshold",
        "threshold",
        "must be greater than 0 for compare 'above' on metric 'error_rate' (got -1)",
    ),
    ("above-rate-over-1", ERROR_RATE, {"threshold": "1.5"}, "threshold", "threshold", "must be less than 1"),
    (
        "drop-1",
        DROP,
        {"threshold": "1.0"},
        "threshold",
        "threshold",
        "less than 1 for compare 'relative_drop'",
    ),
    (
        "ratio-under-1",
        {**LATENCY, "compare": "ratio_above", "baseline": "reference"},
        {"threshold": "0.9"},
        "threshold",
        "threshold",
        "greater than 1 for compare 'ratio_above'",
    ),
    ("below-zero", ACCURACY, {"threshold": "0"}, "threshold", "threshold", "greater than 0"),
    ("published-with-threshold", MINIMUM, {"threshold": "0.9"}, "threshold", "threshold", "not allowed"),
    ("flag-missing", FLAGS, {"flag": None}, "flag", "-", "required for metric 'flag_rate'"),
    ("flag-elsewhere", ERROR_RATE, {"flag": "toxic"}, "flag", "flag", "only allowed for metric flag_rate"),
    ("quantile-missing", LATENCY, {"quantile": None}, "quantile", "-", "required for metric 'latency'"),
    ("quantile-elsewhere", ERROR_RATE, {"quantile": "0.5"}, "quantile", "quantile", "only allowed"),
    ("quantile-range", LATENCY, {"quantile": "1.0"}, "quantile", "quantile", "less than 1"),
    ("attribute-elsewhere", ACCURACY, {"attribute": "sex"}, "attribute", "attribute", "only allowed"),
    (
        "coverage-elsewhere",
        ERROR_RATE,
        {"min_label_coverage": "0.1"},
        "min_label_coverage",
        "min_label_coverage",
        "only allowed for metric accuracy, accuracy_gap",
    ),
    (
        "coverage-range",
        ACCURACY,
        {"min_label_coverage": "1.5"},
        "min_label_coverage",
        "min_label_coverage",
        "at most 1",
    ),
    (
        "ladder-not-stronger",
        ERROR_RATE,
        {"ladder": "[{threshold: 0.005, severity: HIGH, level: 2}]"},
        "ladder[0].threshold",
        "ladder",
        "must be larger than the rule's threshold 0.01",
    ),
    (
        "ladder-below-not-smaller",
        ACCURACY,
        {"ladder": "[{threshold: 0.95, severity: HIGH, level: 2}]"},
        "ladder[0].threshold",
        "ladder",
        "must be smaller",
    ),
    (
        "ladder-unordered",
        ERROR_RATE,
        {
            "ladder": (
                "[{threshold: 0.2, severity: HIGH, level: 2}, {threshold: 0.1, severity: HIGH, level: 2}]"
            )
        },
        "ladder[1].threshold",
        "ladder",
        "the previous step's threshold 0.2",
    ),
    (
        "ladder-weaker-severity",
        {**ERROR_RATE, "severity": "HIGH"},
        {"ladder": "[{threshold: 0.05, severity: MEDIUM, level: 1}]"},
        "ladder[0].severity",
        "ladder",
        "must not be weaker than the rule's severity HIGH",
    ),
    (
        "ladder-lower-level",
        ERROR_RATE,
        {"ladder": "[{threshold: 0.05, severity: HIGH, level: 0}]"},
        "ladder[0].level",
        "ladder",
        "must not be lower than the rule's level 1",
    ),
    (
        "ladder-level",
        ERROR_RATE,
        {"ladder": "[{threshold: 0.05, severity: HIGH, level: -1}]"},
        "ladder[0].level",
        "ladder",
        "must be at least 0 (got -1)",
    ),
    ("flag-empty", FLAGS, {"flag": '""'}, "flag", "flag", "must have at least 1 character (got '')"),
    (
        "ladder-typo",
        ERROR_RATE,
        {"ladder": "[{threshold: 0.05, severity: HIGH, levl: 2}]"},
        "ladder[0].levl",
        "ladder",
        "unknown key 'levl'",
    ),
    (
        "ladder-silence",
        SILENCE,
        {"ladder": "[{threshold: 1, severity: HIGH, level: 2}]"},
        "ladder",
        "ladder",
        "not allowed with compare 'silence'",
    ),
    (
        "ladder-published",
        MINIMUM,
        {"ladder": "[{threshold: 0.5, severity: HIGH, level: 2}]"},
        "ladder",
        "ladder",
        "not allowed with compare 'below_published_minimum'",
    ),
    (
        "auto-recover-critical",
        ERROR_RATE,
        {"severity": "CRITICAL", "auto_recover": "true"},
        "auto_recover",
        "auto_recover",
        "CRITICAL",
    ),
    (
        "auto-recover-security",
        DENIED,
        {"auto_recover": "true"},
        "auto_recover",
        "auto_recover",
        "must be false for category security (a person closes a security incident)",
    ),
    (
        "inhibit-self",
        ERROR_RATE,
        {"inhibited_by": "[other, r]"},
        "inhibited_by[1]",
        "inhibited_by",
        "cannot inhibit itself",
    ),
    (
        "inhibit-unknown",
        ERROR_RATE,
        {"inhibited_by": "[ghost]"},
        "inhibited_by[0]",
        "inhibited_by",
        "unknown rule id 'ghost'",
    ),
    (
        "inhibit-twice",
        ERROR_RATE,
        {"inhibited_by": "[other, other]"},
        "inhibited_by[1]",
        "inhibited_by",
        "listed twice",
    ),
    ("confidence-half", ERROR_RATE, {"confidence": "0.5"}, "confidence", "confidence", "greater than 0.5"),
    ("confidence-one", ERROR_RATE, {"confidence": "1"}, "confidence", "confidence", "less than 1"),
    ("binomial-silence", SILENCE, {"test": "binomial"}, "test", "test", "rate metric"),
    ("silence-not-duration", SILENCE, {"threshold": "soon"}, "threshold", "threshold", "must be a duration"),
    (
        "silence-beyond-window",
        SILENCE,
        {"threshold": "2d"},
        "threshold",
        "threshold",
        "shorter than the window 1d (got 2d)",
    ),
    ("silence-missing", SILENCE, {"threshold": None}, "threshold", "-", "required for compare 'silence'"),
    ("level-range", ERROR_RATE, {"level": "5"}, "level", "level", "must be at most 4 (got 5)"),
    ("min-samples-zero", ERROR_RATE, {"min_samples": "0"}, "min_samples", "min_samples", "at least 1"),
    ("hold-long", ERROR_RATE, {"hold": "8d"}, "hold", "hold", "at most 7d"),
    ("hold-bad", ERROR_RATE, {"hold": "1.5"}, "hold", "hold", "must be a duration"),
    ("rollback-type", ERROR_RATE, {"rollback": "maybe"}, "rollback", "rollback", "true or false"),
    # bias rules
    (
        "bias-metric-elsewhere",
        IMPACT,
        {"category": "performance"},
        "category",
        "category",
        "must be bias for metric 'disparate_impact' (got 'performance')",
    ),
    (
        "bias-category-other-metric",
        ERROR_RATE,
        {"category": "bias"},
        "category",
        "category",
        "category 'bias' is only for metrics disparate_impact, fnr_gap, group_shift (this rule's metric is"
        " 'error_rate')",
    ),
    ("bias-accuracy-gap", {**GAP, "category": "bias"}, {}, "category", "category", "only for metrics"),
    (
        "impact-compare",
        IMPACT,
        {"compare": "above"},
        "compare",
        "compare",
        "compare 'above' is not allowed for metric 'disparate_impact' (allowed: below)",
    ),
    ("fnr-compare", FNR, {"compare": "below"}, "compare", "compare", "(allowed: above)"),
    (
        "shift-compare-elsewhere",
        ERROR_RATE,
        {"compare": "shift"},
        "compare",
        "compare",
        "compare 'shift' is not allowed for metric 'error_rate'",
    ),
    ("group-shift-compare", SHIFT, {"compare": "widening"}, "compare", "compare", "(allowed: shift)"),
    (
        "impact-1",
        IMPACT,
        {"threshold": "1.0"},
        "threshold",
        "threshold",
        "must be less than 1 for compare 'below' on metric 'disparate_impact' (got 1.0)",
    ),
    ("impact-0", IMPACT, {"threshold": "0"}, "threshold", "threshold", "must be greater than 0"),
    (
        "fnr-1",
        FNR,
        {"threshold": "1"},
        "threshold",
        "threshold",
        "must be less than 1 for compare 'above' on metric 'fnr_gap' (got 1)",
    ),
    (
        "shift-range",
        SHIFT,
        {"threshold": "1.5"},
        "threshold",
        "threshold",
        "must be less than 1 for compare 'shift'",
    ),
    ("shift-negative", SHIFT, {"threshold": "-0.1"}, "threshold", "threshold", "greater than 0"),
    (
        "shift-baseline-missing",
        SHIFT,
        {"baseline": None},
        "baseline",
        "-",
        "required for compare 'shift' (reference)",
    ),
    (
        "shift-week-ago",
        SHIFT,
        {"baseline": "week_ago"},
        "baseline",
        "baseline",
        "must be reference for compare 'shift' (a group's shift is measured against its own reference) (got"
        " 'week_ago')",
    ),
    (
        "impact-baseline",
        IMPACT,
        {"baseline": "reference"},
        "baseline",
        "baseline",
        "only ratio_above, relative_drop, shift, widening compare against a baseline",
    ),
    (
        "impact-ladder-not-smaller",
        IMPACT,
        {"ladder": "[{threshold: 0.9, severity: CRITICAL, level: 4}]"},
        "ladder[0].threshold",
        "ladder",
        "must be smaller than the rule's threshold 0.8",
    ),
    (
        "shift-ladder-not-larger",
        SHIFT,
        {"ladder": "[{threshold: 0.05, severity: CRITICAL, level: 4}]"},
        "ladder[0].threshold",
        "ladder",
        "must be larger than the rule's threshold 0.1",
    ),
    (
        "fnr-ladder-range",
        FNR,
        {"ladder": "[{threshold: 1.2, severity: CRITICAL, level: 4}]"},
        "ladder[0].threshold",
        "ladder",
        "must be less than 1",
    ),
    (
        "fdr-elsewhere",
        ERROR_RATE,
        {"fdr": "true"},
        "fdr",
        "fdr",
        "only allowed for metric disparate_impact, fnr_gap, group_shift (this rule's metric is 'error_rate')",
    ),
    ("fdr-false-elsewhere", GAP, {"fdr": "false"}, "fdr", "fdr", "this rule's metric is 'accuracy_gap'"),
    ("fdr-type", IMPACT, {"fdr": "bh"}, "fdr", "fdr", "must be true or false (got 'bh')"),
    (
        "attributes-elsewhere",
        ACCURACY,
        {"attributes": "all"},
        "attributes",
        "attributes",
        "only allowed for metric disparate_impact, fnr_gap, group_shift",
    ),
    (
        "attributes-bad",
        IMPACT,
        {"attributes": "race"},
        "attributes",
        "attributes",
        "must be 'protected', 'proxies' or 'all' (got 'race')",
    ),
    (
        "attribute-on-bias",
        IMPACT,
        {"attribute": "sex"},
        "attribute",
        "attribute",
        "only allowed for metric accuracy_gap",
    ),
    (
        "coverage-impact",
        IMPACT,
        {"min_label_coverage": "0.1"},
        "min_label_coverage",
        "min_label_coverage",
        "only allowed for metric accuracy, accuracy_gap, fnr_gap",
    ),
    (
        "coverage-fnr-range",
        FNR,
        {"min_label_coverage": "2"},
        "min_label_coverage",
        "min_label_coverage",
        "at most 1",
    ),
    # security rules
    (
        "security-category-other-metric",
        ERROR_RATE,
        {"category": "security"},
        "category",
        "category",
        "category 'security' is only for metrics access_volume, denied_burst, new_principal_access,"
        " new_source_privileged, off_hours_access, policy_violations, query_volume, unapproved_artifacts"
        " (this rule's metric is 'error_rate')",
    ),
    (
        "security-metric-elsewhere",
        DENIED,
        {"category": "availability"},
        "category",
        "category",
        "must be security for metric 'denied_burst' (got 'availability')",
    ),
    (
        "security-metric-in-bias",
        VOLUME,
        {"category": "bias"},
        "category",
        "category",
        "must be security for metric 'access_volume' (got 'bias')",
    ),
    # The category names the slip; "revoke only for security metrics" would be a cascade.
    (
        "security-key-wrong-metric",
        {**ERROR_RATE, "category": "security"},
        {"revoke": "true", "min_volume": "5"},
        "category",
        "category",
        "category 'security' is only for metrics",
    ),
    (
        "security-compare",
        DENIED,
        {"compare": "below"},
        "compare",
        "compare",
        "compare 'below' is not allowed for metric 'denied_burst' (allowed: above)",
    ),
    (
        "volume-compare-above",
        VOLUME,
        {"compare": "above", "baseline": None, "min_volume": None},
        "compare",
        "compare",
        "compare 'above' is not allowed for metric 'access_volume' (allowed: ratio_above)",
    ),
    (
        "count-negative",
        DENIED,
        {"threshold": "-1"},
        "threshold",
        "threshold",
        "must be at least 0 for compare 'above' on metric 'denied_burst' (a count) (got -1)",
    ),
    (
        "count-fraction",
        DENIED,
        {"threshold": "0.5"},
        "threshold",
        "threshold",
        "must be a whole number for compare 'above' on metric 'denied_burst' (a count) (got 0.5)",
    ),
    (
        "count-string",
        DENIED,
        {"threshold": "many"},
        "threshold",
        "threshold",
        "must be a number (got 'many')",
    ),
    (
        "cap-zero",
        CAP,
        {"threshold": "0"},
        "threshold",
        "threshold",
        "must be at least 1 for compare 'above' on metric 'query_volume' (a count) (got 0)",
    ),
    (
        "count-ladder-not-larger",
        DENIED,
        {"ladder": "[{threshold: 10, severity: CRITICAL, level: 4}]"},
        "ladder[0].threshold",
        "ladder",
        "must be larger than the rule's threshold 20",
    ),
    (
        "count-ladder-fraction",
        DENIED,
        {"ladder": "[{threshold: 50.5, severity: CRITICAL, level: 4}]"},
        "ladder[0].threshold",
        "ladder",
        "must be a whole number",
    ),
    (
        "volume-ratio-1",
        VOLUME,
        {"threshold": "1"},
        "threshold",
        "threshold",
        "must be greater than 1 for compare 'ratio_above' (got 1)",
    ),
    (
        "volume-baseline-missing",
        VOLUME,
        {"baseline": None},
        "baseline",
        "-",
        "required for compare 'ratio_above' (reference)",
    ),
    (
        "volume-week-ago",
        QUERIES,
        {"baseline": "week_ago"},
        "baseline",
        "baseline",
        "must be reference for compare 'ratio_above' on metric 'query_volume' (a volume is compared with its"
        " principal's or key's own previous 7 days) (got 'week_ago')",
    ),
    (
        "cap-baseline",
        CAP,
        {"baseline": "reference"},
        "baseline",
        "baseline",
        "not allowed for compare 'above'",
    ),
    (
        "security-binomial",
        DENIED,
        {"test": "binomial"},
        "test",
        "test",
        "test: binomial needs a rate metric, not 'denied_burst'; use test: none",
    ),
    (
        "security-sequential",
        DENIED,
        {"test": "sequential"},
        "test",
        "test",
        "test: sequential needs a rate metric, not 'denied_burst'; use test: none",
    ),
    ("test-unknown", ERROR_RATE, {"test": "cusum"}, "test", "test", "'sequential', 'none' or 'binomial'"),
    (
        "false-alarm-security",
        DENIED,
        {"false_alarm_every": "30d"},
        "false_alarm_every",
        "false_alarm_every",
        "only allowed for the rate metrics (accuracy, accuracy_gap, disparate_impact, error_rate, flag_rate,"
        " fnr_gap, group_shift, latency, unserved_users) (this rule's metric is 'denied_burst')",
    ),
    (
        "false-alarm-silence",
        SILENCE,
        {"false_alarm_every": "30d"},
        "false_alarm_every",
        "false_alarm_every",
        "(this rule's metric is 'silence')",
    ),
    (
        "false-alarm-short",
        ERROR_RATE,
        {"false_alarm_every": "59m"},
        "false_alarm_every",
        "false_alarm_every",
        "must be at least 1h (got 59m)",
    ),
    (
        "false-alarm-not-duration",
        FLAGS,
        {"false_alarm_every": "'90 days'"},
        "false_alarm_every",
        "false_alarm_every",
        "must be a duration like 90s, 30m, 24h or 7d (got '90 days')",
    ),
    ("security-min-samples-zero", DENIED, {"min_samples": "0"}, "min_samples", "min_samples", "at least 1"),
    (
        "revoke-elsewhere",
        ERROR_RATE,
        {"revoke": "true"},
        "revoke",
        "revoke",
        "only allowed for the security metrics (this rule's metric is 'error_rate')",
    ),
    (
        "revoke-false-elsewhere",
        FLAGS,
        {"revoke": "false"},
        "revoke",
        "revoke",
        "only allowed for the security metrics",
    ),
    ("revoke-type", DENIED, {"revoke": "always"}, "revoke", "revoke", "must be true or false (got 'always')"),
    (
        "min-volume-elsewhere",
        DENIED,
        {"min_volume": "10"},
        "min_volume",
        "min_volume",
        "only allowed for metric access_volume, query_volume (this rule's metric is 'denied_burst')",
    ),
    (
        "min-volume-on-rate",
        LATENCY,
        {"min_volume": "10"},
        "min_volume",
        "min_volume",
        "only allowed for metric access_volume, query_volume (this rule's metric is 'latency')",
    ),
    (
        "min-volume-with-cap",
        CAP,
        {"min_volume": "10"},
        "min_volume",
        "min_volume",
        "only meaningful with compare 'ratio_above' (compare 'above' is already an absolute amount)",
    ),
    (
        "min-volume-negative",
        VOLUME,
        {"min_volume": "-1"},
        "min_volume",
        "min_volume",
        "must be at least 0 (got -1)",
    ),
    (
        "min-volume-float",
        VOLUME,
        {"min_volume": "1.5"},
        "min_volume",
        "min_volume",
        "must be an integer (got 1.5)",
    ),
    (
        "follow-elsewhere",
        DENIED,
        {"follow": "1h"},
        "follow",
        "follow",
        "only allowed for metric new_source_privileged (this rule's metric is 'denied_burst')",
    ),
    ("follow-bad", NEW_SOURCE, {"follow": "soon"}, "follow", "follow", "must be a duration like 90s"),
    (
        "follow-short",
        NEW_SOURCE,
        {"follow": "30s"},
        "follow",
        "follow",
        "must be between 1m and 7d (got 30s)",
    ),
    ("follow-long", NEW_SOURCE, {"follow": "8d"}, "follow", "follow", "must be between 1m and 7d (got 8d)"),
    (
        "follow-seconds-key",
        NEW_SOURCE,
        {"follow": None, "follow_s": "3600"},
        "follow_s",
        "follow_s",
        "unknown key 'follow_s' (did you mean 'follow'?)",
    ),
    (
        "rollback-on-access",
        DENIED,
        {"rollback": "true"},
        "rollback",
        "rollback",
        "not allowed for metric 'denied_burst': of the security metrics only unapproved_artifacts rolls back"
        " (an access incident is no fault of the model version; use revoke)",
    ),
]


def one_problem(exc: pytest.ExceptionInfo[ConfigError]) -> re.Match[str]:
    lines = str(exc.value).split("\n")
    assert len(lines) == 1, lines  # one mistake, one complaint: no cascades
    match = PROBLEM.match(lines[0])
    assert match, lines[0]
    return match


@pytest.mark.parametrize(
    ("base", "changes", "path", "key", "message"),
    [case[1:] for case in RULE_CASES],
    ids=[case[0] for case in RULE_CASES],
)
def test_rule_refusals(
    tmp_path: Path,
    base: dict[str, str | None],
    changes: dict[str, str | None],
    path: str,
    key: str,
    message: str,
) -> None:
    text = render({**base, **changes})
    source = tmp_path / "bad.yaml"
    source.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_rules(source)
    got = one_problem(exc)
    assert got["file"] == str(source)
    assert (got["path"], int(got["line"])) == (f"rules[1].{path}", line_of(text, key)), text
    assert message in got["message"]


def test_every_rule_base_is_valid(tmp_path: Path) -> None:
    bases = (
        ERROR_RATE,
        ACCURACY,
        DROP,
        LATENCY,
        FLAGS,
        SILENCE,
        MINIMUM,
        GAP,
        IMPACT,
        FNR,
        SHIFT,
        DENIED,
        VOLUME,
        QUERIES,
        CAP,
        NEW_SOURCE,
        ARTIFACTS,
    )
    for index, base in enumerate(bases):
        source = tmp_path / f"ok{index}.yaml"
        source.write_text(render(base))
        assert isinstance(load_rules(source).by_id("r"), Rule)


def test_resolved_defaults_of_a_minimal_rule(tmp_path: Path) -> None:
    source = tmp_path / "r.yaml"
    source.write_text(render(ACCURACY) + "defaults: {confidence: 0.95, hold: 1h, min_samples: 50}\n")
    rule = load_rules(source).by_id("r")
    assert (rule.confidence, rule.hold_s, rule.min_samples) == (0.95, 3600, 50)
    assert (rule.test, rule.min_label_coverage, rule.auto_recover, rule.rollback) == (
        "sequential",
        0.05,
        True,
        False,
    )
    assert (rule.window_s, rule.ladder, rule.inhibited_by, rule.description) == (300, (), (), "")
    assert (rule.fdr, rule.attributes) == (False, "all")


# --- the false-alarm budget and the deprecated keys -----------------------------------------------

BINOMIAL_WARNING = (
    "deprecated: rate rules are now decided by a sequential detector with a false-alarm budget"
    " (docs/rules.md#detectors); remove `test: binomial`"
)
FDR_WARNING = (
    "deprecated: the false-alarm budget (`false_alarm_every`) now accounts for every model, version"
    " and group the rule watches (docs/rules.md#detectors); remove `fdr`"
)


def test_false_alarm_every_from_the_defaults_and_from_a_rule(tmp_path: Path) -> None:
    text = render({**FLAGS, "false_alarm_every": "7d"})
    source = write(tmp_path, "r.yaml", text + "defaults: {false_alarm_every: 30d}\n")
    ruleset = load_rules(source)
    assert ruleset.by_id("r").false_alarm_every_s == 7 * 86400
    assert ruleset.by_id("other").false_alarm_every_s == 30 * 86400
    assert ruleset.warnings == ()
    # No defaults: the built-in 90 days; whole seconds are a duration too.
    source = write(tmp_path, "r.yaml", render({**LATENCY, "false_alarm_every": "3600"}))
    ruleset = load_rules(source)
    assert (ruleset.by_id("r").false_alarm_every_s, ruleset.by_id("other").false_alarm_every_s) == (
        3600,
        7_776_000,
    )


def test_false_alarm_every_in_the_defaults_does_not_refuse_other_rules(tmp_path: Path) -> None:
    source = write(tmp_path, "r.yaml", render(DENIED) + "defaults: {false_alarm_every: 30d}\n")
    assert load_rules(source).by_id("r").test == "none"


def test_deprecated_keys_load_with_located_warnings(tmp_path: Path) -> None:
    text = render({**IMPACT, "test": "binomial", "fdr": "true"})
    source = write(tmp_path, "old.yaml", text)
    ruleset = load_rules(source)
    rule = ruleset.by_id("r")
    assert (rule.test, rule.fdr) == ("sequential", True)  # binomial now means the detector
    assert ruleset.warnings == (
        f"{source}:{line_of(text, 'test')}: rules[1].test: {BINOMIAL_WARNING}",
        f"{source}:{line_of(text, 'fdr')}: rules[1].fdr: {FDR_WARNING}",
    )
    # `fdr: false` is as deprecated as `fdr: true`, and resolves as it did.
    text = render({**FNR, "fdr": "false"})
    ruleset = load_rules(write(tmp_path, "old.yaml", text))
    assert ruleset.by_id("r").fdr is False
    assert ruleset.warnings == (f"{source}:{line_of(text, 'fdr')}: rules[1].fdr: {FDR_WARNING}",)


def test_warnings_of_a_directory_come_in_file_then_line_order(tmp_path: Path) -> None:
    rule = "  - {{id: {id}, category: availability, metric: error_rate, window: 5m, compare: above,\n"
    rule += "     threshold: 0.01, severity: MEDIUM, level: 1, test: binomial}}\n"
    second = write(tmp_path, "b.yaml", "version: 1\nrules:\n" + rule.format(id="b"))
    first = write(tmp_path, "a.yaml", "version: 1\nrules:\n" + rule.format(id="a1") + rule.format(id="a2"))
    assert [w.split(": ", 2)[:2] for w in load_rules(tmp_path).warnings] == [
        [f"{first}:4", "rules[0].test"],
        [f"{first}:6", "rules[1].test"],
        [f"{second}:4", "rules[0].test"],
    ]


def test_a_refused_file_reports_its_problems_not_its_warnings(tmp_path: Path) -> None:
    source = write(tmp_path, "bad.yaml", render({**ERROR_RATE, "test": "binomial", "level": "9"}))
    code, text = check_command(source)
    assert code == 1
    assert "deprecated" not in text and "rules[1].level: must be at most 4" in text


def test_rule_built_by_hand_checks_the_budget_and_the_test() -> None:
    rule = load_rules(DEFAULT).by_id("error-rate")
    assert rule.false_alarm_every_s == 7_776_000
    assert Rule(**{**rule.model_dump(), "false_alarm_every_s": 3600}).false_alarm_every_s == 3600
    del_budget = {k: v for k, v in rule.model_dump().items() if k != "false_alarm_every_s"}
    assert Rule(**del_budget).false_alarm_every_s == 7_776_000
    for bad in ({"false_alarm_every_s": 3599}, {"test": "binomial"}):
        with pytest.raises(ValueError):
            Rule(**{**rule.model_dump(), **bad})


@pytest.mark.parametrize(
    ("base", "changes", "want"),
    [
        (
            IMPACT,
            {},
            dict(fdr=True, attributes="all", test="sequential", min_label_coverage=None, direction="down"),
        ),
        (FNR, {}, dict(fdr=True, min_label_coverage=0.05, direction="up")),
        (FNR, {"min_label_coverage": "0.2", "fdr": "false"}, dict(fdr=False, min_label_coverage=0.2)),
        (
            SHIFT,
            {"attributes": "proxies", "test": "none"},
            dict(attributes="proxies", test="none", direction="up"),
        ),
        (
            IMPACT,
            {"attributes": "protected", "ladder": "[{threshold: 0.5, severity: CRITICAL, level: 4}]"},
            dict(attributes="protected", auto_recover=True, steps=[(0.8, "HIGH", 3), (0.5, "CRITICAL", 4)]),
        ),
    ],
    ids=["impact", "fnr", "fnr-explicit", "shift-proxies", "impact-ladder"],
)
def test_resolved_bias_rule(tmp_path: Path, base: Fields, changes: Fields, want: dict[str, Any]) -> None:
    source = tmp_path / "r.yaml"
    source.write_text(render({**base, **changes}))
    ruleset = load_rules(source)
    rule = ruleset.by_id("r")
    for name, value in want.items():
        if name == "steps":
            assert [(s.threshold, s.severity, s.level) for s in rule.steps()] == value
        else:
            assert getattr(rule, name) == value, name
    assert (
        ruleset.fairness.attributes(rule.attributes)
        == {
            "all": [("sex", False), ("zip3", True)],
            "protected": [("sex", False)],
            "proxies": [("zip3", True)],
        }[rule.attributes]
    )


@pytest.mark.parametrize(
    ("base", "changes", "want"),
    [
        (
            DENIED,
            {},
            dict(
                min_samples=1,
                test="none",
                auto_recover=False,
                revoke=False,
                min_volume=0,
                follow_s=3600,
                rollback=False,
                baseline=None,
                fdr=False,
                direction="up",
            ),
        ),
        (
            DENIED,
            {
                "min_samples": "5",
                "revoke": "true",
                "ladder": "[{threshold: 100, severity: CRITICAL, level: 4}]",
            },
            dict(min_samples=5, revoke=True, steps=[(20.0, "HIGH", 1), (100.0, "CRITICAL", 4)]),
        ),
        (VOLUME, {}, dict(min_volume=1_000_000_000, baseline="reference", threshold=10.0, window_s=86400)),
        (QUERIES, {"min_volume": "0"}, dict(min_volume=0, threshold=20.0)),
        (CAP, {}, dict(threshold=100000.0, min_volume=0, baseline=None)),
        (NEW_SOURCE, {"follow": "30m"}, dict(follow_s=1800, revoke=True)),
        (NEW_SOURCE, {"follow": None}, dict(follow_s=3600)),
        (ARTIFACTS, {}, dict(rollback=True, auto_recover=False, severity="CRITICAL", threshold=0.0)),
    ],
    ids=[
        "count",
        "count-explicit",
        "volume",
        "queries-no-minimum",
        "cap",
        "follow",
        "follow-default",
        "artifacts",
    ],
)
def test_resolved_security_rule(tmp_path: Path, base: Fields, changes: Fields, want: dict[str, Any]) -> None:
    source = tmp_path / "r.yaml"
    source.write_text(render({**base, **changes}) + "defaults: {min_samples: 50}\n")
    ruleset = load_rules(source)
    rule = ruleset.by_id("r")
    for name, value in want.items():
        if name == "steps":
            assert [(s.threshold, s.severity, s.level) for s in rule.steps()] == value
        elif name == "direction":
            assert rule.direction == value
        else:
            assert getattr(rule, name) == value, name
    # The defaults' sample size is for rates: it would make a count of 1 unauthorized download not count.
    assert ruleset.by_id("other").min_samples == 50


def test_security_metrics_are_exactly_category_security() -> None:
    ruleset = load_rules(DEFAULT)
    assert {r.metric for r in ruleset.rules if r.category == "security"} == SECURITY_METRICS
    assert all(r.category == "security" for r in ruleset.rules if r.metric in SECURITY_METRICS)


BIAS_RULE = (
    "  - {id: d, category: bias, metric: disparate_impact, window: 1h, compare: below, threshold: 0.8,\n"
    "     severity: HIGH, level: 3,\n"
)

# Whole-file cases as written, each with `#<` on the line the problem must name (or the line number).
FILE_CASES: list[tuple[str, str, str, str]] = [
    (
        "syntax",
        "version: 1\nrules:\n  - id: a\n    metric: x: y #<\n",
        "YAML syntax",
        "mapping values are not allowed",
    ),
    (
        "syntax-unclosed",
        "version: 1\nrules: [a\n\n#<",
        "YAML syntax",
        "expected ',' or ']', but got '<stream end>' (while parsing a flow sequence that starts at line 2)",
    ),
    ("syntax-tab", "version: 1\nrules:\n\t- id: a #<\n", "YAML syntax", "indent with spaces, not tabs"),
    ("two-documents", "version: 1\n--- #<\nversion: 1\n", "YAML syntax", "but found another document"),
    (
        "not-a-mapping",
        "- version: 1 #<\n",
        "(top level)",
        "must be a mapping with version and rules (got a list)",
    ),
    ("empty", "# nothing here #<\n", "(top level)", "empty"),
    ("unknown-top-key", "version: 1\nrule: [] #<\n", "rule", "unknown key 'rule' (did you mean 'rules'?)"),
    ("version-missing", "rules: [] #<\n", "version", "required key is missing"),
    ("version-2", "version: 2 #<\nrules: []\n", "version", "unsupported version 2"),
    ("rules-not-list", "version: 1\nrules: {a: 1} #<\n", "rules", "must be a list"),
    ("rule-not-mapping", "version: 1\nrules:\n  - just-a-string #<\n", "rules[0]", "must be a mapping"),
    (
        "defaults-typo",
        "version: 1\ndefaults:\n  confidense: 0.9 #<\nrules: []\n",
        "defaults.confidense",
        "did you mean 'confidence'",
    ),
    (
        "defaults-confidence",
        "version: 1\ndefaults: {confidence: 0.3} #<\nrules: []\n",
        "defaults.confidence",
        "greater than 0.5",
    ),
    ("defaults-hold", "version: 1\ndefaults:\n  hold: forever #<\nrules: []\n", "defaults.hold", "duration"),
    (
        "published-zero",
        "version: 1\nmodels:\n  m:\n    published_min_accuracy: 0 #<\n",
        "models.m.published_min_accuracy",
        "greater than 0",
    ),
    (
        "published-above-1",
        "version: 1\nmodels:\n  m: {published_min_accuracy: 1.5} #<\n",
        "models.m.published_min_accuracy",
        "at most 1",
    ),
    (
        "model-typo",
        "version: 1\nmodels:\n  m: {published_minimum: 0.9} #<\n",
        "models.m.published_minimum",
        "unknown key",
    ),
    ("duplicate-yaml-key", "version: 1\nversion: 1 #<\n", "version", "duplicate key (first given at line 1)"),
    (
        "duplicate-id",
        "version: 1\nrules:\n" + OTHER_RULE + OTHER_RULE.replace("{id: other,", "{id: other, #<\n    "),
        "rules[1].id",
        "duplicate rule id 'other' (first defined at {file}:3)",
    ),
    # the fairness section
    (
        "fairness-typo",
        "version: 1\nfairnes: {} #<\n",
        "fairnes",
        "unknown key 'fairnes' (did you mean 'fairness'?)",
    ),
    (
        "fairness-not-mapping",
        "version: 1\nfairness: [sex] #<\n",
        "fairness",
        "must be a mapping (got a list)",
    ),
    (
        "fairness-unknown-key",
        "version: 1\nfairness:\n  protect: {sex: {}} #<\n",
        "fairness.protect",
        "unknown key 'protect' (did you mean 'protected'?)",
    ),
    (
        "protected-list",
        "version: 1\nfairness:\n  protected: [sex, age_band] #<\n",
        "fairness.protected",
        "must be a mapping (got a list)",
    ),
    (
        "protected-null",
        "version: 1\nfairness:\n  protected:\n    sex: #<\n",
        "fairness.protected.sex",
        "must be a mapping (got nothing)",
    ),
    (
        "reference-typo",
        "version: 1\nfairness:\n  protected:\n    sex: {refrence: M} #<\n",
        "fairness.protected.sex.refrence",
        "unknown key 'refrence' (did you mean 'reference'?)",
    ),
    (
        "reference-number",
        "version: 1\nfairness:\n  protected:\n    age: {reference: 01} #<\n",
        "fairness.protected.age.reference",
        "must be a string: group values are compared as text, so quote it (got 1)",
    ),
    (
        "reference-bool",
        "version: 1\nfairness:\n  protected:\n    member:\n      reference: no #<\n",
        "fairness.protected.member.reference",
        "quote it (got false)",
    ),
    (
        "reference-empty",
        "version: 1\nfairness:\n  protected:\n    sex: {reference: ''} #<\n",
        "fairness.protected.sex.reference",
        "must not be empty (leave it out for the most favoured group)",
    ),
    (
        "reference-list",
        "version: 1\nfairness:\n  protected:\n    sex: {reference: [M, F]} #<\n",
        "fairness.protected.sex.reference",
        "must be a string naming one group (got a list)",
    ),
    (
        "attribute-name-empty",
        "version: 1\nfairness:\n  protected:\n    '': {} #<\n",
        "fairness.protected.''",
        "an attribute name must not be empty",
    ),
    (
        "attribute-name-number",
        "version: 1\nfairness:\n  protected:\n    sex: {}\n    7: {} #<\n",
        "fairness.protected.7",
        "keys must be strings; quote it (got 7)",
    ),
    (
        "proxy-for-type",
        "version: 1\nfairness:\n  proxies:\n    zip3: {proxy_for: 3} #<\n",
        "fairness.proxies.zip3.proxy_for",
        "must be a string (got 3)",
    ),
    (
        "proxy-typo",
        "version: 1\nfairness:\n  proxies:\n    zip3: {proxy: race} #<\n",
        "fairness.proxies.zip3.proxy",
        "unknown key 'proxy'",
    ),
    (
        "protected-and-proxy",
        "version: 1\nfairness:\n  protected: {zip3: {}}\n  proxies:\n    zip3: {} #<\n",
        "fairness.proxies.zip3",
        "'zip3' is also declared protected; an attribute is either protected or a proxy",
    ),
    (
        "bias-selects-nothing",
        "version: 1\nfairness:\n  protected: {sex: {}}\nrules:\n"
        + BIAS_RULE
        + "     attributes: proxies} #<\n",
        "rules[0].attributes",
        "attributes 'proxies' selects nothing to test: the fairness section at {file}:2 declares no proxies",
    ),
    (
        "bias-without-fairness",
        "version: 1\nrules:\n" + BIAS_RULE.replace("{id: d,", "{id: d, #<\n    ") + "     fdr: true}\n",
        "rules[0].attributes",
        "attributes 'all' selects nothing to test: no file has a fairness section",
    ),
    # the access_policy section
    (
        "access-typo",
        "version: 1\naccess_polcy: {} #<\n",
        "access_polcy",
        "unknown key 'access_polcy' (did you mean 'access_policy'?)",
    ),
    (
        "access-not-mapping",
        "version: 1\naccess_policy: [a] #<\n",
        "access_policy",
        "must be a mapping (got a list)",
    ),
    (
        "access-unknown-key",
        "version: 1\naccess_policy:\n  grant: [] #<\n",
        "access_policy.grant",
        "unknown key 'grant' (did you mean 'grants'?)",
    ),
    (
        "hours-typo",
        "version: 1\naccess_policy:\n  normal_hours:\n    time_zone: UTC #<\n",
        "access_policy.normal_hours.time_zone",
        "unknown key 'time_zone' (did you mean 'timezone'?)",
    ),
    (
        "hours-not-mapping",
        "version: 1\naccess_policy:\n  normal_hours: 9-17 #<\n",
        "access_policy.normal_hours",
        "must be a mapping (got '9-17')",
    ),
    (
        "start-unquoted",
        "version: 1\naccess_policy:\n  normal_hours:\n    start: 7:30 #<\n",
        "access_policy.normal_hours.start",
        'must be quoted text like "07:00" (got the number 450: unquoted, YAML reads 20:00 as 1200)',
    ),
    (
        "start-not-a-time",
        "version: 1\naccess_policy:\n  normal_hours: {start: 7am} #<\n",
        "access_policy.normal_hours.start",
        "must be a time \"HH:MM\" from 00:00 to 23:59 (got '7am')",
    ),
    (
        "start-24",
        "version: 1\naccess_policy:\n  normal_hours: {start: '24:00'} #<\n",
        "access_policy.normal_hours.start",
        "from 00:00 to 23:59 (got '24:00')",
    ),
    (
        "end-minute-60",
        "version: 1\naccess_policy:\n  normal_hours: {end: '20:60'} #<\n",
        "access_policy.normal_hours.end",
        "from 00:00 to 24:00 (got '20:60')",
    ),
    (
        "end-bool",
        "version: 1\naccess_policy:\n  normal_hours:\n    end: no #<\n",
        "access_policy.normal_hours.end",
        'must be a time "HH:MM" in quotes (got false)',
    ),
    (
        "end-before-start",
        "version: 1\naccess_policy:\n  normal_hours:\n    start: '20:00'\n    end: '08:00' #<\n",
        "access_policy.normal_hours.end",
        "must be later than start 20:00 (normal hours cannot span midnight; give night work its own grant "
        "with hours: any) (got '08:00')",
    ),
    (
        "end-equals-start",
        "version: 1\naccess_policy:\n  normal_hours: {start: '07:00', end: '07:00'} #<\n",
        "access_policy.normal_hours.end",
        "must be later than start 07:00",
    ),
    (
        "days-unknown",
        "version: 1\naccess_policy:\n  normal_hours:\n    days: [mon, thurs] #<\n",
        "access_policy.normal_hours.days[1]",
        "must be 'mon', 'tue', 'wed', 'thu', 'fri', 'sat' or 'sun' (got 'thurs')",
    ),
    (
        "days-empty",
        "version: 1\naccess_policy:\n  normal_hours:\n    days: [] #<\n",
        "access_policy.normal_hours.days",
        "must list at least one day (mon .. sun)",
    ),
    (
        "timezone-unknown",
        "version: 1\naccess_policy:\n  normal_hours:\n    timezone: Europe/Pariss #<\n",
        "access_policy.normal_hours.timezone",
        "unknown timezone 'Europe/Pariss' (did you mean 'Europe/Paris'?)",
    ),
    (
        "timezone-nowhere",
        "version: 1\naccess_policy:\n  normal_hours: {timezone: Mars/Olympus} #<\n",
        "access_policy.normal_hours.timezone",
        "unknown timezone 'Mars/Olympus' (an IANA name like UTC or Europe/Paris)",
    ),
    (
        "timezone-path",
        "version: 1\naccess_policy:\n  normal_hours: {timezone: ../../etc/passwd} #<\n",
        "access_policy.normal_hours.timezone",
        "unknown timezone '../../etc/passwd'",
    ),
    (
        "learning-bad",
        "version: 1\naccess_policy:\n  learning_period: 1 week #<\n",
        "access_policy.learning_period",
        "must be a duration like 90s, 30m, 24h or 7d (got '1 week')",
    ),
    (
        "unchecked-unknown",
        "version: 1\naccess_policy:\n  unchecked_actions: [login, sudo] #<\n",
        "access_policy.unchecked_actions[1]",
        "must be 'read', 'download', 'write', 'delete', 'deploy', 'query', 'login' or 'grant' (got 'sudo')",
    ),
    (
        "privileged-unknown",
        "version: 1\naccess_policy:\n  privileged_actions:\n    - write\n    - exec #<\n",
        "access_policy.privileged_actions[1]",
        "(got 'exec')",
    ),
    (
        "privileged-empty",
        "version: 1\naccess_policy:\n  privileged_actions: [] #<\n",
        "access_policy.privileged_actions",
        "must list at least one action (new_source_privileged rules watch these)",
    ),
    (
        "grants-not-list",
        "version: 1\naccess_policy:\n  grants: {a: 1} #<\n",
        "access_policy.grants",
        "must be a list (got a mapping)",
    ),
    (
        "grant-principal-typo",
        "version: 1\naccess_policy:\n  grants:\n    - principal: [a] #<\n"
        "      actions: [read]\n      resource_types: [config]\n",
        "access_policy.grants[0].principal",
        "unknown key 'principal' (did you mean 'principals'?)",
    ),
    (
        "grant-actions-missing",
        "version: 1\naccess_policy:\n  grants:\n    - {principals: [a], resource_types: [config]} #<\n",
        "access_policy.grants[0].actions",
        "required key is missing",
    ),
    (
        "grant-action-unknown",
        "version: 1\naccess_policy:\n  grants:\n    - principals: [a]\n"
        "      actions: [read, steal] #<\n      resource_types: [config]\n",
        "access_policy.grants[0].actions[1]",
        "must be 'read', 'download', 'write', 'delete', 'deploy', 'query', 'login' or 'grant' (got 'steal')",
    ),
    (
        "grant-resource-unknown",
        "version: 1\naccess_policy:\n  grants:\n    - principals: [a]\n"
        "      actions: [read]\n      resource_types: [weights] #<\n",
        "access_policy.grants[0].resource_types[0]",
        "must be 'model_weights', 'training_data', 'endpoint', 'config' or 'credentials' (got 'weights')",
    ),
    (
        "grant-principals-string",
        "version: 1\naccess_policy:\n  grants:\n    - principals: svc-a #<\n"
        "      actions: [read]\n      resource_types: [config]\n",
        "access_policy.grants[0].principals",
        "must be a list (got 'svc-a')",
    ),
    (
        "grant-principals-empty",
        "version: 1\naccess_policy:\n  grants:\n    - principals: [] #<\n"
        "      actions: [read]\n      resource_types: [config]\n",
        "access_policy.grants[0].principals",
        "must list at least one principal pattern",
    ),
    (
        "defaults-false-alarm-short",
        "version: 1\ndefaults:\n  false_alarm_every: 1800 #<\nrules: []\n",
        "defaults.false_alarm_every",
        "must be at least 1h (got 30m)",
    ),
    (
        "defaults-false-alarm-type",
        "version: 1\ndefaults:\n  false_alarm_every: true #<\nrules: []\n",
        "defaults.false_alarm_every",
        "must be a duration like 90s, 30m, 24h or 7d (got True)",
    ),
    (
        "grant-principal-blank",
        "version: 1\naccess_policy:\n  grants:\n    - principals:\n        - a\n"
        "        - ' ' #<\n      actions: [read]\n      resource_types: [config]\n",
        "access_policy.grants[0].principals[1]",
        "a pattern must not be empty (use '*' for any)",
    ),
    (
        "grant-actions-empty",
        "version: 1\naccess_policy:\n  grants:\n    - principals: [a]\n      actions: [] #<\n"
        "      resource_types: [config]\n",
        "access_policy.grants[0].actions",
        "must list at least one action",
    ),
    (
        "grant-resources-empty",
        "version: 1\naccess_policy:\n  grants:\n    - principals: [a]\n      actions: [read]\n"
        "      resource_types: [] #<\n",
        "access_policy.grants[0].resource_types",
        "must list at least one resource type",
    ),
    (
        "grant-models-empty",
        "version: 1\naccess_policy:\n  grants:\n    - principals: [a]\n      actions: [read]\n"
        "      resource_types: [config]\n      models: [] #<\n",
        "access_policy.grants[0].models",
        "must list at least one model pattern ('*' for every model)",
    ),
    (
        "grant-model-blank",
        "version: 1\naccess_policy:\n  grants:\n    - principals: [a]\n      actions: [read]\n"
        "      resource_types: [config]\n      models: [''] #<\n",
        "access_policy.grants[0].models[0]",
        "a pattern must not be empty",
    ),
    (
        "grant-hours",
        "version: 1\naccess_policy:\n  grants:\n    - principals: [a]\n      actions: [read]\n"
        "      resource_types: [config]\n      hours: always #<\n",
        "access_policy.grants[0].hours",
        "must be 'normal' or 'any' (got 'always')",
    ),
]


def marked_line(text: str) -> int:
    return next(i for i, line in enumerate(text.split("\n"), 1) if "#<" in line)


@pytest.mark.parametrize(
    ("text", "path", "message"), [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES]
)
def test_file_refusals(tmp_path: Path, text: str, path: str, message: str) -> None:
    source = tmp_path / "bad.yaml"
    source.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_rules(source)
    got = one_problem(exc)
    assert (got["file"], got["path"], int(got["line"])) == (str(source), path, marked_line(text)), text
    assert message.format(file=source) in got["message"]


def test_access_policy_problems_of_two_grants_are_each_reported(tmp_path: Path) -> None:
    source = write(
        tmp_path,
        "p.yaml",
        "version: 1\naccess_policy:\n  grants:\n"
        "    - {principals: [a], actions: [], resource_types: [config]}\n"
        "    - {principals: [b], actions: [read], resource_types: [config], models: []}\n",
    )
    with pytest.raises(RulesFileError) as exc:
        load_rules(source)
    assert [(p.line, p.path) for p in exc.value.problems] == [
        (4, "access_policy.grants[0].actions"),
        (5, "access_policy.grants[1].models"),
    ]


def test_a_broken_fairness_section_is_not_blamed_on_the_bias_rules(tmp_path: Path) -> None:
    # The section's typo hides its attributes; "selects nothing to test" would be a cascade.
    source = write(
        tmp_path,
        "f.yaml",
        "version: 1\nfairness:\n  protectd: {sex: {}}\nrules:\n"
        + BIAS_RULE
        + "     attributes: protected}\n",
    )
    with pytest.raises(ConfigError) as exc:
        load_rules(source)
    assert one_problem(exc).group("line", "path") == ("3", "fairness.protectd")


def test_block_ladder_points_at_the_step_line(tmp_path: Path) -> None:
    text = render(ERROR_RATE) + (
        "    ladder:\n"
        "      - threshold: 0.05\n"
        "        severity: HIGH\n"
        "        level: 2\n"
        "      - threshold: 0.04\n"  # line 19: weaker than the step before it
        "        severity: CRITICAL\n"
        "        level: 4\n"
    )
    source = tmp_path / "ladder.yaml"
    source.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_rules(source)
    got = one_problem(exc)
    assert (got["path"], int(got["line"])) == (
        "rules[1].ladder[1].threshold",
        marked_line(text.replace("      - threshold: 0.04", "      - threshold: 0.04 #<")),
    )


def test_all_problems_are_reported_one_per_line_in_file_order(tmp_path: Path) -> None:
    source = tmp_path / "bad.yaml"
    source.write_text(
        "version: 1\n"
        "rules:\n"
        "  - {id: a, category: availability, metric: error_rate, window: 5m, compare: above,\n"
        "     threshold: -1, severity: HIGH, level: 2}\n"
        "  - {id: b, category: availability, metric: error_rate, window: 5m, compare: above,\n"
        "     thresold: 0.1, severity: HIGH, level: 2}\n"
    )
    with pytest.raises(RulesFileError) as exc:
        load_rules(source)
    assert [(p.line, p.path) for p in exc.value.problems] == [
        (4, "rules[0].threshold"),
        (6, "rules[1].thresold"),
    ]
    assert str(exc.value).count("\n") == 1


@pytest.mark.parametrize("source", sorted(FIXTURES.glob("*.yaml")), ids=lambda p: p.stem)
def test_fixture_files_are_refused_as_their_header_says(source: Path) -> None:
    expected = source.read_text().split("\n", 1)[0].removeprefix("# expect: ")
    code, text = check_command(source)
    assert (code, text) == (1, f"{source}:{expected}")


def test_anchors_and_merge_keys_load_and_blame_the_merging_rule(tmp_path: Path) -> None:
    common = (
        "version: 1\n"
        "x-common: &common {category: availability, window: 5m, compare: above, severity: MEDIUM, level: 1}\n"
    )
    rule = "  - {<<: *common, id: e, metric: error_rate, threshold: 0.01}\n"
    scratch = write(tmp_path, "scratch.yaml", f"{common}rules:\n{rule}")
    with pytest.raises(ConfigError, match="unknown key 'x-common'"):
        load_rules(scratch)  # the anchor's home must be a known key too: no silent scratch space
    text = (
        "version: 1\nrules:\n  - &r {id: e, category: availability, metric: error_rate, window: 5m,\n"
        "       compare: above, threshold: 0.01, severity: MEDIUM, level: 1}\n"
        "  - <<: *r\n    id: f\n  - <<: *r\n    id: g\n    compare: below\n"
    )
    source = write(tmp_path, "merge.yaml", text)
    with pytest.raises(ConfigError) as exc:
        load_rules(source)
    assert one_problem(exc).group("line", "path") == ("9", "rules[2].compare")
    source.write_text(text.replace("    compare: below\n", ""))
    assert [r.id for r in load_rules(source).rules] == ["e", "f", "g"]


def test_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    lines = ["version: 1", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    source = write(tmp_path, "bomb.yaml", "\n".join(lines) + "\nrules: []\n")
    with pytest.raises(ConfigError, match="unknown key 'a0'"):
        load_rules(source)


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    source = tmp_path / "latin1.yaml"
    source.write_bytes(b"version: 1\n# caf\xe9\nrules: []\n")
    with pytest.raises(ConfigError) as exc:
        load_rules(source)
    assert one_problem(exc).group("line", "path") == ("2", "(file)")


# --- several files --------------------------------------------------------------------------------

RULE_A = (
    "  - {id: a, category: availability, metric: error_rate, window: 5m, compare: above, threshold: 0.01,\n"
    "     severity: MEDIUM, level: 1, inhibited_by: [b]}\n"
)
RULE_B = (
    "  - {id: b, category: availability, metric: silence, window: 1d, compare: silence, threshold: 30m,\n"
    "     severity: HIGH, level: 4}\n"
)

HEAD_A = "version: 1\ndefaults: {hold: 2m}\nmodels: {m1: {}}\nrules:\n"


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def test_directory_merges_sorted_files(tmp_path: Path) -> None:
    second = write(
        tmp_path, "20-b.yml", f"version: 1\nmodels:\n  m2: {{published_min_accuracy: 0.7}}\nrules:\n{RULE_B}"
    )
    first = write(tmp_path, "10-a.yaml", f"{HEAD_A}{RULE_A}")
    write(tmp_path, "notes.txt", "not rules")
    write(tmp_path, ".hidden.yaml", "garbage: [")
    ruleset = load_rules(tmp_path)
    assert [r.id for r in ruleset.rules] == ["a", "b"]
    assert ruleset.sources == (str(first), str(second))
    assert ruleset.sha256 == hashlib.sha256(first.read_bytes() + second.read_bytes()).hexdigest()
    assert ruleset.by_id("b").hold_s == 120  # defaults of one file apply to the rules of every file
    assert ruleset.models["m1"].published_min_accuracy is None
    assert ruleset.models["m2"].published_min_accuracy == 0.7


@pytest.mark.parametrize(
    ("second", "path", "message"),
    [
        (f"version: 1\nrules:\n{RULE_A}", "rules[0].id", "duplicate rule id 'a' (first defined at {a}:5)"),
        ("version: 1\ndefaults: {hold: 5m}\n", "defaults", "already defined at {a}:2"),
        (
            "version: 1\nmodels:\n  m1: {published_min_accuracy: 0.9}\n",
            "models.m1",
            "already defined at {a}:3",
        ),
    ],
    ids=["rule-id", "defaults", "model"],
)
def test_second_definition_across_files_names_both(
    tmp_path: Path, second: str, path: str, message: str
) -> None:
    a = write(tmp_path, "a.yaml", f"{HEAD_A}{RULE_A}{RULE_B}")
    b = write(tmp_path, "b.yaml", second)
    with pytest.raises(ConfigError) as exc:
        load_rules(tmp_path)
    got = one_problem(exc)
    assert (got["file"], got["path"]) == (str(b), path)
    assert message.format(a=a) in got["message"]


def test_fairness_in_two_files_is_refused_naming_both(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", "version: 1\nrules: []\nfairness:\n  protected: {sex: {}}\n")
    b = write(tmp_path, "b.yaml", "version: 1\nfairness: #<\n  proxies: {zip3: {}}\n")
    with pytest.raises(ConfigError) as exc:
        load_rules(tmp_path)
    got = one_problem(exc)
    assert (got["file"], got["path"], got["line"]) == (str(b), "fairness", "2")
    assert f"fairness is already defined at {a}:3; define it in one file only" in got["message"]


def test_access_policy_in_two_files_is_refused_naming_both(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", "version: 1\nrules: []\naccess_policy:\n  learning_period: 3d\n")
    b = write(tmp_path, "b.yaml", "version: 1\naccess_policy: #<\n  grants: []\n")
    with pytest.raises(ConfigError) as exc:
        load_rules(tmp_path)
    got = one_problem(exc)
    assert (got["file"], got["path"], got["line"]) == (str(b), "access_policy", "2")
    assert f"access_policy is already defined at {a}:3; define it in one file only" in got["message"]


def test_security_rules_may_use_the_access_policy_of_another_file(tmp_path: Path) -> None:
    write(tmp_path, "10-policy.yaml", "version: 1\naccess_policy:\n  learning_period: 3d\n")
    write(tmp_path, "20-rules.yaml", render(DENIED))
    ruleset = load_rules(tmp_path)
    assert ruleset.access_policy.learning_s == 3 * 86400
    assert ruleset.by_id("r").category == "security"


def test_bias_rules_may_use_the_fairness_section_of_another_file(tmp_path: Path) -> None:
    write(tmp_path, "10-fairness.yaml", "version: 1\nfairness:\n  proxies: {zip3: {proxy_for: race}}\n")
    write(tmp_path, "20-bias.yaml", "version: 1\nrules:\n" + BIAS_RULE + "     attributes: proxies}\n")
    ruleset = load_rules(tmp_path)
    assert ruleset.fairness.attributes(ruleset.by_id("d").attributes) == [("zip3", True)]
    assert ruleset.fairness.proxies["zip3"].proxy_for == "race"


def test_a_bad_file_refuses_the_whole_directory(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", f"version: 1\nrules:\n{RULE_A}{RULE_B}")
    bad = write(tmp_path, "b.yaml", "version: 1\nrules:\n  - {id: c, metric: nope}\n")
    with pytest.raises(ConfigError) as exc:
        load_rules(tmp_path)
    assert all(line.startswith(f"{bad}:3: rules[0].") for line in str(exc.value).split("\n"))


def test_an_unparsable_file_hides_no_rule_but_blames_only_itself(tmp_path: Path) -> None:
    # a.yaml's inhibited_by [b] names a rule of the broken file: that must not be called unknown.
    write(tmp_path, "a.yaml", f"version: 1\nrules:\n{RULE_A}")
    bad = write(tmp_path, "b.yaml", f"version: 1\nrules:\n{RULE_B}  - [\n")
    with pytest.raises(ConfigError) as exc:
        load_rules(tmp_path)
    assert str(exc.value).startswith(f"{bad}:") and "\n" not in str(exc.value)


@pytest.mark.parametrize("make", ["empty-dir", "missing"])
def test_nothing_to_load_is_refused(tmp_path: Path, make: str) -> None:
    target = tmp_path / "rules"
    if make == "empty-dir":
        write(target, "README.md", "no rules")
    with pytest.raises(ConfigError, match=re.escape(str(target))):
        load_rules(target)


# --- `monitor rules check` ------------------------------------------------------------------------


def test_check_command_summarises_a_good_load(tmp_path: Path) -> None:
    shutil.copy(DEFAULT, tmp_path / "default.yaml")
    code, text = check_command(tmp_path)
    assert code == 0
    assert "25 rules" in text
    counts = (("availability", 4), ("bias", 4), ("output_quality", 4), ("performance", 4), ("security", 9))
    for category, count in counts:
        assert re.search(rf"^\s+{category}\s+{count}$", text, re.M), text
    assert "\nfairness: protected age_band, sex; proxies zip3 (for race or ethnicity)\n" in text
    assert "\naccess policy: 5 grants; normal hours 07:00-20:00 mon-fri UTC; learning period 7d\n" in text
    assert f"sha256: {hashlib.sha256(DEFAULT.read_bytes()).hexdigest()}" in text


def test_check_command_reports_the_problems(tmp_path: Path) -> None:
    source = write(tmp_path, "x.yaml", "version: 1\nrules:\n  - {id: a}\n")
    code, text = check_command(source)
    assert code == 1
    lines = text.split("\n")
    assert all(PROBLEM.match(line) and line.startswith(f"{source}:3: rules[0].") for line in lines), text
    assert any("rules[0].metric: required key is missing" in line for line in lines)


def test_check_command_prints_the_warnings_after_the_summary(tmp_path: Path) -> None:
    text = render({**IMPACT, "test": "binomial", "fdr": "true"})
    source = write(tmp_path, "old.yaml", text)
    code, out = check_command(source)
    assert code == 0 and out.startswith(f"OK: 2 rules from {source}\n")
    assert out.split("\n")[-3:] == [
        "2 warnings (the rules load):",
        f"{source}:{line_of(text, 'test')}: rules[1].test: {BINOMIAL_WARNING}",
        f"{source}:{line_of(text, 'fdr')}: rules[1].fdr: {FDR_WARNING}",
    ]


def test_monitor_rules_check_prints_a_warning_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = render({**ERROR_RATE, "test": "binomial"})
    source = write(tmp_path, "old.yaml", text)
    assert main(["rules", "check", str(source)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    warning = f"{source}:{line_of(text, 'test')}: rules[1].test: {BINOMIAL_WARNING}"
    assert captured.out.endswith(f"\n1 warning (the rules load):\n{warning}\n")
