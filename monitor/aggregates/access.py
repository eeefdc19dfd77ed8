"""Folds access-log and model-registry batches into per-model shares (pure, no I/O).

Access counters live in the same minute/hour bucket layout as predictions, under the pseudo-version
`ACCESS_VERSION`, so windows, roll-ups and TTLs work unchanged. What depends on history (is this
principal new to this data, is this source new to this principal) cannot be decided here: those
events go to the script as `stateful` records and Redis decides, atomically, with the rest.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from monitor.aggregates.predictions import MINUTE_S, SEP, Located, escape
from monitor.events import AccessEvent, RegistryEvent

ACCESS_VERSION = "!access"  # a model_version no producer sends: the access counters' bucket name
UNSCOPED = "_unscoped"  # the model key of access events that name no model

# Bucket-field kinds of the security counters ("<kind>|<key>"), read back by the security rules.
VIOLATIONS = "sv"
OFF_HOURS = "soh"
NEW_PRINCIPAL = "snp"  # written by the script (needs history)
TRAINING_BYTES = "sby"
DENIED = "sdn"
NEW_SOURCE_PRIVILEGED = "snsp"  # written by the script (needs history)
QUERIES = "sq"
TAMPERED = "sta"  # registry: "<version>|<sha256>" written or deployed without approval


def security_field(kind: str, *parts: str) -> str:
    """The bucket-hash field of one security counter."""
    return SEP.join([kind, *(escape(p) for p in parts)])


def model_key(event: AccessEvent) -> str:
    """Access events are kept with their model; those that name none share one key."""
    return event.model_id or UNSCOPED


@dataclass(slots=True)
class AccessShare:
    """One model's part of an access-log batch."""

    model_key: str
    minutes: dict[int, Counter[str]] = field(default_factory=dict)
    # [ts, minute, principal (escaped), action, resource_type, resource, source_ip, privileged 0/1]
    stateful: list[list[object]] = field(default_factory=list)
    recent: list[str] = field(default_factory=list)  # JSON access records kept for evidence
    events: int = 0


class HoursOfUse(Protocol):
    """The hours of normal use of an access policy."""

    def contains(self, epoch_s: float) -> bool:
        """Whether the moment (epoch seconds) lies inside them."""


class AccessClassifier(Protocol):
    """What the access fold asks of an access policy (the rules' `AccessPolicy` is one)."""

    @property
    def normal_hours(self) -> HoursOfUse:
        """The hours of normal use."""

    @property
    def privileged_actions(self) -> frozenset[str]:
        """Actions that count as privileged (after a login from a new source)."""

    @property
    def learning_s(self) -> int:
        """How much access history a model needs before anyone counts as new to it."""

    def allows(self, principal: str, action: str, resource_type: str, model_id: str | None) -> bool:
        """Whether the policy allows the access."""

    def any_hours(self, principal: str, action: str, resource_type: str, model_id: str | None) -> bool:
        """Whether a grant exempts the access from the hours of normal use."""


@dataclass(frozen=True)
class IngestRules:
    """What ingest takes from the rules: the access policy, how long after a login from a new
    source a privileged action still counts, and how far back the unserved-users windows read."""

    policy: AccessClassifier
    follow_s: int = 3600
    unserved_window_s: int = 3600


def fold_access(located: Iterable[Located], policy: AccessClassifier, topic: str) -> dict[str, AccessShare]:
    """Classify each access against the policy and count it; keep what needs history for Redis."""
    shares: dict[str, AccessShare] = {}
    for item in located:
        e: AccessEvent = item.event
        key = model_key(e)
        share = shares.get(key)
        if share is None:
            share = shares[key] = AccessShare(key)
        ts = e.epoch_s
        minute = int(ts) - int(ts) % MINUTE_S
        counts = share.minutes.setdefault(minute, Counter())
        if not policy.allows(e.principal, e.action, e.resource_type, e.model_id):
            counts[security_field(VIOLATIONS, e.principal)] += 1
        if e.outcome == "denied":
            counts[security_field(DENIED, e.principal)] += 1
        if e.resource_type == "training_data" and e.outcome == "allowed":
            if not policy.normal_hours.contains(ts) and not policy.any_hours(
                e.principal, e.action, e.resource_type, e.model_id
            ):
                counts[security_field(OFF_HOURS, e.principal)] += 1
            if e.bytes:
                counts[security_field(TRAINING_BYTES, e.principal)] += e.bytes
        if e.action == "query":
            counts[security_field(QUERIES, e.api_key_id or e.principal)] += 1
        privileged = e.action in policy.privileged_actions and e.outcome == "allowed"
        if e.resource_type == "training_data" or e.action == "login" or privileged:
            share.stateful.append(
                [
                    ts,
                    minute,
                    escape(e.principal),
                    e.action,
                    e.resource_type,
                    e.resource,
                    e.source_ip or "",
                    int(privileged),
                ]
            )
        share.recent.append(
            orjson.dumps(
                {
                    "ts": ts,
                    "principal": e.principal,
                    "action": e.action,
                    "resource_type": e.resource_type,
                    "resource": e.resource,
                    "outcome": e.outcome,
                    "source_ip": e.source_ip,
                    "bytes": e.bytes,
                    "api_key_id": e.api_key_id,
                    "topic": topic,
                    "partition": item.partition,
                    "offset": item.offset,
                }
            ).decode()
        )
        share.events += 1
    return shares


@dataclass(slots=True)
class RegistryShare:
    """One model's part of a model-registry batch, in event order."""

    model_id: str
    # [event, version, sha256 (lower case), ts, minute, actor, approval_ref, offset, escaped version]
    events: list[list[object]] = field(default_factory=list)


def fold_registry(located: Iterable[Located]) -> dict[str, RegistryShare]:
    """Group registry events by model, oldest first (an approval must precede its deployment)."""
    shares: dict[str, RegistryShare] = {}
    for item in sorted(located, key=lambda i: (i.partition, i.offset)):
        e: RegistryEvent = item.event
        ts = e.epoch_s
        shares.setdefault(e.model_id, RegistryShare(e.model_id)).events.append(
            [
                e.event,
                e.version,
                e.sha256.lower(),
                ts,
                int(ts) - int(ts) % MINUTE_S,
                e.actor,
                e.approval_ref or "",
                item.offset,
                escape(e.version),
            ]
        )
    return shares
