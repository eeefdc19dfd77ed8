"""Memory: Redis bytes per tracked series, and for 1,000 models x 20 groups at steady state.

Issue: "Memory. Redis bytes per tracked series and for 1,000 models x 20 groups at steady state, with
TTLs bounding growth".

1. Sample (real write paths). One model, version 1, 60 predictions/min (1/s: 1,000 models = 1,000
   predictions/s) with 20 group values (sex 2, age_band 6, zip3 12, as bench/_population.py), over the
   last 26 h (the unfavourable set's TTL; what is already past the 3 h minute TTL is written with
   ingest's 60 s expiry floor and left out of the steady state), through `RedisStore.apply_predictions`;
   labels for 80 % of it (50 % of the last hour) through `RedisStore.apply_labels`, plus a few labels
   whose prediction never came; a few access-log and registry events (`apply_access`, `apply_registry`);
   the last 5 minutes carry 10 % errors and one access is unauthorised, so one `Evaluator` tick opens
   incidents (incident, control and index keys); a person's command and an audit entry.
   `MEMORY USAGE key SAMPLES 0` of every key, by key type, and `INFO memory` used_memory before/after.
2. TTLs. `TTL` of every key under the sample's prefix: any key without an expiry is listed, marked
   "documented" when the README/keys.py say it is kept without expiry.
3. Steady state. Per model-version: minute buckets for the minute TTL (Settings:
   minute_bucket_ttl_s, 3 h = 180), 360 hour buckets (15 d TTL), the users-seen and users-served
   sorted sets (one each per version, holding the users of the last 70 min: the longest
   unserved-users window + 10 min), the unfavourable-decisions zset at its 20,000 bound, the
   recent-events list, the join records of unlabelled predictions (7 days `label_join_ttl` after the
   end of their UTC day), and the small per-model hashes (the totals hash among them); multiplied out
   for 1,000 models.
4. Cross-check (--scale-models, default 1000). bench/_population.py writes N models the way the
   evaluator benchmark does (60 minute buckets + 360 hour buckets per version, 1.5 versions per model)
   (users sets and totals too) and `INFO memory` used_memory before/after is compared with the
   per-key sizes of step 1.
   The Redis is shared: used_memory deltas include whatever other clients wrote meanwhile.

Definitions. A *series* is one counter field of one bucket hash, e.g. `g|sex|F|pos` (favourable
decisions of sex=F) of version 1 in one minute: bytes per series = MEMORY USAGE of the bucket / HLEN.
A *tracked series over its retention* is that field in all 180 minute and 360 hour buckets.

Usage: .venv/bin/python bench/memory.py [--scale-models 1000] [--hours 26] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._population import (  # noqa: E402
    GROUPS,
    Traffic,
    count_prefix,
    delete_prefix,
    populate,
    synth_events,
    synth_labels,
)
from bench.evaluator_scale import MemoryPublisher  # noqa: E402
from monitor.aggregates.predictions import Located  # noqa: E402
from monitor.audit import AuditLog  # noqa: E402
from monitor.evaluator import Evaluator  # noqa: E402
from monitor.events import AccessEvent, LabelEvent, PredictionEvent, RegistryEvent  # noqa: E402
from monitor.incidents.commands import CommandQueue, new_command  # noqa: E402
from monitor.rules.loader import default_rules_path, load_rules  # noqa: E402
from monitor.settings import Settings  # noqa: E402
from monitor.store.keys import Keys  # noqa: E402
from monitor.store.redis import RedisStore  # noqa: E402

MODEL = "credit-scoring"
DAY_S = 86_400
BATCH = 2_000  # events per ingest batch (the tests' size; the agents take up to 1,000 messages)
UNFAVOURABLE_MAX = 20_000  # RedisStore.impact_sample_max
LABEL_JOIN_TTL_S = 7 * DAY_S  # RedisStore.label_join_ttl_s
# Keys the README or monitor/store/keys.py document as kept without expiry.
DOCUMENTED_PERMANENT = {
    "registry:approved": "README: approved checksums (no expiry); Keys.approvals: kept without expiry"
}
# How a key without a TTL grows (read from the code that writes it).
GROWTH = {
    "models set (global)": "one member per model id ever seen; never removed",
    "access_models set (global)": "one member per model key with access/registry events; never removed",
    "incidents zset (global)": "one member per incident ever opened; never removed",
    "incident_models hash (global)": "one field per incident ever opened; never removed",
    "incident (JSON string)": "one key per incident ever opened, resolved ones too; never deleted",
    "open incidents hash": "one per model; fields removed when incidents resolve",
    "control hash": "one per model; fixed fields (seq, level, override, last, pending)",
    "audit list (global)": "one entry per human action, append-only (a hash chain: trimming would break it)",
    "registry:deployments list": "bounded: LTRIM to 1,000 entries (registry.lua)",
    "registry:approved hash": "one field per approved artifact",
}

PER_MINUTE = {"minute bucket"}
FLOOR_TTL_S = 120  # RedisStore never sets an expiry sooner than 60 s from now

# Key type by the part after "<prefix>:{<model>}:" (per-model) or "<prefix>:" (global).
KINDS: list[tuple[str, str]] = [
    (r"m:!access:\d+$", "access minute bucket"),
    (r"h:!access:\d+$", "access hour bucket"),
    (r"m:[^:]+:\d+$", "minute bucket"),
    (r"h:[^:]+:\d+$", "hour bucket"),
    (r"users:seen:[^:]+$", "users seen zset"),
    (r"users:served:[^:]+$", "users served zset"),
    (r"totals$", "totals hash"),
    (r"join:\d+:\d+$", "join records (one UTC day, one slot)"),
    (r"shapes$", "shapes hash"),
    (r"unfav$", "unfavourable decisions zset"),
    (r"unfav:bytes$", "unfavourable decisions' bytes"),
    (r"recent$", "recent events list"),
    (r"offsets$", "offsets hash"),
    (r"meta$", "meta hash"),
    (r"versions$", "versions hash"),
    (r"versions:first$", "versions:first hash"),
    (r"lblwait$", "waiting labels hash"),
    (r"lblwait:until$", "waiting labels zset"),
    (r"ref:.+$", "frozen reference hash"),
    (r"control$", "control hash"),
    (r"incidents:open$", "open incidents hash"),
    (r"incidents:quiet$", "quiet incidents hash"),
    (r"incident:.+$", "incident (JSON string)"),
    (r"commands$", "command queue list"),
    (r"access:meta$", "access:meta hash"),
    (r"access:known$", "access:known hash"),
    (r"access:sources$", "access:sources hash"),
    (r"access:newsrc$", "access:newsrc hash"),
    (r"access:recent$", "access:recent list"),
    (r"registry:approved$", "registry:approved hash"),
    (r"registry:tampered$", "registry:tampered hash"),
    (r"registry:deployments$", "registry:deployments list"),
]
GLOBAL_KINDS: list[tuple[str, str]] = [
    (r"models$", "models set (global)"),
    (r"access_models$", "access_models set (global)"),
    (r"incidents$", "incidents zset (global)"),
    (r"incident_models$", "incident_models hash (global)"),
    (r"audit$", "audit list (global)"),
    (r"command:.+$", "command result (global)"),
]


def kind_of(prefix: str, key: str) -> tuple[str, str]:
    """(key type, the part of the name after the model hash tag or the prefix)."""
    rest = key[len(prefix) + 1 :]
    if rest.startswith("{"):
        tail = rest[rest.index("}:") + 2 :]
        for pattern, name in KINDS:
            if re.match(pattern, tail):
                return name, tail
        return "other per-model key", tail
    for pattern, name in GLOBAL_KINDS:
        if re.match(pattern, rest):
            return name, rest
    return "other global key", rest


@dataclass
class KeyInfo:
    """What Redis says about one key."""

    name: str
    kind: str
    tail: str
    type: str
    encoding: str
    bytes: int
    entries: int  # fields, members or elements (the length for a string)
    ttl: int


@dataclass
class Kind:
    """Every key of one type."""

    name: str
    keys: list[KeyInfo] = field(default_factory=list)

    def mean_bytes(self) -> float:
        return statistics.mean(k.bytes for k in self.keys)

    def mean_entries(self) -> float:
        return statistics.mean(k.entries for k in self.keys)

    def encodings(self) -> str:
        return ",".join(sorted({k.encoding for k in self.keys}))


async def used_memory(redis: Redis) -> int:
    """INFO memory used_memory (bytes, the whole shared server)."""
    return int((await redis.info("memory"))["used_memory"])


async def inspect(redis: Redis, prefix: str) -> list[KeyInfo]:
    """TYPE, OBJECT ENCODING, MEMORY USAGE (exact: SAMPLES 0), size and TTL of every key under prefix."""
    names = [k.decode() async for k in redis.scan_iter(match=f"{prefix}:*", count=5_000)]
    infos: list[KeyInfo] = []
    for start in range(0, len(names), 2_000):
        chunk = names[start : start + 2_000]
        async with redis.pipeline(transaction=False) as pipe:
            for name in chunk:
                pipe.type(name)
                pipe.object("encoding", name)
                pipe.execute_command("MEMORY", "USAGE", name, "SAMPLES", "0")
                pipe.ttl(name)
            replies = await pipe.execute()
        types = [_text(t) for t in replies[0::4]]
        async with redis.pipeline(transaction=False) as pipe:
            for name, kind in zip(chunk, types, strict=True):
                if kind == "hash":
                    pipe.hlen(name)
                elif kind == "zset":
                    pipe.zcard(name)
                elif kind == "list":
                    pipe.llen(name)
                elif kind == "set":
                    pipe.scard(name)
                else:
                    pipe.strlen(name)
            sizes = await pipe.execute()
        for i, name in enumerate(chunk):
            kind, tail = kind_of(prefix, name)
            ttl = int(replies[4 * i + 3])
            if kind in PER_MINUTE and 0 <= ttl <= FLOOR_TTL_S:
                # The sample reaches back 26 h; ingest writes what is already past the minute TTL with
                # a 60 s expiry floor (and no label lands there): not part of the steady state.
                kind += " (past its TTL)"
            infos.append(
                KeyInfo(
                    name,
                    kind,
                    tail,
                    types[i],
                    _text(replies[4 * i + 1] or b"-"),
                    int(replies[4 * i + 2] or 0),
                    int(sizes[i]),
                    int(replies[4 * i + 3]),
                )
            )
    return infos


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- 1. the sample, through the real write paths -------------------------------------------------


@dataclass
class Sample:
    """What the sample wrote."""

    predictions: int
    labels: int
    seconds: float
    opened: list[str]


async def write_sample(redis: Redis, keys: Keys, hours: int, settings: Settings, evidence: Path) -> Sample:
    """One model's last `hours` hours through RedisStore.apply_predictions / apply_labels /
    apply_access / apply_registry, then one evaluator tick that opens incidents."""
    started = time.perf_counter()
    rules = load_rules(default_rules_path())
    store = RedisStore(
        redis, keys, minute_ttl_s=settings.minute_bucket_ttl_s, hour_ttl_s=settings.hour_bucket_ttl_s
    )
    store.configure(rules.ingest_rules())
    traffic = Traffic()
    rng = random.Random(11)
    now = int(time.time())
    minute0 = now - now % 60
    first = minute0 - hours * 3600 + 120  # 2 min inside `hours` (26: the unfavourable set's TTL)
    events: list[PredictionEvent] = []
    labels: list[LabelEvent] = []
    for start in range(first, minute0 + 60, 60):
        recent = start >= now - 3600
        errors = 0.10 if start >= minute0 - 4 * 60 else None  # the last 5 minutes breach error-rate
        span = min(60, max(1, now - start - 1))
        batch = synth_events(rng, MODEL, "1", start, span, traffic.per_minute, traffic, error_rate=errors)
        events += batch
        labels += synth_labels(
            rng, batch, traffic.label_share_recent if recent else traffic.label_share_old, traffic.accuracy
        )
    for i in range(0, len(events), BATCH):
        chunk = events[i : i + BATCH]
        await store.apply_predictions(
            settings.topics.predictions, [Located(e, j % 8, i + j) for j, e in enumerate(chunk)]
        )
    orphans = [
        LabelEvent(ts=now - 30, request_id=f"orphan-{i}", model_id=MODEL, label=1, positive=True)
        for i in range(50)
    ]
    all_labels = labels + orphans
    for i in range(0, len(all_labels), BATCH):
        label_chunk = all_labels[i : i + BATCH]
        await store.apply_labels(
            settings.topics.labels, [Located(e, j % 8, i + j) for j, e in enumerate(label_chunk)]
        )
    access = [
        AccessEvent(
            ts=now - 600 + i,
            principal="ml-alice",
            action="read",
            resource_type="training_data",
            resource="s3://data/credit/train.parquet",
            outcome="allowed",
            model_id=MODEL,
            source_ip="10.0.0.7",
            auth_method="sso",
            bytes=10_000_000,
        )
        for i in range(20)
    ] + [
        AccessEvent(
            ts=now - 60,
            principal="mallory",
            action="download",
            resource_type="model_weights",
            resource="s3://models/credit/1/weights.bin",
            outcome="allowed",
            model_id=MODEL,
            source_ip="203.0.113.9",
            auth_method="api_key",
            api_key_id="k-123",
        )
    ]
    await store.apply_access(settings.topics.access_logs, [Located(e, 0, i) for i, e in enumerate(access)])
    sha = "a" * 64
    registry = [
        RegistryEvent(
            ts=now - 7200,
            model_id=MODEL,
            version="1",
            event="approved",
            sha256=sha,
            actor="ml-lead",
            approval_ref="CR-1",
        ),
        RegistryEvent(
            ts=now - 7000, model_id=MODEL, version="1", event="deployed", sha256=sha, actor="svc-deployer"
        ),
    ]
    await store.apply_registry(
        settings.topics.model_registry, [Located(e, 0, i) for i, e in enumerate(registry)]
    )
    evaluator = Evaluator(redis, keys, rules, MemoryPublisher(), evidence_dir=evidence)
    report = await evaluator.tick()
    await CommandQueue(redis, keys).submit(
        new_command(
            "acknowledge",
            MODEL,
            "bench",
            "memory benchmark",
            incident_id=report.opened[0].id if report.opened else "none",
        )
    )
    await evaluator.tick()  # applies the command: a command result key
    await AuditLog(redis, keys, secret=b"memory-benchmark-secret-0123456789").append(
        at=time.time(), who="bench", action="acknowledge", target=MODEL, why="memory benchmark"
    )
    return Sample(
        len(events), len(labels), time.perf_counter() - started, [f"{i.rule}" for i in report.opened]
    )


# --- 3. steady state -----------------------------------------------------------------------------


@dataclass
class SteadyState:
    """Bytes of one model-version at 1 prediction/s, by part."""

    parts: dict[str, float]
    join_per_prediction: float

    @property
    def total(self) -> float:
        return sum(self.parts.values())


def steady_state(kinds: dict[str, Kind], settings: Settings, label_share: float) -> SteadyState:
    """Per model-version at 60 predictions/min, from the sample's per-key sizes."""
    minutes = settings.minute_bucket_ttl_s // 60  # 180 at the 3 h default
    hours = settings.hour_bucket_ttl_s // 3600  # 360
    full_minutes = [k for k in kinds["minute bucket"].keys]
    hour_keys = sorted(kinds["hour bucket"].keys, key=lambda k: k.entries)
    closed = hour_keys[len(hour_keys) // 2 :]  # the fuller half: hours with 60 minutes in them
    parts: dict[str, float] = {
        f"minute buckets ({minutes})": minutes * statistics.mean(k.bytes for k in full_minutes),
        f"hour buckets ({hours})": hours * statistics.mean(k.bytes for k in closed),
    }
    for name in ("users seen zset", "users served zset"):
        users = kinds[name]
        parts[f"{name} ({users.mean_entries():,.0f} users)"] = users.mean_bytes()
    unfav = kinds["unfavourable decisions zset"].keys[0]
    # Bounded by count and by its members' bytes: a zset short of the count bound is at its byte bound.
    at_bound = UNFAVOURABLE_MAX if unfav.entries >= UNFAVOURABLE_MAX else unfav.entries
    parts[f"unfavourable zset ({at_bound:,} kept)"] = unfav.bytes / max(1, unfav.entries) * at_bound
    parts["recent events list (200)"] = kinds["recent events list"].mean_bytes()
    small = (
        "offsets hash",
        "meta hash",
        "versions hash",
        "versions:first hash",
        "control hash",
        "totals hash",
    )
    parts["offsets, meta, versions, control, totals hashes"] = sum(
        kinds[k].mean_bytes() for k in small if k in kinds
    )
    join = join_bytes_per_record(kinds)
    unlabelled = 1 - label_share
    # A record lives until its UTC day's hash expires: day end + label_join_ttl, i.e. 7 to 8 days.
    lifetime_s = LABEL_JOIN_TTL_S + DAY_S / 2
    per_second = 1.0  # 60 predictions/min
    parts[f"join records ({unlabelled:.0%} never labelled, 7.5 d)"] = (
        join * unlabelled * lifetime_s * per_second
    )
    return SteadyState(parts, join)


def join_bytes_per_record(kinds: dict[str, Kind]) -> float:
    """Bytes per join record: every join hash of the sample's fullest day (the day's slots), over
    the records they hold, so each hash's own overhead is counted too."""
    by_day: dict[str, list[KeyInfo]] = defaultdict(list)
    for key in kinds["join records (one UTC day, one slot)"].keys:
        by_day[key.name.rsplit(":", 2)[-2]].append(key)
    fullest = max(by_day.values(), key=lambda day: sum(k.entries for k in day))
    return sum(k.bytes for k in fullest) / sum(k.entries for k in fullest)


# --- report --------------------------------------------------------------------------------------


def mb(value: float) -> str:
    return f"{value / 2**20:,.1f} MB" if value < 2**30 else f"{value / 2**30:,.2f} GB"


def print_kinds(kinds: dict[str, Kind]) -> None:
    head = (
        f"{'key type':<42} {'keys':>6} {'encoding':<22} {'bytes/key':>10} {'entries/key':>11} "
        f"{'bytes/entry':>11} {'TTL (max)':>12}"
    )
    print(head)
    print("-" * len(head))
    for name, kind in sorted(kinds.items(), key=lambda kv: -kv[1].mean_bytes() * len(kv[1].keys)):
        entries = kind.mean_entries()
        ttl = max(k.ttl for k in kind.keys)
        ttl_text = (
            "none" if ttl == -1 else f"{ttl / 3600:.1f} h" if ttl < 2 * DAY_S else f"{ttl / DAY_S:.1f} d"
        )
        print(
            f"{name:<42} {len(kind.keys):>6} {kind.encodings():<22} {kind.mean_bytes():>10,.0f} "
            f"{entries:>11,.0f} {kind.mean_bytes() / max(entries, 1):>11,.1f} {ttl_text:>12}"
        )


async def scale_check(redis: Redis, n: int, per_key: dict[str, float]) -> None:
    """used_memory before/after writing N models with bench/_population.py, vs the per-key sizes."""
    prefix = f"bench-mem-scale-{uuid.uuid4().hex[:8]}"
    try:
        before = await used_memory(redis)
        population = await populate(redis, Keys(prefix), n)
        after = await used_memory(redis)
        infos = await inspect(redis, prefix)
        by_kind: dict[str, list[KeyInfo]] = defaultdict(list)
        for info in infos:
            by_kind[info.kind].append(info)
        summed = sum(i.bytes for i in infos)
        print(
            f"\n4. cross-check: {n} models, {population.pairs} versions, "
            f"60 minute + {population.history_hours} hour "
            f"buckets each ({len(infos):,} keys, written in {population.seconds:.0f} s)"
        )
        print(
            f"   INFO used_memory before {mb(before)}, after {mb(after)}: delta {mb(after - before)} "
            f"({(after - before) / len(infos):,.0f} B/key; shared server, other clients included)"
        )
        print(
            f"   sum of MEMORY USAGE over those keys: {mb(summed)} ({summed / len(infos):,.0f} B/key); "
            f"the rest of the delta is the expires dict and keyspace table growth"
        )
        for kind, keys in sorted(by_kind.items(), key=lambda kv: -sum(k.bytes for k in kv[1])):
            mean = statistics.mean(k.bytes for k in keys)
            ref = per_key.get(kind)
            print(
                f"   {kind:<30} {len(keys):>8,} keys x {mean:>7,.0f} B = {mb(sum(k.bytes for k in keys)):>10}"
                + (f"  (sample through the real ingest: {ref:,.0f} B/key)" if ref else "")
            )
    finally:
        await delete_prefix(redis, prefix)


async def main() -> None:
    logging.basicConfig(level=logging.ERROR)  # the evaluator logs every incident it opens
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--hours", type=int, default=26, help="hours of sample traffic (26: the unfavourable set's TTL)"
    )
    parser.add_argument(
        "--scale-models", type=int, default=1000, help="N for the used_memory cross-check (0: skip)"
    )
    parser.add_argument("--models", type=int, default=1000, help="N for the steady-state total")
    parser.add_argument(
        "--rate", type=float, default=1000.0, help="predictions/s for the join-record estimate"
    )
    parser.add_argument("--redis-url", default=Settings().redis_url)
    args = parser.parse_args()
    settings = Settings()
    redis = Redis.from_url(args.redis_url)
    prefix = f"bench-mem-{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix)
    evidence = Path(tempfile.mkdtemp(prefix="aimon-bench-evidence-"))
    config = await redis.config_get("hash-max-listpack-*")
    zconfig = await redis.config_get("zset-max-listpack-*")
    try:
        before = await used_memory(redis)
        sample = await write_sample(redis, keys, args.hours, settings, evidence)
        after = await used_memory(redis)
        infos = await inspect(redis, prefix)
        kinds: dict[str, Kind] = {}
        for info in infos:
            kinds.setdefault(info.kind, Kind(info.kind)).keys.append(info)
        summed = sum(i.bytes for i in infos)
        print(
            f"1. sample: model {MODEL!r}, {sample.predictions:,} predictions over {args.hours} h and "
            f"{sample.labels:,} labels through RedisStore.apply_predictions/apply_labels, "
            "access + registry events, "
            f"2 evaluator ticks (opened: {', '.join(sample.opened)}); {sample.seconds:.0f} s"
        )
        print(
            f"   {len(infos):,} keys; INFO used_memory delta {mb(after - before)} (shared server); "
            f"sum of MEMORY USAGE {mb(summed)}"
        )
        print(f"   Redis config: {config}, {zconfig}\n")
        print_kinds(kinds)

        minute = kinds["minute bucket"]
        hour_keys = sorted(kinds["hour bucket"].keys, key=lambda k: k.entries)[
            len(kinds["hour bucket"].keys) // 2 :
        ]
        per_field_m = statistics.mean(k.bytes / k.entries for k in minute.keys)
        per_field_h = statistics.mean(k.bytes / k.entries for k in hour_keys)
        minutes = settings.minute_bucket_ttl_s // 60
        hours = settings.hour_bucket_ttl_s // 3600
        groups = sum(len(v) for v in GROUPS.values())
        print(
            f"\n   bytes per bucket hash: minute {minute.mean_bytes():,.0f} B "
            f"({minute.mean_entries():.0f} fields), "
            f"hour {statistics.mean(k.bytes for k in hour_keys):,.0f} B "
            f"({statistics.mean(k.entries for k in hour_keys):.0f} fields), {minute.encodings()} encoding"
        )
        print(
            f"   bytes per series (one counter field of one group in one bucket): "
            f"minute {per_field_m:.1f} B, "
            f"hour {per_field_h:.1f} B"
        )
        print(
            f"   one series tracked over its retention ({minutes:,} minute + {hours} hour buckets): "
            f"{minutes * per_field_m + hours * per_field_h:,.0f} B; "
            "one group value (8 stats: n dec pos err lab cor apos fn): "
            f"{8 * (minutes * per_field_m + hours * per_field_h) / 1024:,.0f} kB"
        )

        for name in ("users seen zset", "users served zset"):
            users = kinds[name]
            print(
                f"   {name}: {users.mean_bytes():,.0f} B for {users.mean_entries():,.0f} users "
                f"({users.encodings()}): "
                f"{users.mean_bytes() / max(users.mean_entries(), 1):,.1f} B per distinct user"
            )
        totals = kinds["totals hash"]
        print(
            f"   totals hash (per model, every version): {totals.mean_bytes():,.0f} B for "
            f"{totals.mean_entries():,.0f} fields ({totals.encodings()})"
        )

        # 2. TTLs
        print("\n2. keys without a TTL (TTL = -1) under the sample's prefix:")
        permanent = [k for k in infos if k.ttl == -1]
        if not permanent:
            print("   none")
        for info in sorted(permanent, key=lambda k: k.kind):
            documented = next(
                (why for tail, why in DOCUMENTED_PERMANENT.items() if info.tail.endswith(tail)), None
            )
            print(
                f"   {info.kind:<30} {info.name[len(prefix) :][:44]:<44} {info.bytes:>6,} B  "
                f"{'documented' if documented else 'NOT documented'}; {GROWTH.get(info.kind, '?')}"
            )
        print(f"   {len(infos) - len(permanent):,} of {len(infos):,} keys have a TTL")

        # 3. steady state
        for label_share in (0.0, 0.8):
            state = steady_state(kinds, settings, label_share)
            print(
                f"\n3. steady state per model-version at 1 prediction/s, {groups} groups, "
                f"{label_share:.0%} of predictions labelled within 7 days:"
            )
            for name, value in sorted(state.parts.items(), key=lambda kv: -kv[1]):
                print(f"   {name:<46} {mb(value):>12}  {100 * value / state.total:5.1f} %")
            print(f"   {'total per model-version':<46} {mb(state.total):>12}")
            print(
                f"   {f'x {args.models:,} models (1 version each, 1 prediction/s each)':<46} "
                f"{mb(state.total * args.models):>12}"
            )
            buckets = sum(v for k, v in state.parts.items() if not k.startswith("join"))
            print(f"   {'  of which everything but the join records':<46} {mb(buckets * args.models):>12}")
        join = join_bytes_per_record(kinds)
        per_day = args.rate * DAY_S
        print(
            f"\n   join records: {join:,.0f} B per prediction awaiting its label "
            f"(hashtable encoding, request_id -> JSON record)"
        )
        print(
            f"   at {args.rate:,.0f} predictions/s: {mb(join * per_day)} per day; kept 7 days "
            f"(label_join_ttl): {mb(join * per_day * 7)}; "
            "as written (until the end of the prediction's UTC day "
            f"+ 7 d, 7.5 d on average): {mb(join * per_day * 7.5)} when no label ever arrives; labels delete "
            f"their record, so x (1 - labelled share)"
        )

        if args.scale_models:
            per_key = {name: kind.mean_bytes() for name, kind in kinds.items()}
            await scale_check(redis, args.scale_models, per_key)
    finally:
        deleted = await delete_prefix(redis, prefix)
        left = await count_prefix(redis, prefix)
        await redis.aclose()
        shutil.rmtree(evidence, ignore_errors=True)
        print(f"\ncleaned up: {deleted:,} keys deleted under {prefix}: ({left} left)")


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # on SIGTERM too, unwind through the `finally` that deletes our keys


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    asyncio.run(main())
