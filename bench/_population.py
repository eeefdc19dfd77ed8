"""Steady-state Redis population shared by the evaluator-scale and memory benchmarks.

How the buckets are written
---------------------------
Writing every bucket through the real ingest path (`RedisStore.apply_predictions` / `apply_labels`)
would mean folding ~4 million predictions per 1,000 models for the last hour alone, and ~1.3 billion for
15 days of hour buckets, so this module writes the bucket hashes directly, but with contents produced by the
real code:

1. *Templates.* A few dozen minute buckets and hour buckets are computed from synthetic
   `PredictionEvent`s with the ingest fold itself (`monitor.aggregates.predictions.fold`), plus the label
   counters exactly as `store/lua/labels.lua` adds them (`lab`, `cor`, `apos`, `fn`, per group too).
   Each template is HSET once into a scratch key under the run's prefix.
2. *Copies.* Every bucket of every model version is a server-side `COPY` of a template (rotating
   through them, so neighbouring minutes differ) followed by `EXPIREAT` at the same expiry the ingest
   script sets (bucket start + `minute_bucket_ttl_s` / `hour_bucket_ttl_s`). The users sets
   (`users:seen:<version>` / `users:served:<version>`, user -> newest event time, over the users
   keep span) are COPYs of sorted sets folded from that span's events the same way; the per-model
   `totals` hash (per version: every bucket counter, labels' too, and the latency sum since the
   version's first event) sums what `stat_totals` makes of every hour since the version was first seen.
   The recent-events list and the per-model hashes the evaluator reads (`models` set, `meta`,
   `versions`, `versions:first`, `offsets`, a superseded version's frozen `ref:<version>`) are
   written with the key names of `monitor.store.keys.Keys`.
3. *Check.* `verify_against_ingest` feeds the same events and labels through the real
   `RedisStore.apply_predictions` / `apply_labels` under a second prefix and compares every bucket hash
   field by field, the users sets member by member, the totals hash and the expiry times, so a change of
   the ingest layout fails loudly here instead of silently benchmarking the wrong data
   (tests/integration/test_bench_population.py checks that the key kinds match too).

What it leaves out, on purpose (`NOT_WRITTEN`): the label-join records of unlabelled predictions and
the unfavourable-decisions zset. At 1,000 models they are tens of GB and ~4 GB, the evaluator's
tick never reads them, and bench/memory.py measures them on its sample through the real ingest.

The traffic is healthy by default (no rule fires); `write_breach` adds a burst to the current minute
of a few models so that the error-rate or disparate-impact rule fires.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from monitor.aggregates.predictions import (
    ACTUAL_POSITIVE,
    CORRECT,
    FALSE_NEGATIVE,
    HOUR_S,
    LABELLED,
    MINUTE_S,
    SEP,
    Located,
    Share,
    canonical,
    escape,
    fold,
    group_prefix,
    group_value,
    recent_records,
    version_totals,
)
from monitor.aggregates.window import MINUTES_KEPT
from monitor.events import LabelEvent, PredictionEvent
from monitor.settings import Settings
from monitor.store.keys import HOUR, MINUTE, Keys
from monitor.store.redis import USERS_KEEP_DEFAULT_S, RedisStore

DAY_S = 86_400
FROZEN_AT = "_frozen_at"  # monitor.store.catalog.FROZEN_AT (not imported: the evaluator is being changed)

# 20 group values in total over the attributes monitor/rules/default.yaml declares under `fairness:`
# (protected: sex, age_band; proxy: zip3). Every prediction carries all three attributes.
GROUPS: dict[str, tuple[str, ...]] = {
    "sex": ("F", "M"),
    "age_band": ("18-24", "25-34", "35-44", "45-54", "55-64", "65+"),
    "zip3": ("100", "191", "303", "331", "441", "554", "606", "752", "802", "857", "941", "981"),
}
assert sum(len(v) for v in GROUPS.values()) == 20

TEMPLATES = 24  # distinct buckets per kind; 24 divides 168, so every 7-day window sums alike
PARTITIONS = 8
RECENT_EVENTS = 200  # RedisStore.recent_events_max
UNFAVOURABLE_MAX = 20_000  # RedisStore.impact_sample_max
USERS_TTL_EXTRA_S = 3600  # RedisStore: a users set expires `users_keep_s` + 1 h after its last write
# Key kinds ingest writes that the population does not (see the module docstring), and the one it
# writes that ingest does not (the evaluator freezes a reference when a successor version appears),
# as key shapes (`key_shape`).
NOT_WRITTEN = {
    "{model}:join:<n>:<n>": "label-join records",
    "{model}:unfav": "unfavourable decisions",
    "{model}:unfav:bytes": "the unfavourable decisions' byte count",
    "{model}:shapes": "the shapes join records and unfavourable decisions name",
}
NOT_FROM_INGEST = {"{model}:ref:<n>": "frozen reference (written by the evaluator)"}


@dataclass(frozen=True)
class Traffic:
    """What a healthy model version sends (per minute) and how its labels come back."""

    per_minute: int = 60  # 1,000 models x 1/s = 1,000 predictions/s
    error_rate: float = 0.002
    favourable_rate: float = 0.6
    accuracy: float = 0.9
    label_share_recent: float = 0.5  # labelled fraction of the last hour's predictions
    label_share_old: float = 0.8  # labelled fraction of older predictions
    latency_median_ms: float = 40.0
    users: int = 3_000  # distinct callers per model
    flags: tuple[tuple[str, float], ...] = (("gibberish", 0.001), ("contradiction", 0.003))


@dataclass(frozen=True)
class VersionPlan:
    """One version of one model: when it started and how much of the traffic it takes."""

    version: str
    first_seen_s: int
    per_minute: int  # in the last `split_hours`; before that, `per_minute_before`
    per_minute_before: int
    split_hours: int  # hours back at which the canary split began (0: none)


@dataclass(frozen=True)
class ModelPlan:
    """One model: one or two versions (every other model runs a canary of version 2)."""

    model_id: str
    versions: tuple[VersionPlan, ...]


@dataclass
class Population:
    """What `populate` wrote, for the benchmarks to report and clean up."""

    keys: Keys
    now: float
    models: list[ModelPlan]
    history_hours: int
    minute_history: int
    seconds: float = 0.0
    commands: int = 0
    breach_models: list[str] = field(default_factory=list)
    templates: Templates = field(default_factory=lambda: Templates())
    traffic: Traffic = field(default_factory=Traffic)
    hour_ttl: int = 15 * DAY_S

    @property
    def pairs(self) -> int:
        """(model, version) pairs the evaluator reads."""
        return sum(len(m.versions) for m in self.models)


# --- templates: bucket contents produced by the ingest code ---------------------------------------


def synth_events(
    rng: random.Random,
    model_id: str,
    version: str,
    start_s: int,
    span_s: int,
    n: int,
    traffic: Traffic,
    *,
    error_rate: float | None = None,
    favourable: dict[str, float] | None = None,
    tag: str = "",
) -> list[PredictionEvent]:
    """`n` predictions spread over [start_s, start_s + span_s); `favourable` overrides by sex."""
    events = []
    errors = traffic.error_rate if error_rate is None else error_rate
    for i in range(n):
        groups = {attr: rng.choice(values) for attr, values in GROUPS.items()}
        failed = rng.random() < errors
        fav = (favourable or {}).get(str(groups["sex"]), traffic.favourable_rate)
        positive = None if failed else rng.random() < fav
        flags = [name for name, rate in traffic.flags if rng.random() < rate]
        events.append(
            PredictionEvent(
                ts=start_s + span_s * (i + rng.random()) / n,
                model_id=model_id,
                model_version=version,
                request_id=f"{tag}{model_id}-{version}-{start_s}-{i}",
                prediction=None if failed else int(bool(positive)),
                positive=positive,
                confidence=round(rng.uniform(0.5, 1.0), 3),
                latency_ms=rng.lognormvariate(0, 0.35) * traffic.latency_median_ms,
                error=True if failed else None,
                groups=dict(groups),
                subject_id=f"s-{rng.randrange(10**9)}",
                flags=flags,
                user_id=f"u{rng.randrange(traffic.users)}",
            )
        )
    return events


def synth_labels(
    rng: random.Random, events: Iterable[PredictionEvent], share: float, accuracy: float
) -> list[LabelEvent]:
    """Labels for a `share` of the answered predictions, correct with probability `accuracy`."""
    labels = []
    for event in events:
        if event.failed or rng.random() >= share:
            continue
        truth = event.prediction if rng.random() < accuracy else 1 - int(event.prediction or 0)
        labels.append(
            LabelEvent(
                ts=event.epoch_s + 600,
                request_id=event.request_id,
                model_id=event.model_id,
                label=truth,
                positive=bool(truth),
            )
        )
    return labels


def add_label(counts: MutableMapping[str, int], event: PredictionEvent, label: LabelEvent) -> None:
    """The counters `apply_label` (store/lua/common.lua) adds to a prediction's bucket for its label."""
    correct = canonical(event.prediction) == canonical(label.label)
    actual_positive = label.positive is True
    false_negative = actual_positive and event.positive is False
    prefixes = [""] + [group_prefix(attr, group_value(v)) for attr, v in event.groups.items()]
    for prefix in prefixes:
        names = [LABELLED]
        if correct:
            names.append(CORRECT)
        if actual_positive:
            names.append(ACTUAL_POSITIVE)
        if false_negative:
            names.append(FALSE_NEGATIVE)
        for name in names:
            counts[prefix + name] = counts.get(prefix + name, 0) + 1


@dataclass
class Buckets:
    """Bucket contents of a set of events and labels, as ingest would leave them."""

    minutes: dict[tuple[str, int], Counter[str]]
    hours: dict[tuple[str, int], Counter[str]]  # rolled up from the labelled minutes
    share: Share  # the fold itself: users / served sets, latency sums, what `version_totals` adds


def bucket_contents(
    model_id: str, events: Sequence[PredictionEvent], labels: Sequence[LabelEvent]
) -> Buckets:
    """Fold the events with the ingest code, then add the labels as the label join does."""
    share = fold(Located(e, 0, i) for i, e in enumerate(events))[model_id]
    minutes = {key: Counter(counts) for key, counts in share.minutes.items()}
    by_id = {e.request_id: e for e in events}
    for label in labels:
        event = by_id[label.request_id]
        minute = int(event.epoch_s) - int(event.epoch_s) % MINUTE_S
        add_label(minutes[(event.model_version, minute)], event, label)
    hours: dict[tuple[str, int], Counter[str]] = {}
    for (version, minute), counts in minutes.items():
        hours.setdefault((version, minute - minute % HOUR_S), Counter()).update(counts)
    return Buckets(minutes, hours, share)


@dataclass
class Templates:
    """Scratch keys holding template buckets, by kind; copied into every model's buckets."""

    minute: dict[str, list[str]] = field(default_factory=dict)  # kind -> bucket template keys
    hour: dict[str, list[str]] = field(default_factory=dict)
    partial_hour: dict[str, str] = field(default_factory=dict)
    # kind -> users seen / users served sorted set over the users keep span (ending at `now`)
    users_seen: dict[str, str] = field(default_factory=dict)
    users_served: dict[str, str] = field(default_factory=dict)
    recent: str = ""
    counters: dict[str, list[Counter[str]]] = field(default_factory=dict)  # kind -> hour counters
    # What `version_totals` adds for one hour, by stat (no version head): kind -> per hour template,
    # and kind -> the current (partial) hour.
    totals: dict[str, list[Counter[str]]] = field(default_factory=dict)
    partial_totals: dict[str, Counter[str]] = field(default_factory=dict)

    def all_keys(self) -> list[str]:
        """Every scratch key (deleted at the end of the population)."""
        keys = [k for ks in (*self.minute.values(), *self.hour.values()) for k in ks]
        keys += [*self.partial_hour.values(), *self.users_seen.values(), *self.users_served.values()]
        return keys + ([self.recent] if self.recent else [])


def stat_totals(b: Buckets, version: str = "1") -> Counter[str]:
    """What the totals hash gains from these events and labels for one version, by stat alone (the
    version head stripped): `version_totals` of the fold, plus the label counters the join adds."""
    head = escape(version) + SEP
    totals = Counter(
        {name[len(head) :]: value for name, value in version_totals(b.share).items() if name.startswith(head)}
    )
    for (v, minute), counts in b.minutes.items():
        if v == version:
            totals.update(counts - b.share.minutes[(v, minute)])
    return totals


def _hset(pipe: Pipeline, key: str, counts: Counter[str]) -> None:
    pipe.hset(key, mapping={k: v for k, v in counts.items() if v})


async def build_templates(
    redis: Redis,
    keys: Keys,
    traffic: Traffic,
    now: int,
    seed: int = 1,
    users_keep_s: int = USERS_KEEP_DEFAULT_S,
) -> Templates:
    """Compute template buckets and users sets with the ingest fold and store them under `<prefix>:tmpl:*`."""
    rng = random.Random(seed)
    t = Templates()
    base = f"{keys.prefix}:tmpl"
    minute0 = now - now % MINUTE_S
    hour0 = now - now % HOUR_S
    kinds = {
        "full": traffic.per_minute,
        "half": traffic.per_minute // 2,
    }  # a version's share of its model's traffic
    async with redis.pipeline(transaction=False) as pipe:
        for kind, per_minute in kinds.items():
            t.minute[kind] = []
            partial: Counter[str] = Counter()
            partial_totals: Counter[str] = Counter()
            for i in range(TEMPLATES):
                events = synth_events(rng, "tmpl", "1", minute0, MINUTE_S, per_minute, traffic)
                labels = synth_labels(rng, events, traffic.label_share_recent, traffic.accuracy)
                b = bucket_contents("tmpl", events, labels)
                counts = b.minutes[("1", minute0)]
                if i <= (now - hour0) // MINUTE_S:
                    partial.update(counts)
                    partial_totals.update(stat_totals(b))
                key = f"{base}:m:{kind}:{i}"
                _hset(pipe, key, counts)
                t.minute[kind].append(key)
            key = f"{base}:hp:{kind}"
            _hset(pipe, key, partial)
            t.partial_hour[kind] = key
            t.partial_totals[kind] = partial_totals
            # Who asked and who was served over the users keep span, as ingest leaves the two sets.
            span = users_keep_s
            events = synth_events(rng, "tmpl", "1", now - span, span, per_minute * span // MINUTE_S, traffic)
            share = bucket_contents("tmpl", events, []).share
            for name, by_version, store in (
                ("us", share.users, t.users_seen),
                ("usv", share.served, t.users_served),
            ):
                key = store[kind] = f"{base}:{name}:{kind}"
                pipe.zadd(key, by_version["1"])
            # Closed hours.
            t.hour[kind], t.counters[kind], t.totals[kind] = [], [], []
            for i in range(TEMPLATES):
                events = synth_events(rng, "tmpl", "1", hour0, HOUR_S, per_minute * 60, traffic)
                labels = synth_labels(rng, events, traffic.label_share_old, traffic.accuracy)
                b = bucket_contents("tmpl", events, labels)
                counts = b.hours[("1", hour0)]
                key = f"{base}:h:{kind}:{i}"
                _hset(pipe, key, counts)
                t.hour[kind].append(key)
                t.counters[kind].append(counts)
                t.totals[kind].append(stat_totals(b))
        events = synth_events(rng, "tmpl", "1", minute0, MINUTE_S, RECENT_EVENTS, traffic)
        share = fold(Located(e, i % PARTITIONS, 10**6 + i) for i, e in enumerate(events))["tmpl"]
        t.recent = f"{base}:recent"
        pipe.lpush(t.recent, *reversed(recent_records(share, RECENT_EVENTS)))
        for key in t.all_keys():
            pipe.expire(key, 6 * 3600)  # scratch keys never outlive a crashed run by long
        await pipe.execute()
    return t


# --- the population ------------------------------------------------------------------------------


def plan_models(
    n: int, now: int, *, history_hours: int, per_minute: int = Traffic.per_minute, canary_hours: int = 48
) -> list[ModelPlan]:
    """N models; model 0 is `credit-scoring` (the only one with a published minimum accuracy in
    monitor/rules/default.yaml); every odd model runs version 2 as a 50/50 canary for the last 48 h."""
    plans = []
    hour0 = now - now % HOUR_S
    versions: tuple[VersionPlan, ...]
    for i in range(n):
        model_id = "credit-scoring" if i == 0 else f"model-{i:04d}"
        v1_first = hour0 - (history_hours + 24) * HOUR_S
        if i % 2:
            split = min(canary_hours, history_hours)
            v2_first = hour0 - split * HOUR_S
            versions = (
                VersionPlan("1", v1_first, per_minute // 2, per_minute, split),
                VersionPlan("2", v2_first, per_minute // 2, per_minute // 2, split),
            )
        else:
            versions = (VersionPlan("1", v1_first, per_minute, per_minute, 0),)
        plans.append(ModelPlan(model_id, versions))
    return plans


def _kind(per_minute: int, traffic: Traffic) -> str:
    return "full" if per_minute == traffic.per_minute else "half"


def version_hours(
    index: int, v: VersionPlan, now: int, traffic: Traffic
) -> Iterable[tuple[int, int, str, int]]:
    """(hours back, hour start, template kind, template index) of every hour since the version was
    first seen, newest first (the totals count them all; buckets are kept for the newest only)."""
    hour0 = now - now % HOUR_S
    first = v.first_seen_s - v.first_seen_s % HOUR_S
    for i in range((hour0 - first) // HOUR_S + 1):
        per_minute = v.per_minute if i < v.split_hours else v.per_minute_before
        yield i, hour0 - i * HOUR_S, _kind(per_minute, traffic), (index * 5 + i) % TEMPLATES


def hour_plan(
    index: int, v: VersionPlan, now: int, history_hours: int, hour_ttl: int, traffic: Traffic
) -> Iterable[tuple[int, int, str, int]]:
    """(hours back, bucket start, template kind, template index) of one version's hour buckets."""
    for i, start, kind, t in version_hours(index, v, now, traffic):
        if i >= history_hours or start + hour_ttl <= now:
            return
        yield i, start, kind, t


def totals_of(templates: Templates, index: int, model: ModelPlan, now: int, traffic: Traffic) -> Counter[str]:
    """The model's `totals` hash: per version, `version_totals` summed over every hour since it was
    first seen (the current hour's partial template, then the rotating closed-hour templates)."""
    totals: Counter[str] = Counter()
    for v in model.versions:
        uses: Counter[tuple[str, int]] = Counter()
        for i, _, kind, t in version_hours(index, v, now, traffic):
            uses[(kind, -1 if i == 0 else t)] += 1
        head = escape(v.version) + SEP
        for (kind, t), times in uses.items():
            hour = templates.partial_totals[kind] if t < 0 else templates.totals[kind][t]
            for stat, value in hour.items():
                totals[head + stat] += value * times
    return totals


def closed_hours(population: Population, closed: int) -> dict[tuple[str, str], list[Counter[str]]]:
    """What `WindowReader` caches for each (model, version) after reading the closed hours 1..`closed`
    back: the template counters each bucket was copied from (shared objects, so N=1,000 fits in
    memory; see `prime_reader`)."""
    now = int(population.now)
    result: dict[tuple[str, str], list[Counter[str]]] = {}
    empty: Counter[str] = Counter()
    for index, model in enumerate(population.models):
        for v in model.versions:
            hours = [empty] * closed
            for i, _, kind, t in hour_plan(
                index, v, now, population.history_hours, population.hour_ttl, population.traffic
            ):
                if 1 <= i <= closed:
                    hours[i - 1] = population.templates.counters[kind][t]
            result[(model.model_id, v.version)] = hours
    return result


class Writer:
    """A pipeline that executes every `chunk` commands (keeps client and server buffers small)."""

    def __init__(self, redis: Redis, chunk: int = 20_000) -> None:
        self.redis = redis
        self.chunk = chunk
        self.pipe = redis.pipeline(transaction=False)
        self.pending = 0
        self.total = 0

    async def add(self, commands: int = 1) -> None:
        """Count commands just queued on `self.pipe`; flush when the chunk is full."""
        self.pending += commands
        if self.pending >= self.chunk:
            await self.flush()

    async def flush(self) -> None:
        """Send what is queued."""
        if self.pending:
            await self.pipe.execute()
            self.total += self.pending
            self.pending = 0


async def populate(
    redis: Redis,
    keys: Keys,
    n_models: int,
    *,
    now: float | None = None,
    history_hours: int = 360,
    minute_history: int = MINUTES_KEPT,
    traffic: Traffic = Traffic(),
    settings: Settings | None = None,
    users_keep_s: int = USERS_KEEP_DEFAULT_S,
) -> Population:
    """Write N models at steady state: `minute_history` minute buckets (the evaluator reads 60; the
    minute TTL keeps 180 at 3 h) and `history_hours` hour buckets per version (the 15-day TTL keeps
    360), the users sets over `users_keep_s` (`RedisStore.users_keep_s`: the default rules' 1 h
    window + 10 min) and each model's totals."""
    started = time.perf_counter()
    settings = settings or Settings()
    minute_ttl, hour_ttl = settings.minute_bucket_ttl_s, settings.hour_bucket_ttl_s
    now_f = time.time() if now is None else now
    now_i = int(now_f)
    minute0, hour0 = now_i - now_i % MINUTE_S, now_i - now_i % HOUR_S
    templates = await build_templates(redis, keys, traffic, now_i, users_keep_s=users_keep_s)
    plans = plan_models(n_models, now_i, history_hours=history_hours, per_minute=traffic.per_minute)
    w = Writer(redis)
    p = w.pipe
    for index, model in enumerate(plans):
        m = model.model_id
        events_total = 0
        for v in model.versions:
            ver = v.version
            # Minute buckets, newest first.
            for i in range(minute_history):
                start = minute0 - i * MINUTE_S
                if start + minute_ttl <= now_i or start < v.first_seen_s:
                    break
                kind = _kind(
                    v.per_minute if start >= hour0 - v.split_hours * HOUR_S else v.per_minute_before, traffic
                )
                t = (index * 7 + i) % TEMPLATES
                expire = max(start + minute_ttl, now_i + MINUTE_S)
                bucket = keys.bucket(m, ver, MINUTE, start)
                p.copy(templates.minute[kind][t], bucket, replace=True)
                p.expireat(bucket, expire)
                await w.add(2)
            # Users seen and served over the keep span (none before the version was first seen).
            kind = _kind(v.per_minute, traffic)
            for source, key in (
                (templates.users_seen[kind], keys.users_seen(m, ver)),
                (templates.users_served[kind], keys.users_served(m, ver)),
            ):
                p.copy(source, key, replace=True)
                if v.first_seen_s > now_i - users_keep_s:
                    p.zremrangebyscore(key, "-inf", f"({v.first_seen_s}")
                p.expireat(key, now_i + users_keep_s + USERS_TTL_EXTRA_S)
                await w.add(3)
            # Hour buckets: the current (partial) hour and the closed ones.
            for i, start, kind, t in hour_plan(index, v, now_i, history_hours, hour_ttl, traffic):
                source = templates.partial_hour[kind] if i == 0 else templates.hour[kind][t]
                bucket = keys.bucket(m, ver, HOUR, start)
                p.copy(source, bucket, replace=True)
                p.expireat(bucket, max(start + hour_ttl, now_i + MINUTE_S))
                events_total += (traffic.per_minute if kind == "full" else traffic.per_minute // 2) * 60
                await w.add(2)
        # The per-model hashes the evaluator and the evidence read (ingest gives them the hour TTL).
        newest = {v.version: minute0 for v in model.versions}
        first = {v.version: v.first_seen_s - v.first_seen_s % MINUTE_S for v in model.versions}
        p.sadd(keys.models(), m)
        p.hset(keys.meta(m), mapping={"last_event_s": repr(now_f - 0.4), "events": events_total})
        p.hset(keys.versions(m), mapping=newest)  # type: ignore[arg-type]
        p.hset(keys.first_seen(m), mapping=first)  # type: ignore[arg-type]
        # The replay guard holds the last offset of every partition of the predictions and labels topics.
        guard = {
            f"{topic}|{part}": 10**7 + index
            for topic in (settings.topics.predictions, settings.topics.labels)
            for part in range(PARTITIONS)
        }
        p.hset(keys.offsets(m), mapping=guard)  # type: ignore[arg-type]
        p.copy(templates.recent, keys.recent_predictions(m), replace=True)
        for key in (
            keys.meta(m),
            keys.versions(m),
            keys.first_seen(m),
            keys.offsets(m),
            keys.recent_predictions(m),
        ):
            p.expire(key, hour_ttl)
        # Ingest adds the totals with the batch's buckets: expiry floor (1 min) + the hour TTL.
        p.hset(keys.totals(m), mapping=totals_of(templates, index, model, now_i, traffic))  # type: ignore[arg-type]
        p.expireat(keys.totals(m), now_i + MINUTE_S + hour_ttl)
        await w.add(13)
        if len(model.versions) > 1:
            # Version 1's reference, frozen when version 2 appeared (what the evaluator would have
            # written then): hours 24..191 before that moment; 24 templates divide 168 hours.
            counts: Counter[str] = Counter()
            for c in templates.counters["full"]:
                counts.update(c)
            ref: dict[str, int | float] = {k: v * 7 for k, v in counts.items()}
            ref[FROZEN_AT] = float(model.versions[1].first_seen_s)
            key = keys.reference(m, "1")
            p.hset(key, mapping=ref)  # type: ignore[arg-type]
            p.expire(key, 15 * DAY_S)
            await w.add(2)
    await w.flush()
    await redis.delete(*templates.all_keys())
    return Population(
        keys,
        now_f,
        plans,
        history_hours,
        minute_history,
        seconds=time.perf_counter() - started,
        commands=w.total,
        templates=templates,
        traffic=traffic,
        hour_ttl=hour_ttl,
    )


BREACHES: dict[str, tuple[int, float | None, dict[str, float] | None]] = {
    # kind -> (extra predictions in the current minute, error rate, favourable rate by sex)
    # A retry storm during a partial outage: 4x the model's normal rate for a minute, 40 % failing.
    # The error-rate detector needs min_samples (200) events since its change point, so the 60 of
    # one minute at the normal rate could never open it; 240 take its HIGH step (p0 5 %) past its bar.
    "errors": (240, 0.40, None),
    "biased": (2_400, None, {"F": 0.0}),  # a burst where no woman is approved (disparate-impact)
}


async def write_breach(redis: Redis, population: Population, share: float = 0.01, seed: int = 7) -> list[str]:
    """Make ~`share` of the models (at least 2) breach, in the current minute only (a reader that
    caches older minutes sees it at once, as it would see real traffic): half get 240 more requests
    of which 40 % fail (error-rate), half a burst of 2,400 decisions in which no woman is approved
    (disparate-impact). The extra events are folded by the ingest code and added with HINCRBY to the
    current minute and hour buckets and to the totals, and with ZADD GT to the users sets, as ingest
    would; their unfavourable decisions go to `…:unfav` for the incident's impact."""
    keys, now = population.keys, int(population.now)
    count = min(len(population.models) - 1, max(2, round(len(population.models) * share)))  # both kinds
    chosen = population.models[1 :: max(1, len(population.models) // count)][:count] or population.models[:1]
    rng = random.Random(seed)
    minute0, hour0 = now - now % MINUTE_S, now - now % HOUR_S
    settings = Settings()
    async with redis.pipeline(transaction=False) as p:
        for n, model in enumerate(chosen):
            m, kind = model.model_id, ("errors" if n % 2 == 0 else "biased")
            version = model.versions[-1].version
            extra, errors, favourable = BREACHES[kind]
            span = max(1, now - minute0)
            events = synth_events(
                rng,
                m,
                version,
                minute0,
                span,
                extra,
                Traffic(),
                error_rate=errors,
                favourable=favourable,
                tag="b",
            )
            counts = bucket_contents(m, events, []).minutes[(version, minute0)]
            for key, ttl in (
                (keys.bucket(m, version, MINUTE, minute0), settings.minute_bucket_ttl_s),
                (keys.bucket(m, version, HOUR, hour0), settings.hour_bucket_ttl_s),
            ):
                for name, value in counts.items():
                    if value:
                        p.hincrby(key, name, value)
                p.expireat(key, (minute0 if ttl == settings.minute_bucket_ttl_s else hour0) + ttl)
            folded = fold(Located(e, 0, j) for j, e in enumerate(events))[m]
            for name, value in version_totals(folded).items():
                p.hincrby(keys.totals(m), name, value)
            for key_of, by_version in ((keys.users_seen, folded.users), (keys.users_served, folded.served)):
                for ver, newest in by_version.items():
                    p.zadd(key_of(m, ver), newest, gt=True)
            if folded.unfavourable:
                p.zadd(keys.unfavourable(m), {member: ts for ts, member in folded.unfavourable})
                p.expire(keys.unfavourable(m), settings.minute_bucket_ttl_s)
                p.hset(keys.shapes(m), mapping=folded.shapes)  # the members name their shapes
                p.expire(keys.shapes(m), settings.minute_bucket_ttl_s)
        await p.execute()
    population.breach_models = [m.model_id for m in chosen]
    return population.breach_models


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def delete_prefix(redis: Redis, prefix: str) -> int:
    """Delete every key under `prefix:` (SCAN, never FLUSHDB: the Redis is shared)."""
    deleted = 0
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=f"{prefix}:*", count=5_000):
        batch.append(key)
        if len(batch) >= 5_000:
            deleted += await redis.unlink(*batch)
            batch = []
    if batch:
        deleted += await redis.unlink(*batch)
    return deleted


def key_shape(prefix: str, key: str) -> str:
    """A key's kind: the name after `prefix:` with the model hash tag as `{model}` and every
    numeric part (versions here, minute and hour starts, days) as `<n>`."""
    rest = key[len(prefix) + 1 :]
    if rest.startswith("{"):
        rest = "{model}" + rest[rest.index("}") + 1 :]
    return ":".join("<n>" if part.isdigit() else part for part in rest.split(":"))


async def count_prefix(redis: Redis, prefix: str) -> int:
    """How many keys live under `prefix:`."""
    n = 0
    async for _ in redis.scan_iter(match=f"{prefix}:*", count=5_000):
        n += 1
    return n


# --- the check against the real ingest path ------------------------------------------------------


async def verify_against_ingest(redis: Redis, prefix: str, settings: Settings | None = None) -> str:
    """Feed events through `RedisStore.apply_predictions`/`apply_labels`; compare with `bucket_contents`.

    Raises AssertionError on any difference; returns a one-line summary."""
    settings = settings or Settings()
    keys = Keys(prefix)
    store = RedisStore(
        redis, keys, minute_ttl_s=settings.minute_bucket_ttl_s, hour_ttl_s=settings.hour_bucket_ttl_s
    )
    rng = random.Random(3)
    now = int(time.time())
    start = now - now % MINUTE_S - 3 * MINUTE_S
    events = synth_events(rng, "verify", "1", start, 3 * MINUTE_S, 400, Traffic(), tag="v")
    labels = synth_labels(rng, events, 0.7, 0.9)
    try:
        await store.apply_predictions(
            settings.topics.predictions, [Located(e, i % 2, i) for i, e in enumerate(events)]
        )
        await store.apply_labels(settings.topics.labels, [Located(e, i % 2, i) for i, e in enumerate(labels)])
        expected = bucket_contents("verify", events, labels)
        checked = 0
        for resolution, buckets, ttl in (
            (MINUTE, expected.minutes, settings.minute_bucket_ttl_s),
            (HOUR, expected.hours, settings.hour_bucket_ttl_s),
        ):
            for (version, bucket_start), counts in buckets.items():
                key = keys.bucket("verify", version, resolution, bucket_start)
                stored = {
                    (k.decode() if isinstance(k, bytes) else k): int(v)
                    for k, v in (await redis.hgetall(key)).items()
                }
                want = {k: v for k, v in counts.items() if v}
                assert stored == want, (
                    f"{key}: ingest wrote {sorted(set(stored.items()) ^ set(want.items()))[:6]}"
                )
                expire_at = await redis.expiretime(key)
                assert (
                    expire_at == max(bucket_start + ttl, now + MINUTE_S) or expire_at == bucket_start + ttl
                ), (key, expire_at)
                checked += 1
        share = expected.share
        for key_of, by_version in ((keys.users_seen, share.users), (keys.users_served, share.served)):
            for version, newest in by_version.items():
                key = key_of("verify", version)
                # redis-py types every ZRANGE reply alike; WITHSCORES gives (member, score) pairs.
                pairs: list[tuple[bytes, float]] = await redis.zrange(key, 0, -1, withscores=True)  # type: ignore[assignment]
                stored_users = {_text(u): ts for u, ts in pairs}
                assert stored_users == newest, (
                    f"{key}: {len(stored_users)} users stored, {len(newest)} folded"
                )
                ttl = await redis.ttl(key)
                assert abs(ttl - (store.users_keep_s + USERS_TTL_EXTRA_S)) <= 5, (key, ttl)
                checked += 1
        stored_totals = {_text(k): int(v) for k, v in (await redis.hgetall(keys.totals("verify"))).items()}
        want_totals = {escape("1") + SEP + stat: value for stat, value in stat_totals(expected).items()}
        assert stored_totals == want_totals, (
            f"totals: {sorted(set(stored_totals.items()) ^ set(want_totals.items()))[:6]}"
        )
        expire_at = await redis.expiretime(keys.totals("verify"))
        assert abs(expire_at - (now + MINUTE_S + settings.hour_bucket_ttl_s)) <= 5, ("totals", expire_at)
        checked += 1
        return (
            f"ingest check: {checked} bucket hashes, users sets and the totals hash written by "
            f"RedisStore.apply_predictions/apply_labels match the templates' fold"
        )
    finally:
        await delete_prefix(redis, prefix)
