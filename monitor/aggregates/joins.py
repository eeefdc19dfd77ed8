"""The compact records that join a late label to its prediction (pure; the Lua side is common.lua).

A prediction waits for its label as one field of a small hash: `<request digest>` ->
`<shape id><minute of day><positive><prediction>`, about 32 bytes in Redis's listpack encoding
(the JSON records before were about 200 bytes each in a hashtable):

- the request id is kept as a 72-bit digest (12 base64url characters). Two requests of one model
  and one day share a digest with a probability of about n² / 2^73: 10⁻¹³ at 86,400 a day;
- the version and the group field prefixes, which every prediction of the same combination repeats,
  are kept once per model in the shapes hash (`aimon:{m}:shapes`, shape id -> JSON [version,
  [prefixes]]), and each record names its shape by an 8-character digest;
- the minute is the minute of the record's UTC day (the day is in the hash's key), 4 digits;
- the prediction's canonical text is kept as it is up to 16 bytes, and as `#` + a digest beyond
  (the label's is compacted the same way, so accuracy compares the same strings).

A day's records are spread over `JOIN_SLOTS` hashes by digest, so at 1 prediction/s a hash holds
about 340 records and stays a listpack (Redis's `hash-max-listpack-entries`, 512 by default).
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache

import orjson

DAY_S = 86_400
# The record's layout is fixed width up to the prediction: common.lua's apply_label reads the shape id
# from characters 1-8 (the 6-byte digest in base64url), the minute from 9-12 and the decision from 13.
# Hashes per model and day. Fixed: a label finds its prediction's hash from its digest alone, so
# changing it strands the records already written.
JOIN_SLOTS = 256
MINUTE_CHARS = 4
PREDICTION_MAX_BYTES = 16


def _digest(data: bytes, size: int) -> bytes:
    return hashlib.blake2b(data, digest_size=size).digest()


def request_digest(request_id: str) -> tuple[str, int]:
    """The join field of a request id and the slot (0..JOIN_SLOTS-1) of the hash that holds it."""
    raw = _digest(request_id.encode(), 9)
    return base64.urlsafe_b64encode(raw).decode(), int.from_bytes(raw[:4], "big") % JOIN_SLOTS


@lru_cache(maxsize=65_536)
def shape_id(version: str, prefixes: tuple[str, ...]) -> tuple[str, str]:
    """The id of a (version, group prefixes) combination and what the shapes hash holds for it."""
    body = orjson.dumps([version, list(prefixes)])
    return base64.urlsafe_b64encode(_digest(body, 6)).decode(), body.decode()


@lru_cache(maxsize=4096)
def compact_value(text: str) -> str:
    """A canonical prediction or label text, digested when longer than PREDICTION_MAX_BYTES."""
    raw = text.encode()
    if len(raw) <= PREDICTION_MAX_BYTES:
        return text
    return "#" + base64.urlsafe_b64encode(_digest(raw, 9)).decode()


def _positive_char(positive: bool | None) -> str:
    return "-" if positive is None else "1" if positive else "0"


def prediction_record(shape: str, minute: int, positive: bool | None, prediction: str) -> str:
    """A pending prediction's join record: `minute` is its minute bucket's start (epoch seconds)."""
    minute_of_day = (minute % DAY_S) // 60
    return f"{shape}{minute_of_day:0{MINUTE_CHARS}d}{_positive_char(positive)}{compact_value(prediction)}"


def label_record(positive: bool | None, label: str) -> str:
    """What a label carries to its join: whether it is favourable, and its compacted value."""
    return _positive_char(positive) + compact_value(label)
