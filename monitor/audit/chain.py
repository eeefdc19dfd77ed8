"""The audit chain's pure core: sealing an entry (HMAC-SHA256), and checking a chain against its anchor.

An entry is sealed by `seal`: `hash` = HMAC-SHA256(secret, canonical JSON of every other field), the
previous entry's `hash` among them (`prev`), so an entry cannot be changed, forged, reordered or
inserted without the secret; `kid` names the secret without revealing it. Entries written before the
chain was keyed carry a plain SHA-256 `hash` and no `alg`: they still verify (links and hashes) and
are reported as unkeyed legacy entries, but only before the first keyed entry, since anyone can
compute a SHA-256.

What a keyed chain alone cannot show is an entry removed from its end (RPOP) or the whole list cut
short: `verify` also compares the chain with its anchor, the entries as published to Kafka.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

GENESIS = "0" * 64
ALG = "hmac-sha256"
# How long before a Redis restart an entry may have been written and still be lost with it:
# `appendfsync everysec` loses at most about a second of writes; two leave room for the fsync's own time.
AOF_LOSS_WINDOW_S = 2.0
# Redis tells its start only to the second (INFO's uptime_in_seconds counts whole seconds).
REDIS_START_RESOLUTION_S = 1.0


def canonical(entry: Mapping[str, Any]) -> bytes:
    """The bytes an entry's seal covers: its canonical JSON (sorted keys), its own `hash` left out."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def legacy_hash(entry: Mapping[str, Any]) -> str:
    """The plain SHA-256 of an entry written before the chain was keyed."""
    return hashlib.sha256(canonical(entry)).hexdigest()


def key_id(secret: bytes) -> str:
    """A public name for a secret (16 hex digits of an HMAC of a fixed label): tells keys apart."""
    return hmac.new(secret, b"aimon audit key id", hashlib.sha256).hexdigest()[:16]


def seal(entry: dict[str, Any], secret: bytes) -> dict[str, Any]:
    """`entry` with `alg`, `kid` and its HMAC-SHA256 `hash` (the entry itself is changed and returned)."""
    entry.pop("hash", None)
    entry["alg"] = ALG
    entry["kid"] = key_id(secret)
    entry["hash"] = hmac.new(secret, canonical(entry), hashlib.sha256).hexdigest()
    return entry


def check_seal(entry: Mapping[str, Any], secret: bytes) -> str | None:
    """Why `entry`'s own seal is wrong, or None if it holds (a legacy entry checks its SHA-256)."""
    claimed = entry.get("hash")
    if not isinstance(claimed, str):
        return "has no hash"
    if "alg" not in entry:
        return None if hmac.compare_digest(legacy_hash(entry), claimed) else "changed (its SHA-256 is wrong)"
    if entry["alg"] != ALG:
        return f"has an unknown alg {entry['alg']!r}"
    if entry.get("kid") != key_id(secret):
        return (
            f"is keyed with another secret (key id {entry.get('kid')}, this verifier's is {key_id(secret)}): "
            "set MONITOR_AUDIT_SECRET to the workers' secret, or it is forged"
        )
    actual = hmac.new(secret, canonical(entry), hashlib.sha256).hexdigest()
    return None if hmac.compare_digest(actual, claimed) else "has a wrong HMAC"


@dataclass(frozen=True)
class Verification:
    """The result of checking the chain (and its anchor): `problem` is the one line naming the entry."""

    entries: int
    ok: bool
    first_bad: int | None = None  # seq of the entry named by `problem`
    problem: str = ""
    # tampered: changed, forged, inserted or removed; missing: the anchor has newer entries that Redis
    # lacks and Redis restarted right after they were written (possibly lost, possibly removed);
    # unanchored: authentic entries that the anchor lacks.
    verdict: str = "intact"
    anchored: int | None = None  # entries on the anchor; None when the anchor was not read
    legacy: int = 0  # unkeyed entries (plain SHA-256), all before the first keyed one
    notes: tuple[str, ...] = field(default=())


def _when(ts: Any) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if isinstance(ts, (int, float)) else "?"


def _describe(entry: Mapping[str, Any]) -> str:
    return f"{entry.get('action')} {entry.get('target')} by {entry.get('who')} at {_when(entry.get('at'))}"


def _changed_fields(stored: Mapping[str, Any], original: Mapping[str, Any]) -> str:
    names = sorted(k for k in {*stored, *original} - {"hash"} if stored.get(k) != original.get(k))
    return ", ".join(names) or "hash"


def _entries(n: int) -> str:
    return "1 entry" if n == 1 else f"{n} entries"


def _them(n: int) -> str:
    return "it" if n == 1 else "them"


def _span(first: int, last: int) -> str:
    return f"seq {first}" if first == last else f"seq {first}..{last}"


def _read_anchor(
    anchor: Sequence[Mapping[str, Any]], secret: bytes
) -> tuple[dict[int, list[Mapping[str, Any]]], str]:
    """seq -> the anchored entries of that seq (two after a fork), or a problem with a record itself."""
    by_seq: dict[int, list[Mapping[str, Any]]] = {}
    for offset, entry in enumerate(anchor):
        seq = entry.get("seq")
        if not isinstance(seq, int):
            return by_seq, f"anchor record {offset} has no seq"
        why = check_seal(entry, secret)
        if why is not None:
            return by_seq, f"anchor record {offset} (entry {seq}) {why}: forged on the audit topic"
        versions = by_seq.setdefault(seq, [])
        if all(v.get("hash") != entry.get("hash") for v in versions):
            versions.append(entry)  # a re-sent entry is the same record twice
    return by_seq, ""


def verify_chain(
    items: Sequence[bytes | Mapping[str, Any]],
    secret: bytes,
    anchor: Sequence[Mapping[str, Any]] | None = None,
    *,
    redis_started_at: float | None = None,
) -> Verification:
    """Check the chain in Redis (oldest first) and, when given, against the anchor's entries (pure).

    Entries the anchor has and Redis lacks at its end are *missing*, not proven tampered, only when
    they may have been lost in a Redis crash: written within AOF_LOSS_WINDOW_S before Redis last
    started (`redis_started_at`, epoch s), or when that start is unknown. Written while Redis has been
    up, they were removed (RPOP, LTRIM): tampered.
    """
    n = len(items)

    def bad(seq: int | None, problem: str, verdict: str = "tampered") -> Verification:
        return Verification(n, False, seq, problem, verdict, None if anchor is None else len(anchor))

    by_seq: dict[int, list[Mapping[str, Any]]] = {}
    if anchor is not None:
        by_seq, problem = _read_anchor(anchor, secret)
        if problem:
            return bad(None, problem)
    entries: list[Mapping[str, Any]] = []
    for index, item in enumerate(items):
        try:
            entry = orjson.loads(item) if isinstance(item, bytes) else item
        except orjson.JSONDecodeError:
            return bad(None, f"the item at index {index} of the list is no JSON: inserted or overwritten")
        if not isinstance(entry, Mapping) or not isinstance(entry.get("seq"), int):
            return bad(None, f"the item at index {index} of the list is no entry: inserted or overwritten")
        entries.append(entry)

    prev, keyed, legacy = GENESIS, False, 0
    lost: list[tuple[int, Mapping[str, Any]]] = []  # anchored originals replaced by another entry
    for index, entry in enumerate(entries):
        seq = entry["seq"]  # the chain starts at 0 and is never trimmed: an entry's index is its seq
        versions = by_seq.get(seq, [])
        if seq > index and any(e["seq"] == index for e in entries[index + 1 :]):
            return bad(index, f"entry {index} was moved: the list holds entry {seq} in its place (reordered)")
        if seq > index:
            gone = f"{_entries(seq - index)} ({_span(index, seq - 1)})"
            were = "was" if seq - index == 1 else "were"
            first = by_seq.get(index)
            what = f"; the first: {_describe(first[0])}" if first else ""
            where = f"the oldest {gone}" if index == 0 else f"{gone} after entry {index - 1}"
            return bad(index, f"{where} {were} deleted{what}")
        if seq < index:
            return bad(seq, f"an entry {seq} was inserted after entry {index - 1} (a copy or a forgery)")
        why = check_seal(entry, secret)
        if why is not None:
            nxt = entries[index + 1] if index + 1 < len(entries) else None
            if nxt is not None and (
                nxt.get("seq") == seq or any(nxt.get("hash") == v.get("hash") for v in versions)
            ):
                return bad(seq, f"a forged entry {seq} was inserted before the real one (it {why})")
            if versions:
                fields = _changed_fields(entry, versions[0])
                return bad(seq, f"entry {seq} was changed after it was written ({fields}; it {why})")
            if anchor is not None and not by_seq.get(seq):
                return bad(seq, f"entry {seq} {why} and is not on the audit topic: forged")
            return bad(seq, f"entry {seq} {why}: changed or forged")
        if "alg" in entry:
            keyed = True
        elif keyed:
            return bad(seq, f"entry {seq} has no HMAC after keyed entries: forged")
        else:
            legacy += 1
        if entry.get("prev") != prev:
            return bad(seq, f"entry {seq} does not link to entry {seq - 1}")
        if versions and all(v.get("hash") != entry.get("hash") for v in versions):
            fields = _changed_fields(entry, versions[0])
            return bad(seq, f"entry {seq} differs from the audit topic's ({fields}), though both are sealed")
        lost += [(seq, v) for v in versions if v.get("hash") != entry.get("hash")]
        prev = str(entry["hash"])

    notes: list[str] = []
    if legacy:
        notes.append(
            f"{_entries(legacy)} ({_span(0, legacy - 1)}) unkeyed legacy: SHA-256 only, written before the "
            "chain was keyed"
        )
    if anchor is None:
        return Verification(n, True, legacy=legacy, notes=tuple(notes))

    # Anchored entries Redis lacks: past its end, or replaced by a later append that took their seq.
    lost += [(seq, v) for seq in sorted(by_seq) if seq >= n for v in by_seq[seq]]
    if lost:
        lost.sort(key=lambda pair: (pair[0], pair[1].get("at") or 0))
        first_seq, first_lost = lost[0]
        line = (
            f"{_entries(len(lost))} missing from Redis, last at seq {lost[-1][0]} "
            f"({_describe(lost[-1][1])}); the audit topic has {_them(len(lost))}"
        )
        written = first_lost.get("at")
        if redis_started_at is None:
            return bad(first_seq, f"{line}: lost in a Redis crash or removed", "missing")
        slack = REDIS_START_RESOLUTION_S
        if (
            isinstance(written, (int, float))
            and written - slack <= redis_started_at <= written + AOF_LOSS_WINDOW_S + slack
        ):
            return bad(
                first_seq,
                f"{line}: written within {AOF_LOSS_WINDOW_S:g} s before Redis restarted at "
                f"{_when(redis_started_at)}, so lost with its unsynced writes, or removed",
                "missing",
            )
        return bad(
            first_seq,
            f"{line}: removed, for Redis (up since {_when(redis_started_at)}) had written "
            f"{_them(len(lost))} to disk, not lost in a crash",
        )
    unanchored = [seq for seq in range(n) if seq not in by_seq]
    if unanchored:
        return bad(
            unanchored[0],
            f"{_entries(len(unanchored))} not on the audit topic ({_span(unanchored[0], unanchored[-1])}): "
            "sealed, so written by the monitor, but a removal would go unnoticed; the next audit entry "
            f"re-sends {_them(len(unanchored))}",
            "unanchored",
        )
    return Verification(n, True, anchored=len(anchor), legacy=legacy, notes=tuple(notes))
