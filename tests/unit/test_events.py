"""Decoding and validation of every wire schema: good and bad values, field by field."""

from __future__ import annotations

import orjson
import pytest

from monitor.events import (
    REASON_EMPTY,
    REASON_INVALID_EVENT,
    REASON_INVALID_JSON,
    REASON_TOO_LARGE,
    AccessEvent,
    EventDecoder,
    LabelEvent,
    PredictionEvent,
    RegistryEvent,
    to_epoch_s,
)

GOOD = {
    "model_id": "credit",
    "model_version": "1.2.0",
    "request_id": "r-1",
    "ts": 1_760_000_000.5,
    "prediction": 1,
    "positive": True,
    "confidence": 0.91,
    "latency_ms": 12.5,
    "groups": {"sex": "F", "age_band": "25-34", "zip3": 941},
    "flags": ["toxic"],
    "user_id": "u-1",
    "subject_id": "s-1",
}

decoder = EventDecoder(PredictionEvent, max_value_bytes=64 * 1024)


def value(**changes: object) -> bytes:
    event = {**GOOD, **changes}
    return orjson.dumps({k: v for k, v in event.items() if v is not DROP})


DROP = object()


def test_good_event_keeps_every_field() -> None:
    events, rejects = decoder.decode(value())
    assert rejects == []
    [event] = events
    assert event.model_id == "credit" and event.model_version == "1.2.0"
    assert event.epoch_s == 1_760_000_000.5
    assert event.positive is True and event.confidence == 0.91 and event.latency_ms == 12.5
    assert event.groups == {"sex": "F", "age_band": "25-34", "zip3": 941}
    assert event.flags == ["toxic"] and not event.failed


@pytest.mark.parametrize(
    ("changes", "check"),
    [
        ({"ts": "2025-10-09T08:53:20Z"}, lambda e: e.epoch_s == 1_759_999_999 + 1.0),
        ({"ts": "2025-10-09T10:53:20+02:00"}, lambda e: e.epoch_s == 1_760_000_000.0),
        ({"ts": 1_760_000_000}, lambda e: e.epoch_s == 1_760_000_000.0),
        ({"error": True, "prediction": DROP, "positive": DROP}, lambda e: e.failed and e.prediction is None),
        ({"error": "timeout"}, lambda e: e.failed),
        ({"error": False}, lambda e: not e.failed),
        ({"error": ""}, lambda e: not e.failed),
        ({"prediction": "approve"}, lambda e: e.prediction == "approve"),
        ({"prediction": 0.25}, lambda e: e.prediction == 0.25),
        ({"confidence": 0}, lambda e: e.confidence == 0.0),
        ({"confidence": 1}, lambda e: e.confidence == 1.0),
        ({"latency_ms": 0}, lambda e: e.latency_ms == 0.0),
        ({"groups": DROP, "flags": DROP}, lambda e: e.groups == {} and e.flags == []),
        ({"unknown_field": {"x": [1, 2]}}, lambda e: not hasattr(e, "unknown_field")),
        ({"positive": DROP}, lambda e: e.positive is None),
    ],
)
def test_good_values(changes: dict[str, object], check: object) -> None:
    events, rejects = decoder.decode(value(**changes))
    assert rejects == []
    assert check(events[0])  # type: ignore[operator]


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"model_id": DROP}, "model_id"),
        ({"model_version": DROP}, "model_version"),
        ({"request_id": DROP}, "request_id"),
        ({"ts": DROP}, "ts"),
        ({"model_id": ""}, "model_id"),
        ({"model_id": 7}, "model_id"),
        ({"ts": "yesterday"}, "yesterday"),
        ({"ts": "2025-10-09T08:53:20"}, "UTC offset"),
        ({"ts": -5}, "epoch"),
        ({"ts": True}, "ts"),
        ({"confidence": 1.5}, "confidence"),
        ({"confidence": -0.1}, "confidence"),
        ({"confidence": "high"}, "confidence"),
        ({"latency_ms": -1}, "latency_ms"),
        ({"positive": "yes"}, "positive"),
        ({"groups": ["F"]}, "groups"),
        ({"groups": {"sex": None}}, "groups"),
        ({"flags": "toxic"}, "flags"),
        ({"prediction": {"nested": 1}}, "prediction"),
        ({"error": 3}, "error"),
    ],
)
def test_bad_values_are_rejected_with_the_field_named(changes: dict[str, object], needle: str) -> None:
    raw = value(**changes)
    events, rejects = decoder.decode(raw)
    assert events == []
    [rejected] = rejects
    assert rejected.reason == REASON_INVALID_EVENT
    assert needle in rejected.detail
    assert rejected.raw == raw


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", REASON_EMPTY),
        (None, REASON_EMPTY),
        (b"   \n", REASON_EMPTY),
        (b"{not json", REASON_INVALID_JSON),
        (b'{"model_id": "a"', REASON_INVALID_JSON),
        (b"\xff\xfe", REASON_INVALID_JSON),
        (b"42", REASON_INVALID_EVENT),
        (b'"a string"', REASON_INVALID_EVENT),
        (b"null", REASON_INVALID_EVENT),
        (b"x" * (64 * 1024 + 1), REASON_TOO_LARGE),
        # found by fuzzing: validation fails at [0] before the parser reaches the bad token
        (b"[null, Infinity]", REASON_INVALID_JSON),
    ],
)
def test_whole_value_rejects(raw: bytes | None, reason: str) -> None:
    events, rejects = decoder.decode(raw)
    assert events == []
    assert [r.reason for r in rejects] == [reason]
    assert rejects[0].raw == (raw or b"")


def test_array_decodes_every_element() -> None:
    raw = orjson.dumps([{**GOOD, "request_id": f"r-{i}"} for i in range(50)])
    events, rejects = decoder.decode(raw)
    assert rejects == [] and [e.request_id for e in events] == [f"r-{i}" for i in range(50)]


def test_array_with_one_bad_element_keeps_the_good_ones() -> None:
    elements = [{**GOOD, "request_id": f"r-{i}"} for i in range(5)]
    elements[3] = {**GOOD, "confidence": 7}
    events, rejects = decoder.decode(orjson.dumps(elements))
    assert [e.request_id for e in events] == ["r-0", "r-1", "r-2", "r-4"]
    [rejected] = rejects
    assert rejected.index == 3 and rejected.reason == REASON_INVALID_EVENT
    assert orjson.loads(rejected.raw) == elements[3]
    assert rejected.detail.startswith("[3] ")


def test_empty_array_is_no_event_and_no_reject() -> None:
    assert decoder.decode(b"[]") == ([], [])


def test_array_of_non_objects() -> None:
    events, rejects = decoder.decode(b'[1, "x", null]')
    assert events == [] and [r.index for r in rejects] == [0, 1, 2]


def test_to_epoch_rejects_nan() -> None:
    with pytest.raises(ValueError):
        to_epoch_s(float("nan"))


LABEL = {"request_id": "r", "model_id": "m", "ts": 1.0, "label": 1, "positive": False}
ACCESS = {
    "ts": "2025-01-01T03:00:00Z",
    "principal": "svc-a",
    "action": "download",
    "resource_type": "model_weights",
    "resource": "s3://w/credit/1.2.0",
    "outcome": "allowed",
    "source_ip": "10.0.0.1",
    "auth_method": "iam",
    "bytes": 10,
    "api_key_id": "k",
}
REGISTRY = {
    "ts": 1.0,
    "model_id": "m",
    "version": "1",
    "event": "approved",
    "sha256": "ab" * 32,
    "actor": "alice",
}


@pytest.mark.parametrize(
    ("schema", "good", "bad_changes"),
    [
        (LabelEvent, LABEL, [{"label": [1]}, {"request_id": None}, {"positive": 2}]),
        (
            AccessEvent,
            ACCESS,
            [{"action": "steal"}, {"resource_type": "x"}, {"outcome": "maybe"}, {"bytes": -1}],
        ),
        (RegistryEvent, REGISTRY, [{"sha256": "zz"}, {"event": "deleted"}, {"actor": ""}]),
    ],
)
def test_other_schemas(schema: type, good: dict[str, object], bad_changes: list[dict[str, object]]) -> None:
    dec = EventDecoder(schema, max_value_bytes=4096)
    events, rejects = dec.decode(orjson.dumps(good))
    assert rejects == [] and len(events) == 1
    for changes in bad_changes:
        events, rejects = dec.decode(orjson.dumps({**good, **changes}))
        assert events == [] and rejects[0].reason == REASON_INVALID_EVENT, changes
