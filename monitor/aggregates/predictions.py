"""Folds a consumed batch of prediction events into one additive share per model (pure, no I/O).

A share is what one atomic Redis step applies: counter increments per (version, minute bucket), the
range of offsets it covers per source partition (the replay guard), and the newest event time.
Field names inside a bucket hash are part of the Redis layout (see `monitor.store.keys`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple

import msgspec
import numpy as np
import orjson

from monitor.aggregates import histogram
from monitor.aggregates.joins import prediction_record, request_digest, shape_id
from monitor.events import PredictionEvent

MINUTE_S = 60
HOUR_S = 3600

# Bucket-hash fields. Group fields are "g|<attr>|<value>|<stat>", flags "f|<flag>", latency "lat|<i>".
COUNT = "n"
ERRORS = "err"
# A decision is a request that was answered (no `error`) and says whether the outcome was
# favourable (`positive` present): an errored request is no decision, even when it carries
# `positive`, just as it is never joined to a label (so accuracy and false-negative rates leave it
# out too). One population for approval rates, accuracy and FNR.
DECISIONS = "dec"
FAVOURABLE = "pos"
LATENCY_COUNT = "latn"
# Written by the label join (store/lua/common.lua apply_label) into the prediction's own buckets and
# the model's totals:
LABELLED = "lab"
CORRECT = "cor"
ACTUAL_POSITIVE = "apos"  # labelled favourable (label `positive` true)
FALSE_NEGATIVE = "fn"  # labelled favourable, predicted unfavourable
SEP = "|"


@lru_cache(maxsize=65_536)
def escape(part: str) -> str:
    """Make a group attribute or value safe to embed between `|` separators (reversible)."""
    return part.replace("%", "%25").replace(SEP, "%7C")


def unescape(part: str) -> str:
    """Inverse of `escape`."""
    return part.replace("%7C", SEP).replace("%25", "%")


def group_prefix(attr: str, value: str) -> str:
    """The common head of one group value's bucket-hash fields (the label join appends the stat)."""
    return f"g{SEP}{escape(attr)}{SEP}{escape(value)}{SEP}"


def group_field(attr: str, value: str, stat: str) -> str:
    """The bucket-hash field of one statistic of one group value."""
    return group_prefix(attr, value) + stat


def canonical(value: object) -> str:
    """A JSON scalar as text that compares equal across encodings (1, 1.0 → "1"; true → "true")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if value is None:
        return "null"
    if isinstance(value, str):
        return "s:" + value
    return repr(value)


def flag_field(flag: str) -> str:
    """The bucket-hash field counting one output-quality flag."""
    return f"f{SEP}{escape(flag)}"


def latency_field(index: int) -> str:
    """The bucket-hash field of one latency histogram bucket."""
    return f"lat{SEP}{index}"


def group_value(value: object) -> str:
    """Group values arrive as JSON scalars; aggregates key them by their text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class Located(NamedTuple):
    """A decoded event with where it came from (the partition and offset feed the replay guard)."""

    event: Any
    partition: int
    offset: int


@dataclass(frozen=True, slots=True, eq=False)
class GroupShape:
    """What one combination of group values (say sex=F, age_band=b) adds to a bucket, built once.

    Events repeat a few thousand combinations; the fold looks the combination up instead of
    building its field names for every event, and adds one event with a single `Counter.update`.
    """

    prefixes: tuple[str, ...]  # one per group value; the label join appends its stats to them
    # (positive, failed) -> every field one such event increments by one
    fields: dict[tuple[bool | None, bool], tuple[str, ...]]
    plain: bool  # every group value is a string

    @classmethod
    def of(cls, items: tuple[tuple[str, object], ...]) -> GroupShape:
        """The shape of one combination of (attribute, value) pairs."""
        prefixes = tuple(group_prefix(attr, group_value(value)) for attr, value in items)
        fields: dict[tuple[bool | None, bool], tuple[str, ...]] = {}
        for positive in (None, False, True):
            for failed in (False, True):
                stats = [COUNT]
                if failed:
                    stats.append(ERRORS)
                if positive is not None and not failed:
                    stats.append(DECISIONS)
                    if positive:
                        stats.append(FAVOURABLE)
                fields[(positive, failed)] = (*stats, *(p + stat for stat in stats for p in prefixes))
        return cls(prefixes, fields, all(value.__class__ is str for _, value in items))


class _Shapes:
    """A bounded cache of group shapes, keyed by the attribute names followed by the values.

    True == 1 == 1.0 in Python, while they are different group values here, so a combination
    with a value that is not a string is keyed with the values' types too.
    """

    MAX = 65_536

    def __init__(self) -> None:
        self._cache: dict[tuple[object, ...], GroupShape] = {}

    def get(self, groups: dict[str, Any]) -> GroupShape:
        """The shape of an event's `groups`."""
        key = (*groups, *groups.values())  # unambiguous: as many names as values
        shape = self._cache.get(key)
        if shape is not None and shape.plain:
            return shape  # a plain key only equals a key of the same strings
        if not all(value.__class__ is str for value in groups.values()):
            key = (*key, *(value.__class__ for value in groups.values()))
            shape = self._cache.get(key)
        if shape is None:
            if len(self._cache) >= self.MAX:
                self._cache.clear()
            shape = self._cache[key] = GroupShape.of(tuple(groups.items()))
        return shape


_SHAPES = _Shapes()


@dataclass(slots=True)
class Share:
    """One model's part of a batch: what a single atomic Redis step adds."""

    model_id: str
    offsets: dict[int, tuple[int, int]] = field(default_factory=dict)  # partition -> (min, max)
    minutes: dict[tuple[str, int], Counter[str]] = field(default_factory=dict)
    # Who asked and who was served, for "unserved users": per version, user -> newest event time,
    # and user -> newest successful event time (see `monitor.aggregates.window.unserved`).
    users: dict[str, dict[str, float]] = field(default_factory=dict)
    served: dict[str, dict[str, float]] = field(default_factory=dict)
    # request digest -> (minute, slot, compact join record), see monitor.aggregates.joins
    joins: dict[str, tuple[int, int, str]] = field(default_factory=dict)
    shapes: dict[str, str] = field(default_factory=dict)  # shape id -> JSON [version, [prefixes]]
    # Unfavourable decisions, kept (bounded) so a bias incident can name who was affected:
    # (event time, JSON [shape id, request_id, subject_id])
    unfavourable: list[tuple[float, str]] = field(default_factory=list)
    recent: list[Located] = field(default_factory=list)  # the batch's events, newest kept as evidence
    last_event_s: float = 0.0
    latency_sum_ms: dict[str, float] = field(default_factory=dict)  # version -> summed latency_ms

    @property
    def events(self) -> int:
        """How many events the share holds."""
        return len(self.recent)

    def hours(self) -> dict[tuple[str, int], Counter[str]]:
        """The same increments rolled up into hour buckets (long windows read these)."""
        return hour_buckets(self.minutes)


def hour_buckets(minutes: Mapping[tuple[str, int], Counter[str]]) -> dict[tuple[str, int], Counter[str]]:
    """Minute buckets, keyed (version, minute start), rolled up into the hour buckets they fall in."""
    rolled: dict[tuple[str, int], Counter[str]] = {}
    for (version, minute), counts in minutes.items():
        rolled.setdefault((version, minute - minute % HOUR_S), Counter()).update(counts)
    return rolled


def fold(located: Iterable[Located]) -> dict[str, Share]:
    """Group a batch by model and sum each model's events into per-minute counters.

    This is the hot loop of ingest (see BENCHMARKS.md): per event, one cached shape lookup, one
    `Counter.update` of the fields it increments, and what the label join and evidence need.
    """
    shares: dict[str, Share] = {}
    latencies: dict[tuple[str, str, int], list[float]] = {}
    for item in located:
        event = item.event
        model_id = event.model_id
        share = shares.get(model_id)
        if share is None:
            share = shares[model_id] = Share(model_id)
        _widen(share.offsets, item.partition, item.offset)
        ts = event.epoch_s
        minute = int(ts) - int(ts) % MINUTE_S
        key = (event.model_version, minute)
        counts = share.minutes.get(key)
        if counts is None:
            counts = share.minutes[key] = Counter()
        shape = _SHAPES.get(event.groups)
        failed = event.failed
        counts.update(shape.fields[(event.positive, failed)])
        if event.flags:
            counts.update(flag_field(flag) for flag in event.flags)
        if event.latency_ms is not None:
            latencies.setdefault((model_id, *key), []).append(event.latency_ms)
        user = event.user_id
        if user:
            _newest(share.users, event.model_version, user, ts)
            if not failed:
                _newest(share.served, event.model_version, user, ts)
        if not failed:
            sid, body = shape_id(event.model_version, shape.prefixes)
            share.shapes[sid] = body
            digest, slot = request_digest(event.request_id)
            record = prediction_record(sid, minute, event.positive, canonical(event.prediction))
            share.joins[digest] = (minute, slot, record)
            if event.positive is False and shape.prefixes:
                share.unfavourable.append((ts, affected_record(event, sid)))
        if ts > share.last_event_s:
            share.last_event_s = ts
        share.recent.append(item)
    for (model_id, version, minute), values in latencies.items():
        counts = shares[model_id].minutes[(version, minute)]
        indices, per_index = np.unique(
            histogram.buckets_of(np.asarray(values, dtype=np.float64)), return_counts=True
        )
        for index, count in zip(indices.tolist(), per_index.tolist(), strict=True):
            counts[latency_field(index)] += count
        counts[LATENCY_COUNT] += len(values)
        sums = shares[model_id].latency_sum_ms
        sums[version] = sums.get(version, 0.0) + sum(values)
    return shares


def _newest(by_version: dict[str, dict[str, float]], version: str, user: str, ts: float) -> None:
    users = by_version.get(version)
    if users is None:
        users = by_version[version] = {}
    if users.get(user, -1.0) < ts:
        users[user] = ts


def offset_ranges(located: Iterable[Located]) -> dict[int, tuple[int, int]]:
    """The lowest and highest offset per source partition (what the replay guard checks)."""
    offsets: dict[int, tuple[int, int]] = {}
    for item in located:
        _widen(offsets, item.partition, item.offset)
    return offsets


def _widen(offsets: dict[int, tuple[int, int]], partition: int, offset: int) -> None:
    bounds = offsets.get(partition)
    if bounds is None:
        offsets[partition] = (offset, offset)
    elif not bounds[0] <= offset <= bounds[1]:
        offsets[partition] = (min(bounds[0], offset), max(bounds[1], offset))


def affected_record(event: PredictionEvent, shape: str) -> str:
    """Who got an unfavourable decision, and in which version and groups (its shape id, see
    monitor.aggregates.joins), for a bias incident's impact."""
    return orjson.dumps((shape, event.request_id, event.subject_id)).decode()


class _Recent(msgspec.Struct):
    """An evidence record: a raw event and where it came from."""

    partition: int
    offset: int
    event: Any


# An evidence record larger than this keeps only where its event is in Kafka: it bounds the
# recent-events list by bytes (recent_events_max records of at most this) as well as by count.
RECENT_RECORD_MAX_BYTES = 8192


def recent_records(share: Share, keep: int) -> list[str]:
    """The share's newest `keep` events as JSON evidence records (with where they came from)."""
    records = []
    for item in share.recent[-keep:]:
        record = msgspec.json.encode(_Recent(item.partition, item.offset, item.event))
        if len(record) > RECENT_RECORD_MAX_BYTES:
            record = msgspec.json.encode(_Recent(item.partition, item.offset, {"omitted_bytes": len(record)}))
        records.append(record.decode())
    return records


def after_offsets(located: Sequence[Located], applied: dict[int, int]) -> list[Located]:
    """The events not yet applied, given the last applied offset per partition (replay filter)."""
    return [item for item in located if item.offset > applied.get(item.partition, -1)]


LATENCY_SUM_US = "latus"
LATENCY_PREFIX = "lat" + SEP  # the latency bucket fields, "lat|<index>"
# Lateness tiers of the totals: an event (or a label, by its prediction's minute) that reaches
# ingest more than 5 minutes after its minute ended is also counted under "~<tier>|<field>",
# tier i when its age is within (LATE_EDGES_S[i - 1], LATE_EDGES_S[i]] (the last tier: older).
# A detector whose rule watches a window W leaves out the tiers older than W: a label for a
# prediction a week old does not belong to a 24-hour rule (monitor.rules.questions).
LATE_EDGES_S = (300, 1800, 3600, 86_400, 7 * 86_400)
LATE_PREFIX = "~"


def late_tier(age_s: float) -> int:
    """The lateness tier of an event `age_s` old on arrival (0: on time, no tier field)."""
    for tier, edge in enumerate(LATE_EDGES_S):
        if age_s <= edge:
            return tier
    return len(LATE_EDGES_S)


def late_field(tier: int, name: str) -> str:
    """The totals field counting `name` for the events of lateness tier `tier` (≥ 1)."""
    return f"{LATE_PREFIX}{tier}{SEP}{name}"


def version_totals(share: Share, now: float | None = None) -> Counter[str]:
    """What a share adds to its model's monotonic totals: per version, every counter of its minute
    buckets summed over the share's minutes, and the latency sum in whole microseconds.

    Fields are "<escaped version>|<bucket field>", so any windowed count is also a difference of
    two readings of the totals; the label join adds the label counters (store/lua/common.lua).
    With `now` (ingest's clock), late minutes are also counted under their lateness tier.
    """
    # Summed per version first (usually one or two minutes each), then prefixed once per field:
    # this runs on ingest's hot path, for every share.
    by_version: dict[str, Counter[str]] = {}
    for (version, minute), counts in share.minutes.items():
        summed = by_version.get(version)
        if summed is None:
            by_version[version] = Counter(counts)
        else:
            summed.update(counts)
        tier = 0 if now is None else late_tier(now - (minute + MINUTE_S))
        if tier:  # late: counted once more under its tier (rare on live traffic)
            late = {late_field(tier, name): value for name, value in counts.items()}
            by_version[version].update(late)
    totals: Counter[str] = Counter()
    for version, summed in by_version.items():
        head = escape(version) + SEP
        totals.update({head + name: value for name, value in summed.items()})
    for version, total_ms in share.latency_sum_ms.items():
        totals[escape(version) + SEP + LATENCY_SUM_US] += round(total_ms * 1000)
    return totals


def split_totals(
    raw: Mapping[str, str | bytes | int] | Mapping[bytes, str | bytes | int],
) -> dict[str, Counter[str]]:
    """A totals hash as Redis returns it (names and counts as str or bytes), as version -> bucket
    field -> count; a field no reader knows is kept, a missing one reads as 0."""
    by_version: dict[str, Counter[str]] = {}
    for name, value in raw.items():
        head, _, stat = (name.decode() if isinstance(name, bytes) else name).partition(SEP)
        version = unescape(head)
        fields = by_version.get(version)
        if fields is None:
            fields = by_version[version] = Counter()
        fields[stat] = int(value)
    return by_version
