"""Folds a consumed batch of prediction events into one additive share per model (pure, no I/O).

A share is what one atomic Redis step applies: counter increments per (version, minute bucket), the
range of offsets it covers per source partition (the replay guard), and the newest event time.
Field names inside a bucket hash are part of the Redis layout (see `monitor.store.keys`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import msgspec
import numpy as np
import orjson

from monitor.aggregates import histogram
from monitor.events import PredictionEvent

MINUTE_S = 60
HOUR_S = 3600

# Bucket-hash fields. Group fields are "g|<attr>|<value>|<stat>", flags "f|<flag>", latency "lat|<i>".
COUNT = "n"
ERRORS = "err"
DECISIONS = "dec"  # events that say whether the outcome was favourable (`positive` present)
FAVOURABLE = "pos"
LATENCY_COUNT = "latn"
# Written by the label join (store/lua/labels.lua) into the prediction's own buckets:
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


@dataclass(frozen=True, slots=True)
class Located:
    """A decoded event with where it came from (the partition and offset feed the replay guard)."""

    event: Any
    partition: int
    offset: int


@dataclass(slots=True)
class Share:
    """One model's part of a batch: what a single atomic Redis step adds."""

    model_id: str
    offsets: dict[int, tuple[int, int]] = field(default_factory=dict)  # partition -> (min, max)
    minutes: dict[tuple[str, int], Counter[str]] = field(default_factory=dict)
    users: dict[tuple[str, int], set[str]] = field(default_factory=dict)
    failed_users: dict[tuple[str, int], set[str]] = field(default_factory=dict)
    joins: dict[str, str] = field(default_factory=dict)  # request_id -> join record (JSON)
    # Unfavourable decisions, kept (bounded) so a bias incident can name who was affected:
    # (event time, JSON [request_id, subject_id, version, [group field prefixes]])
    unfavourable: list[tuple[float, str]] = field(default_factory=list)
    recent: list[Located] = field(default_factory=list)  # the batch's events, newest kept as evidence
    last_event_s: float = 0.0
    events: int = 0

    def hours(self) -> dict[tuple[str, int], Counter[str]]:
        """The same increments rolled up into hour buckets (long windows read these)."""
        rolled: dict[tuple[str, int], Counter[str]] = {}
        for (version, minute), counts in self.minutes.items():
            rolled.setdefault((version, minute - minute % HOUR_S), Counter()).update(counts)
        return rolled


def _count_event(counts: Counter[str], event: PredictionEvent) -> None:
    counts[COUNT] += 1
    if event.failed:
        counts[ERRORS] += 1
    if event.positive is not None:
        counts[DECISIONS] += 1
        counts[FAVOURABLE] += event.positive
    for attr, raw in event.groups.items():
        value = group_value(raw)
        counts[group_field(attr, value, COUNT)] += 1
        if event.positive is not None:
            counts[group_field(attr, value, DECISIONS)] += 1
            counts[group_field(attr, value, FAVOURABLE)] += event.positive
        if event.failed:
            counts[group_field(attr, value, ERRORS)] += 1
    for flag in event.flags:
        counts[flag_field(flag)] += 1


def fold(located: Iterable[Located]) -> dict[str, Share]:
    """Group a batch by model and sum each model's events into per-minute counters."""
    shares: dict[str, Share] = {}
    latencies: dict[tuple[str, str, int], list[float]] = {}
    for item in located:
        event = item.event
        share = shares.get(event.model_id)
        if share is None:
            share = shares[event.model_id] = Share(event.model_id)
        low, high = share.offsets.get(item.partition, (item.offset, item.offset))
        share.offsets[item.partition] = (min(low, item.offset), max(high, item.offset))
        ts = event.epoch_s
        minute = int(ts) - int(ts) % MINUTE_S
        key = (event.model_version, minute)
        counts = share.minutes.get(key)
        if counts is None:
            counts = share.minutes[key] = Counter()
        _count_event(counts, event)
        if event.latency_ms is not None:
            latencies.setdefault((event.model_id, *key), []).append(event.latency_ms)
        if event.user_id:
            share.users.setdefault(key, set()).add(event.user_id)
            if event.failed:
                share.failed_users.setdefault(key, set()).add(event.user_id)
        if not event.failed:
            share.joins[event.request_id] = join_record(event, minute)
        if event.positive is False and event.groups:
            share.unfavourable.append((ts, affected_record(event)))
        share.last_event_s = max(share.last_event_s, ts)
        share.events += 1
        share.recent.append(item)
    for (model_id, version, minute), values in latencies.items():
        counts = shares[model_id].minutes[(version, minute)]
        indices, per_index = np.unique(
            histogram.buckets_of(np.asarray(values, dtype=np.float64)), return_counts=True
        )
        for index, count in zip(indices.tolist(), per_index.tolist(), strict=True):
            counts[latency_field(index)] += count
        counts[LATENCY_COUNT] += len(values)
    return shares


def join_record(event: PredictionEvent, minute: int) -> str:
    """What the label join needs of a prediction: where its counters live and what it decided."""
    positive = -1 if event.positive is None else int(event.positive)
    prefixes = [group_prefix(attr, group_value(v)) for attr, v in event.groups.items()]
    return orjson.dumps(
        [event.model_version, minute, canonical(event.prediction), positive, prefixes]
    ).decode()


def affected_record(event: PredictionEvent) -> str:
    """Who got an unfavourable decision, and in which groups (for a bias incident's impact)."""
    prefixes = [group_prefix(attr, group_value(v)) for attr, v in event.groups.items()]
    return orjson.dumps([event.request_id, event.subject_id, event.model_version, prefixes]).decode()


def recent_records(share: Share, keep: int) -> list[str]:
    """The share's newest `keep` events as JSON evidence records (with where they came from)."""
    return [
        orjson.dumps({"partition": item.partition, "offset": item.offset, "event": msgspec.to_builtins(item.event)}).decode()
        for item in share.recent[-keep:]
    ]


def after_offsets(located: Sequence[Located], applied: dict[int, int]) -> list[Located]:
    """The events not yet applied, given the last applied offset per partition (replay filter)."""
    return [item for item in located if item.offset > applied.get(item.partition, -1)]
