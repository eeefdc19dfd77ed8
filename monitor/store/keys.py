"""Every Redis key the monitor writes (docs/redis.md): the one place key shapes live.

The Lua scripts build no key names of their own: they get the keys they touch as KEYS, and the
keys that depend on what Redis holds as the format patterns below (`bucket_pattern`, `join_pattern`).

All per-model keys carry the `{model_id}` hash tag, so one model's keys share a hash slot: each
atomic step touches one slot and the layout works unchanged on Redis Cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

MINUTE = "m"
HOUR = "h"


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix (tests and tenants use their own prefix)."""

    prefix: str

    def models(self) -> str:
        """Set of every model id that sent a prediction (cross-slot index, written outside the atomic
        step)."""
        return f"{self.prefix}:models"

    def incident_model_ids(self) -> str:
        """Set of every model id that has had an incident (cross-slot index)."""
        return f"{self.prefix}:incident_model_ids"

    def controlled_models(self) -> str:
        """Set of every model id with escalation state: a control message or an override (cross-slot
        index)."""
        return f"{self.prefix}:controlled_models"

    def model(self, model_id: str) -> str:
        """The common head of one model's keys, with its hash tag."""
        return f"{self.prefix}:{{{model_id}}}"

    def offsets(self, model_id: str) -> str:
        """Hash "<topic>|<partition>" -> last offset applied for this model (the replay guard)."""
        return f"{self.model(model_id)}:offsets"

    def meta(self, model_id: str) -> str:
        """Hash of model facts: last_event_s, events."""
        return f"{self.model(model_id)}:meta"

    def totals(self, model_id: str) -> str:
        """Hash "<escaped version>|<bucket field>" -> count since the version's first event (never
        decreases: Prometheus counters, detector input): every field the version's buckets count,
        the label join's too, and latus, summed latency in microseconds."""
        return f"{self.model(model_id)}:totals"

    def detectors(self, model_id: str) -> str:
        """String: the evaluator's detector state of the model's sequential rules and the totals it
        has absorbed (msgpack, see monitor.rules.detectors.DetectorSet.dump); rewritten every few
        seconds, with the totals' expiry."""
        return f"{self.model(model_id)}:detectors"

    def versions(self, model_id: str) -> str:
        """Hash version -> newest event time seen for it."""
        return f"{self.model(model_id)}:versions"

    def consumer_lag(self, topic: str) -> str:
        """Hash partition -> the owning worker's latest progress report on `topic` (JSON, see
        `monitor.aggregates.lag`); every worker refreshes its own partitions' fields every second."""
        return f"{self.prefix}:lag:{topic}"

    def applied(self, topic: str) -> str:
        """Hash partition -> the last offset of `topic` whose batch is wholly in Redis, raised after
        the batch's model steps: after a crash that lost Redis's last writes, ingest reads the offsets
        after it from Kafka again (monitor/agents/recovery.py)."""
        return f"{self.prefix}:applied:{topic}"

    def access_models(self) -> str:
        """Set of every model key with access-log or registry events (cross-slot index)."""
        return f"{self.prefix}:access_models"

    def access_facts(self, model_id: str) -> str:
        """Hash of access facts: since (first access event time, for the learning period)."""
        return f"{self.model(model_id)}:access:meta"

    def known_access(self, model_id: str) -> str:
        """Hash "<principal>|<resource>" -> first access: who is known to which data."""
        return f"{self.model(model_id)}:access:known"

    def known_sources(self, model_id: str) -> str:
        """Hash "<principal>|<source_ip>" -> first login: who is known to log in from where."""
        return f"{self.model(model_id)}:access:sources"

    def new_source_logins(self, model_id: str) -> str:
        """Hash principal -> time of its last login from a new source."""
        return f"{self.model(model_id)}:access:newsrc"

    def recent_access(self, model_id: str) -> str:
        """List of recent access records (JSON, newest first, bounded): a security incident's evidence."""
        return f"{self.model(model_id)}:access:recent"

    def approvals(self, model_id: str) -> str:
        """Hash "<version>|<sha256>" -> approval (actor, reference, time); kept without expiry."""
        return f"{self.model(model_id)}:registry:approved"

    def tampered(self, model_id: str) -> str:
        """Hash "<version>|<sha256>" -> the unapproved artifact write or deployment seen."""
        return f"{self.model(model_id)}:registry:tampered"

    def deployments(self, model_id: str) -> str:
        """List of deployments, newest first (JSON: version, sha256, ts, approved)."""
        return f"{self.model(model_id)}:registry:deployments"

    def recent_predictions(self, model_id: str) -> str:
        """List of the model's newest prediction events (JSON, newest first, bounded): evidence."""
        return f"{self.model(model_id)}:recent"

    def unfavourable(self, model_id: str) -> str:
        """Sorted set of recent unfavourable decisions by event time (bounded; bias impact)."""
        return f"{self.model(model_id)}:unfav"

    def unfavourable_bytes(self, model_id: str) -> str:
        """String: the summed bytes of the members of `unfavourable` (its second bound), same TTL."""
        return f"{self.model(model_id)}:unfav:bytes"

    def first_seen(self, model_id: str) -> str:
        """Hash version -> first minute it was seen (orders versions: predecessor, successor)."""
        return f"{self.model(model_id)}:versions:first"

    def reference(self, model_id: str, version: str) -> str:
        """Hash of a version's reference counters, frozen when its successor was first seen."""
        return f"{self.model(model_id)}:ref:{version}"

    def control(self, model_id: str) -> str:
        """Hash of the model's escalation state: seq, level, override, last control message."""
        return f"{self.model(model_id)}:control"

    def open_incidents(self, model_id: str) -> str:
        """Hash dedup key "<rule>|<group>" -> id of the open incident."""
        return f"{self.model(model_id)}:incidents:open"

    def incident(self, model_id: str, incident_id: str) -> str:
        """String: one incident as JSON."""
        return f"{self.model(model_id)}:incident:{incident_id}"

    def quiet(self, model_id: str) -> str:
        """Hash "<rule>|<group>" -> until when a person's resolution keeps it from reopening."""
        return f"{self.model(model_id)}:incidents:quiet"

    def commands(self, model_id: str) -> str:
        """List of queued people's commands for the model (JSON), oldest first."""
        return f"{self.model(model_id)}:commands"

    def command_result(self, command_id: str) -> str:
        """String: what became of a command (kept an hour)."""
        return f"{self.prefix}:command:{command_id}"

    def audit(self) -> str:
        """List of audit entries (JSON, hash-chained), oldest first."""
        return f"{self.prefix}:audit"

    def audit_anchored(self) -> str:
        """String: the highest audit seq acknowledged by the audit topic (what is re-sent after a failed
        publish starts above it)."""
        return f"{self.prefix}:audit_anchored"

    def incident_models(self) -> str:
        """Hash incident id -> model id (finds an incident from its id alone)."""
        return f"{self.prefix}:incident_models"

    def incident_index(self) -> str:
        """Sorted set "<model_id>|<incident id>" by opening time (cross-slot listing index)."""
        return f"{self.prefix}:incidents"

    def bucket(self, model_id: str, version: str, resolution: str, start_s: int) -> str:
        """Hash of additive counters of one version over one minute or hour bucket."""
        # Spelled out rather than `bucket_pattern(...) % ...`: this is on the windows' read path,
        # where the pattern would double the cost; tests/unit/test_keys.py holds the two equal.
        return f"{self.model(model_id)}:{resolution}:{version}:{start_s}"

    def bucket_pattern(self, model_id: str, resolution: str) -> str:
        """`bucket` with the version and start left as `%s` and `%d`: the scripts fill them in with
        string.format for the buckets they find only in Redis (a label's prediction, a new principal)."""
        return f"{_literal(self.model(model_id))}:{resolution}:%s:%d"

    def users_seen(self, model_id: str, version: str) -> str:
        """Sorted set user -> event time of the user's newest request to the version (any outcome);
        trimmed to the longest users window, so it holds the users who asked recently."""
        return f"{self.model(model_id)}:users:seen:{version}"

    def users_served(self, model_id: str, version: str) -> str:
        """Sorted set user -> event time of the user's newest successful prediction from the
        version; trimmed like `users_seen`. A user is unserved in a window who is in `users_seen`
        within it but not in this set within it."""
        return f"{self.model(model_id)}:users:served:{version}"

    def join(self, model_id: str, day_s: int, slot: int) -> str:
        """Hash request digest -> compact join record (monitor.aggregates.joins) of the predictions of
        one UTC day still awaiting a label, one of JOIN_SLOTS hashes of the day picked by the digest."""
        return self.join_pattern(model_id) % (day_s, slot)

    def join_pattern(self, model_id: str) -> str:
        """`join` with the day and slot left as `%d`, for the label script (it looks back over days)."""
        return f"{_literal(self.model(model_id))}:join:%d:%d"

    def shapes(self, model_id: str) -> str:
        """Hash shape id -> JSON [version, [group field prefixes]]: what the join records and the kept
        unfavourable decisions name by id instead of repeating it."""
        return f"{self.model(model_id)}:shapes"

    def waiting_labels(self, model_id: str) -> str:
        """Hash request digest -> label record, for labels that arrived before their prediction."""
        return f"{self.model(model_id)}:lblwait"

    def waiting_until(self, model_id: str) -> str:
        """Sorted set request digest -> time a waiting label is given up."""
        return f"{self.model(model_id)}:lblwait:until"


def guard_field(topic: str, partition: int) -> str:
    """The offsets-hash field of one source partition."""
    return f"{topic}|{partition}"


def _literal(part: str) -> str:
    """A key part as it must appear in a format pattern (Python's % and Lua's string.format)."""
    return part.replace("%", "%%")
