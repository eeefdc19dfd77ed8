"""The audit chain's pure verification: every kind of tampering is named, an intact chain passes."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.audit.chain import (
    GENESIS,
    check_seal,
    key_id,
    legacy_hash,
    seal,
    verify_chain,
)
from monitor.audit.query import AuditQuery, parse_time

SECRET = b"s3cret-for-the-unit-tests-0123456789"
T0 = 1_764_000_000.0


def chain(n: int, *, secret: bytes = SECRET, legacy: int = 0, start: float = T0) -> list[dict[str, Any]]:
    """n entries as AuditLog.append writes them (the first `legacy` ones unkeyed, as before the key)."""
    out: list[dict[str, Any]] = []
    prev = GENESIS
    for seq in range(n):
        entry: dict[str, Any] = {
            "seq": seq,
            "at": start + seq,
            "who": "human:dana",
            "action": "acknowledge" if seq % 2 else "resolve",
            "target": f"INC-{seq}",
            "why": f"reason {seq}",
            "details": {"command": f"c{seq}"},
            "prev": prev,
        }
        if seq < legacy:
            entry["hash"] = legacy_hash(entry)
        else:
            seal(entry, secret)
        out.append(entry)
        prev = entry["hash"]
    return out


def raw(entries: list[dict[str, Any]]) -> list[bytes]:
    return [orjson.dumps(e) for e in entries]


def test_an_intact_chain_and_its_anchor_verify() -> None:
    entries = chain(5)
    result = verify_chain(raw(entries), SECRET, entries)
    assert (result.ok, result.entries, result.anchored, result.verdict) == (True, 5, 5, "intact")


def test_an_empty_log_with_an_empty_anchor_is_intact() -> None:
    assert verify_chain([], SECRET, []).ok


def test_a_re_sent_entry_on_the_anchor_is_no_problem() -> None:
    entries = chain(3)
    assert verify_chain(raw(entries), SECRET, [*entries, entries[2]]).ok


def test_legacy_entries_verify_and_are_reported_as_unkeyed() -> None:
    entries = chain(5, legacy=3)
    result = verify_chain(raw(entries), SECRET, entries)
    assert result.ok and result.legacy == 3
    assert result.notes == (
        "3 entries (seq 0..2) unkeyed legacy: SHA-256 only, written before the chain was keyed",
    )


def test_an_unkeyed_entry_after_keyed_ones_is_forged() -> None:
    entries = chain(3)
    forged = {**entries[2], "why": "forged"}
    del forged["alg"], forged["kid"]
    forged["hash"] = legacy_hash(forged)
    result = verify_chain(raw([*entries[:2], forged]), SECRET, None)
    assert not result.ok and result.problem == "entry 2 has no HMAC after keyed entries: forged"


# Each tamper of a 5-entry chain in Redis (the anchor untouched) -> the line verify gives.
def _rpop(e: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return e[:-1]


def _ltrim_oldest(e: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return e[2:]


def _lset(e: list[dict[str, Any]]) -> list[dict[str, Any]]:
    changed = copy.deepcopy(e)
    changed[1]["why"] = "nothing to see here"
    return changed


def _lrem_middle(e: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [*e[:2], *e[3:]]


def _linsert_forged(e: list[dict[str, Any]]) -> list[dict[str, Any]]:
    forged = {**e[2], "why": "forged", "hash": "f" * 64}
    return [*e[:2], forged, *e[2:]]


def _forged_tail(e: list[dict[str, Any]]) -> list[dict[str, Any]]:
    forged = {**e[4], "seq": 5, "prev": e[4]["hash"], "why": "forged"}
    seal(forged, b"another-secret-not-the-workers-1234")
    forged["kid"] = e[4]["kid"]  # the forger copies the key id, but cannot make the HMAC
    return [*e, forged]


def _replayed(e: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [*e[:3], e[1], *e[3:]]


def _swapped(e: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e[0], e[2], e[1], *e[3:]]


def _emptied(e: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return []


TAMPERS = [
    (
        _rpop,
        4,
        "1 entry missing from Redis, last at seq 4 (resolve INC-4 by human:dana at 2025-11-24 16:00:04 UTC)",
    ),
    (
        _ltrim_oldest,
        0,
        "the oldest 2 entries (seq 0..1) were deleted; the first: resolve INC-0 by human:dana",
    ),
    (_lset, 1, "entry 1 was changed after it was written (why; it has a wrong HMAC)"),
    (_lrem_middle, 2, "1 entry (seq 2) after entry 1 was deleted; the first: resolve INC-2"),
    (_linsert_forged, 2, "a forged entry 2 was inserted before the real one (it has a wrong HMAC)"),
    (_forged_tail, 5, "entry 5 has a wrong HMAC and is not on the audit topic: forged"),
    (_replayed, 1, "an entry 1 was inserted after entry 2 (a copy or a forgery)"),
    (_swapped, 1, "entry 1 was moved: the list holds entry 2 in its place (reordered)"),
    (_emptied, 0, "5 entries missing from Redis, last at seq 4"),
]


@pytest.mark.parametrize(("tamper", "seq", "line"), TAMPERS, ids=[t[0].__name__[1:] for t in TAMPERS])
def test_every_tamper_is_named(tamper: Any, seq: int, line: str) -> None:
    entries = chain(5)
    # Redis up for an hour before the first entry: nothing it had can have been lost in a crash.
    result = verify_chain(raw(tamper(entries)), SECRET, entries, redis_started_at=T0 - 3600)
    assert not result.ok and result.verdict == "tampered"
    assert result.first_bad == seq
    assert line in result.problem, result.problem


def test_a_removed_tail_is_tampering_while_redis_was_up() -> None:
    entries = chain(5)
    result = verify_chain(raw(entries[:-1]), SECRET, entries, redis_started_at=T0 - 3600)
    assert result.verdict == "tampered"
    assert result.problem.endswith(
        "removed, for Redis (up since 2025-11-24 15:00:00 UTC) had written it to disk, not lost in a crash"
    )


def test_a_tail_lost_in_a_redis_crash_is_reported_as_missing() -> None:
    entries = chain(5)
    # Redis restarted 0.6 s after the last entry was written: appendfsync everysec may have lost it.
    result = verify_chain(raw(entries[:-1]), SECRET, entries, redis_started_at=entries[-1]["at"] + 0.6)
    assert (result.ok, result.verdict, result.first_bad) == (False, "missing", 4)
    assert result.problem.startswith("1 entry missing from Redis, last at seq 4 (")
    assert "written within 2 s before Redis restarted at" in result.problem
    assert result.problem.endswith("so lost with its unsynced writes, or removed")


def test_a_lost_entry_whose_seq_was_taken_by_a_later_append_is_missing() -> None:
    entries = chain(5)
    # Redis lost entry 4, then the worker appended a new entry 4 (on Redis and on the anchor).
    again = {**entries[4], "why": "after the crash", "at": entries[4]["at"] + 5}
    seal(again, SECRET)
    result = verify_chain(
        raw([*entries[:4], again]), SECRET, [*entries, again], redis_started_at=entries[4]["at"] + 1
    )
    assert (result.verdict, result.first_bad) == ("missing", 4)
    assert result.problem.startswith("1 entry missing from Redis, last at seq 4 (resolve INC-4")


def test_entries_not_on_the_anchor_are_named_unanchored() -> None:
    entries = chain(5)
    result = verify_chain(raw(entries), SECRET, entries[:3])
    assert (result.ok, result.verdict, result.first_bad) == (False, "unanchored", 3)
    assert result.problem.startswith(
        "2 entries not on the audit topic (seq 3..4): sealed, so written by the monitor"
    )


def test_a_forged_anchor_record_is_named() -> None:
    entries = chain(3)
    forged = {**entries[2], "why": "forged on kafka"}
    result = verify_chain(raw(entries), SECRET, [*entries, forged])
    assert result.problem == "anchor record 3 (entry 2) has a wrong HMAC: forged on the audit topic"


def test_another_secret_is_named_not_called_intact() -> None:
    entries = chain(3, secret=b"the-other-hosts-generated-secret-xx")
    result = verify_chain(raw(entries), SECRET, None)
    assert not result.ok
    assert result.problem.startswith(f"entry 0 is keyed with another secret (key id {entries[0]['kid']}, ")
    assert f"this verifier's is {key_id(SECRET)}" in result.problem


def test_items_that_are_no_entries_are_named() -> None:
    entries = raw(chain(3))
    assert verify_chain([*entries[:1], b"{nope", *entries[1:]], SECRET).problem == (
        "the item at index 1 of the list is no JSON: inserted or overwritten"
    )
    assert "index 2 of the list is no entry" in verify_chain([*entries[:2], b"[1]"], SECRET).problem


def test_without_the_anchor_a_removed_tail_goes_unseen() -> None:
    # The reason for the anchor: the chain alone cannot know it had a newer entry.
    entries = chain(5)
    assert verify_chain(raw(entries[:-1]), SECRET, None).ok


def test_the_secret_never_appears_in_an_entry() -> None:
    entry = chain(1)[0]
    assert SECRET.decode() not in orjson.dumps(entry).decode()
    assert check_seal(entry, SECRET) is None and entry["kid"] == key_id(SECRET)


ENTRY_FIELDS = ("at", "who", "action", "target", "why", "details", "prev", "seq")


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 12),
    data=st.data(),
)
def test_any_single_change_is_detected(n: int, data: st.DataObject) -> None:
    entries = chain(n)
    index = data.draw(st.integers(0, n - 1))
    name = data.draw(st.sampled_from(ENTRY_FIELDS))
    new = data.draw(
        st.one_of(
            st.text(max_size=8), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), st.none()
        )
    )
    tampered = copy.deepcopy(entries)
    if tampered[index].get(name) == new:
        return
    tampered[index][name] = new
    for anchor in (entries, None):
        assert not verify_chain(raw(tampered), SECRET, anchor).ok


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 12), data=st.data())
def test_any_deletion_is_detected_against_the_anchor(n: int, data: st.DataObject) -> None:
    entries = chain(n)
    start = data.draw(st.integers(0, n - 1))
    stop = data.draw(st.integers(start + 1, n))
    result = verify_chain(
        raw([*entries[:start], *entries[stop:]]), SECRET, entries, redis_started_at=T0 - 3600
    )
    assert not result.ok and result.first_bad == start and result.verdict == "tampered"


def test_query_filters() -> None:
    entries = chain(6)
    entries[5]["who"] = "human:erin"
    assert [e["seq"] for e in AuditQuery(who="dana").select(entries)] == [0, 1, 2, 3, 4]
    assert [e["seq"] for e in AuditQuery(who="human:erin").select(entries)] == [5]
    assert [e["seq"] for e in AuditQuery(action="acknowledge").select(entries)] == [1, 3, 5]
    assert [e["seq"] for e in AuditQuery(target="INC-2").select(entries)] == [2]
    assert [e["seq"] for e in AuditQuery(since=T0 + 2, until=T0 + 4).select(entries)] == [2, 3]
    assert [e["seq"] for e in AuditQuery(limit=2).select(entries)] == [4, 5]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2h", T0 - 7200),
        ("90s", T0 - 90),
        ("1w", T0 - 604_800),
        ("1764000000", T0),
        ("2025-11-24T16:00:00Z", T0),
        ("2025-11-24T17:00:00+01:00", T0),
        ("2025-11-24T16:00:00", T0),
    ],
)
def test_parse_time(text: str, expected: float) -> None:
    assert parse_time(text, T0) == expected


def test_parse_time_refuses_what_is_no_time() -> None:
    with pytest.raises(ValueError, match="'yesterday' is no time"):
        parse_time("yesterday", T0)
