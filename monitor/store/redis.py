"""The Redis side of ingest and of reading windows back.

Writes: a batch is folded into one share per model, each applied by one script call (atomic, one
hash slot); each call goes out as soon as its share is folded, so Redis works while Python folds. A
share that reaches back into offsets already applied (a batch replayed after a crash or a rebalance)
is refused by the script as a whole; we then drop exactly the replayed events and send the rest, so
nothing is counted twice or lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from monitor.aggregates import joins
from monitor.aggregates.access import (
    ACCESS_VERSION,
    AccessClassifier,
    IngestRules,
    fold_access,
    fold_registry,
    model_key,
)
from monitor.aggregates.joins import DAY_S
from monitor.aggregates.predictions import (
    LATE_EDGES_S,
    MINUTE_S,
    Located,
    after_offsets,
    canonical,
    fold,
    hour_buckets,
    offset_ranges,
    recent_records,
    version_totals,
)
from monitor.events import LabelEvent
from monitor.exceptions import OffsetConflict, StoreError
from monitor.store.keys import HOUR, MINUTE, Keys, guard_field
from monitor.store.reads import StoreReads
from monitor.text import text

log = logging.getLogger(__name__)

Clock = Callable[[], float]
TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)
# A conflict means another writer applied part of a share; after this many rounds something is wrong.
MAX_CONFLICT_ROUNDS = 8
# Users seen / served are kept for the longest unserved-users window plus this (late events).
USERS_SLACK_S = 600
USERS_KEEP_DEFAULT_S = IngestRules.unserved_window_s + USERS_SLACK_S
# Unfavourable decisions are kept for a day and a bit: the longest bias window is 24 h.
IMPACT_TTL_S = 26 * 3600
# The kept unfavourable decisions are bounded by count and by their members' bytes: a member is
# about 70 bytes (shape id, request id, subject id), so 3,700 to 20,000 decisions a model.
IMPACT_SAMPLE_MAX_BYTES = 256 * 1024
SHAPES_KEY = 9  # the shapes hash's index in the prediction script's KEYS (predictions.lua)


def _load_script(name: str) -> str:
    lua = resources.files("monitor.store").joinpath("lua")
    return lua.joinpath("common.lua").read_text() + "\n" + lua.joinpath(f"{name}.lua").read_text()


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one batch did to Redis."""

    applied_events: int
    skipped_events: int  # already applied by an earlier delivery of the same offsets
    round_trips: int
    # What the scripts reported beyond the counts, by name: labels_matched, labels_waiting,
    # new_principal, new_source, tampered, integrity_checks.
    details: dict[str, int] = field(default_factory=dict)

    @property
    def labels_matched(self) -> int:
        """Labels counted against their prediction in this batch."""
        return self.details.get("labels_matched", 0)

    @property
    def labels_waiting(self) -> int:
        """Labels that arrived before their prediction."""
        return self.details.get("labels_waiting", 0)


@dataclass(slots=True)
class _Call:
    """One script call: the atomic step of one model's share."""

    script: AsyncScript
    keys: list[str]
    payload: bytes
    events: int
    reply: tuple[str, ...] = ()  # names of the numbers the script returns after its status


class RedisStore(StoreReads):
    """Aggregates in Redis: the batch write paths (predictions, labels) and simple reads."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        minute_ttl_s: int,
        hour_ttl_s: int,
        label_join_ttl_s: int = 7 * DAY_S,
        impact_sample_max: int = 20_000,
        impact_sample_max_bytes: int = IMPACT_SAMPLE_MAX_BYTES,
        clock: Clock = time.time,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.minute_ttl_s = minute_ttl_s
        self.hour_ttl_s = hour_ttl_s
        self.label_join_ttl_s = label_join_ttl_s
        self.impact_sample_max = impact_sample_max
        self.impact_sample_max_bytes = impact_sample_max_bytes
        self.clock = clock
        self._predictions = redis.register_script(_load_script("predictions"))
        self._labels = redis.register_script(_load_script("labels"))
        self._access = redis.register_script(_load_script("access"))
        self._registry = redis.register_script(_load_script("registry"))
        self.access_policy: AccessClassifier | None = None  # from `configure`
        self.follow_s = IngestRules.follow_s
        self.recent_access_max = 10_000
        self.recent_events_max = 200  # raw prediction events kept per model for evidence
        # Users are kept as long as the longest `unserved_users` window reads back (and a bit
        # for events that arrive late); `configure` takes it from the rules.
        self.users_keep_s = USERS_KEEP_DEFAULT_S

    def configure(self, ingest: IngestRules) -> None:
        """Take what ingest needs of the rules: the access policy, how long after a new-source login
        a privileged action counts, and how long users are kept for the unserved-users windows."""
        self.access_policy = ingest.policy
        self.follow_s = ingest.follow_s
        self.users_keep_s = ingest.unserved_window_s + USERS_SLACK_S

    async def apply_predictions(self, topic: str, located: Sequence[Located]) -> ApplyResult:
        """Add a batch of predictions to their models' buckets; at most once per (model, offset)."""
        return await self._apply_guarded(topic, located, self._prediction_call, index=self.keys.models())

    async def apply_labels(self, topic: str, located: Sequence[Located]) -> ApplyResult:
        """Join a batch of labels to their predictions; at most once per (model, offset)."""
        return await self._apply_guarded(topic, located, self._label_call)

    async def apply_access(self, topic: str, located: Sequence[Located]) -> ApplyResult:
        """Count a batch of access-log events (classified by the access policy); at most once."""
        return await self._apply_guarded(
            topic, located, self._access_call, index=self.keys.access_models(), model_of=model_key
        )

    async def apply_registry(self, topic: str, located: Sequence[Located]) -> ApplyResult:
        """Record approvals and check every artifact write and deployment against them; at most once."""
        return await self._apply_guarded(topic, located, self._registry_call, index=self.keys.access_models())

    async def _apply_guarded(
        self,
        topic: str,
        located: Sequence[Located],
        build: Callable[[str, str, list[Located]], _Call],
        *,
        index: str | None = None,
        model_of: Callable[[Any], str] = lambda event: str(event.model_id),
    ) -> ApplyResult:
        pending: dict[str, list[Located]] = {}
        for item in located:
            pending.setdefault(model_of(item.event), []).append(item)
        applied = skipped = rounds = 0
        details: Counter[str] = Counter()
        while pending:
            if rounds == MAX_CONFLICT_ROUNDS:
                raise OffsetConflict(f"shares of {sorted(pending)} kept conflicting")
            rounds += 1
            calls, replies = await self._send(topic, pending, build, index)
            retry: dict[str, list[Located]] = {}
            for model_id, reply in zip(calls, replies, strict=True):
                status, *rest = reply
                if int(status) == 0:
                    applied += calls[model_id].events
                    details.update(dict(zip(calls[model_id].reply, map(int, rest), strict=False)))
                    continue
                fresh = after_offsets(pending[model_id], _stored_offsets(rest))
                skipped += len(pending[model_id]) - len(fresh)
                if fresh:
                    retry[model_id] = fresh
            pending = retry
        return ApplyResult(applied, skipped, rounds, dict(details))

    async def _send(
        self,
        topic: str,
        pending: dict[str, list[Located]],
        build: Callable[[str, str, list[Located]], _Call],
        index: str | None,
    ) -> tuple[dict[str, _Call], list[list[bytes]]]:
        """Build each model's call and send it at once, so Redis runs one model's script while
        the next model's share is folded here; the shares touch disjoint keys, so their order
        does not matter. Returns once every call has answered (or raises the first error)."""
        writes: list[asyncio.Future[Any]] = []
        if index is not None:  # a cross-slot index, written beside the scripts
            writes.append(asyncio.ensure_future(self.redis.sadd(index, *pending)))
        calls: dict[str, _Call] = {}
        for model_id, items in pending.items():
            call = calls[model_id] = build(topic, model_id, items)
            writes.append(asyncio.ensure_future(call.script(keys=call.keys, args=[call.payload])))
            await asyncio.sleep(0)  # let the call go out before folding the next share
        results = await asyncio.gather(*writes, return_exceptions=True)
        replies: list[list[bytes]] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result  # nothing is lost: the guard makes the whole batch safe to retry
            replies.append(result if isinstance(result, list) else [])
        return calls, replies[0 if index is None else 1 :]

    def _common(self, topic: str, model_id: str, offsets: dict[int, tuple[int, int]]) -> dict[str, object]:
        """What every script's payload starts with: the share's offsets per partition (the replay
        guard), where the model's keys live, and the clock and TTLs."""
        return {
            "guard": [
                [guard_field(topic, partition), low, high]
                for partition, (low, high) in sorted(offsets.items())
            ],
            # The keys the scripts find only in Redis (a label's prediction, a new principal's
            # buckets) are named by these patterns: keys.py stays the one place key shapes live.
            "minute_key": self.keys.bucket_pattern(model_id, MINUTE),
            "hour_key": self.keys.bucket_pattern(model_id, HOUR),
            "now": int(self.clock()),
            "minute_ttl": self.minute_ttl_s,
            "hour_ttl": self.hour_ttl_s,
            "ttl_s": self.hour_ttl_s,
            "late_edges": list(LATE_EDGES_S),  # the label join's lateness tiers (aggregates.predictions)
        }

    def _totals_expire_at(self) -> int:
        """The expiry a write gives a model's totals hash, whether predictions or labels wrote it:
        the hour TTL past the next minute (never in the past), so an idle model's totals go."""
        return int(self.clock()) + MINUTE_S + self.hour_ttl_s

    def _shapes_expire_at(self) -> int:
        """The shapes hash outlives every join record and kept decision that names one of its shapes."""
        return int(self.clock()) + 2 * DAY_S + self.label_join_ttl_s

    def _buckets(
        self, model_id: str, minutes: Mapping[tuple[str, int], Counter[str]], keys: list[str]
    ) -> list[list[object]]:
        """A share's bucket writes, as the scripts' `apply_buckets` takes them: each minute bucket
        and each hour bucket it rolls up into, by its index in KEYS (appended to `keys`), with its
        expiry (never in the past) and its non-zero increments."""
        floor = int(self.clock()) + MINUTE_S
        buckets: list[list[object]] = []
        for resolution, counters, ttl_s in (
            (MINUTE, minutes, self.minute_ttl_s),
            (HOUR, hour_buckets(minutes), self.hour_ttl_s),
        ):
            for (version, start_s), counts in counters.items():
                flat = _flatten(counts)
                if flat:  # an access minute may count only what the script decides (new principals)
                    keys.append(self.keys.bucket(model_id, version, resolution, start_s))
                    buckets.append([len(keys), max(start_s + ttl_s, floor), flat])  # Lua counts from 1
        return buckets

    def _prediction_call(self, topic: str, model_id: str, located: list[Located]) -> _Call:
        share = fold(located)[model_id]
        k = self.keys
        keys = [
            k.offsets(model_id),
            k.meta(model_id),
            k.versions(model_id),
            k.waiting_labels(model_id),
            k.waiting_until(model_id),
            k.first_seen(model_id),
            k.unfavourable(model_id),
            k.recent_predictions(model_id),
            k.shapes(model_id),
            k.unfavourable_bytes(model_id),
        ]

        def index(key: str) -> int:
            keys.append(key)
            return len(keys)  # Lua indexes KEYS from 1

        floor = int(self.clock()) + MINUTE_S  # never hand Redis an expiry in the past
        buckets = self._buckets(model_id, share.minutes, keys)
        # The version totals ride along as one more "bucket" (a hash of increments with an expiry):
        # applied in the same atomic step as the buckets, at most once. The key is declared even
        # without increments: a waiting label matched here is counted in it too.
        totals_key, totals_expire_at = index(k.totals(model_id)), self._totals_expire_at()
        totals = version_totals(share, self.clock())
        if totals:
            buckets.append([totals_key, totals_expire_at, _flatten(totals)])
        users: list[list[object]] = []
        for key_of, by_version in ((k.users_seen, share.users), (k.users_served, share.served)):
            for version, newest_ts in by_version.items():
                flat = [part for user, ts in newest_ts.items() for part in (repr(ts), user)]
                users.append([index(key_of(model_id, version)), flat])
        by_hash: dict[tuple[int, int], list[str]] = {}
        for digest, (minute, slot, record) in share.joins.items():
            by_hash.setdefault((minute - minute % DAY_S, slot), []).extend((digest, record))
        joins = [
            [index(k.join(model_id, day, slot)), max(day + DAY_S + self.label_join_ttl_s, floor), day, items]
            for (day, slot), items in by_hash.items()
        ]
        newest: dict[str, int] = {}
        first: dict[str, int] = {}
        for version, start_s in share.minutes:
            newest[version] = max(newest.get(version, 0), start_s)
            first[version] = min(first.get(version, start_s), start_s)
        payload = {
            **self._common(topic, model_id, share.offsets),
            "last_event_s": repr(share.last_event_s),
            "events": share.events,
            "versions": newest,
            "first_minutes": first,
            "buckets": buckets,
            "users": users,
            "users_since": str(int(self.clock() - self.users_keep_s)),
            "users_ttl": int(self.users_keep_s) + 3600,
            "joins": joins,
            "shapes": [part for item in share.shapes.items() for part in item],
            "shapes_key": SHAPES_KEY,
            "shapes_expire_at": self._shapes_expire_at(),
            "totals_key": totals_key,
            "totals_expire_at": totals_expire_at,
            "unfavourable": [part for ts, member in share.unfavourable for part in (repr(ts), member)],
            "unfavourable_max": self.impact_sample_max,
            "unfavourable_max_bytes": self.impact_sample_max_bytes,
            "recent": recent_records(share, self.recent_events_max),
            "recent_max": self.recent_events_max,
            "unfavourable_ttl": IMPACT_TTL_S,
        }
        return _Call(self._predictions, keys, orjson.dumps(payload), share.events, ("labels_matched",))

    def _access_call(self, topic: str, model_id: str, located: list[Located]) -> _Call:
        policy = self.access_policy
        if policy is None:
            raise StoreError("access events need the rules' access policy: call RedisStore.configure first")
        share = fold_access(located, policy, topic)[model_id]
        k = self.keys
        keys = [
            k.offsets(model_id),
            k.access_facts(model_id),
            k.known_access(model_id),
            k.known_sources(model_id),
            k.new_source_logins(model_id),
            k.recent_access(model_id),
        ]
        minutes = {(ACCESS_VERSION, start_s): counts for start_s, counts in share.minutes.items()}
        buckets = self._buckets(model_id, minutes, keys)
        payload = {
            **self._common(topic, model_id, offset_ranges(located)),
            "version": ACCESS_VERSION,
            "learning_s": policy.learning_s,
            "follow_s": self.follow_s,
            "first_ts": min(item.event.epoch_s for item in located),
            "buckets": buckets,
            "stateful": sorted(share.stateful, key=lambda e: e[0]),  # type: ignore[arg-type,return-value]
            "recent": share.recent,
            "recent_max": self.recent_access_max,
        }
        return _Call(self._access, keys, orjson.dumps(payload), share.events, ("new_principal", "new_source"))

    def _registry_call(self, topic: str, model_id: str, located: list[Located]) -> _Call:
        share = fold_registry(located)[model_id]
        k = self.keys
        keys = [k.offsets(model_id), k.approvals(model_id), k.tampered(model_id), k.deployments(model_id)]
        payload = {
            **self._common(topic, model_id, offset_ranges(located)),
            "version": ACCESS_VERSION,
            "events": share.events,
        }
        return _Call(
            self._registry, keys, orjson.dumps(payload), len(share.events), ("tampered", "integrity_checks")
        )

    def _label_call(self, topic: str, model_id: str, located: list[Located]) -> _Call:
        k = self.keys
        labels = [
            [*joins.request_digest(item.event.request_id), label_record(item.event)] for item in located
        ]
        label_days = [int(item.event.epoch_s) // DAY_S * DAY_S for item in located]
        look_back = -(-self.label_join_ttl_s // DAY_S) + 1
        days = range(max(label_days) + DAY_S, min(label_days) - (look_back + 1) * DAY_S, -DAY_S)
        now = int(self.clock())
        payload = {
            **self._common(topic, model_id, offset_ranges(located)),
            "labels": labels,
            "days": list(days),
            "join_key": k.join_pattern(model_id),
            "wait_until": now + self.label_join_ttl_s,
            "totals_key": 4,  # a matched label is counted in the totals too, late or not
            "totals_expire_at": self._totals_expire_at(),
            "shapes_key": 5,
        }
        keys = [
            k.offsets(model_id),
            k.waiting_labels(model_id),
            k.waiting_until(model_id),
            k.totals(model_id),
            k.shapes(model_id),
        ]
        return _Call(
            self._labels,
            keys,
            orjson.dumps(payload),
            len(located),
            ("labels_matched", "labels_waiting", "labels_expired"),
        )


def _flatten(counts: Counter[str]) -> list[object]:
    flat: list[object] = []
    for name, value in counts.items():
        if value:
            flat.append(name)
            flat.append(value)
    return flat


def label_record(event: LabelEvent) -> str:
    """What the join needs of a label: whether it is favourable and its value (canonical text)."""
    return joins.label_record(event.positive, canonical(event.label))


def _stored_offsets(reply: list[bytes]) -> dict[int, int]:
    stored: dict[int, int] = {}
    for field_name, offset in zip(reply[::2], reply[1::2], strict=True):
        partition = int(text(field_name).rsplit("|", 1)[1])
        stored[partition] = int(offset)
    return stored
