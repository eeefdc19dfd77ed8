"""Property-based fuzzing of every decoder: thousands of generated bad values, no crash, and every
value either decodes or is rejected with a known reason (nothing disappears)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
)

REASONS = {REASON_EMPTY, REASON_INVALID_EVENT, REASON_INVALID_JSON, REASON_TOO_LARGE}
DECODERS = [
    EventDecoder(schema, max_value_bytes=16 * 1024)
    for schema in (PredictionEvent, LabelEvent, AccessEvent, RegistryEvent)
]
VALID: dict[type, dict[str, Any]] = {
    PredictionEvent: {
        "model_id": "m",
        "model_version": "1",
        "request_id": "r",
        "ts": 1_700_000_000.0,
        "positive": True,
    },
    LabelEvent: {"request_id": "r", "model_id": "m", "ts": 1_700_000_000.0, "label": 1},
    AccessEvent: {
        "ts": 1_700_000_000.0,
        "principal": "p",
        "action": "read",
        "resource_type": "training_data",
        "resource": "s3://x",
        "outcome": "allowed",
    },
    RegistryEvent: {
        "ts": 1_700_000_000.0,
        "model_id": "m",
        "version": "1",
        "event": "approved",
        "sha256": "a" * 64,
        "actor": "x",
    },
}

# Finite floats only: json.dumps writes inf as `Infinity`, which is not JSON (that case is covered
# by the arbitrary-bytes test, where such a value is dead-lettered whole as invalid_json).
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(decoder: EventDecoder[Any], value: bytes) -> None:
    events, rejects = decoder.decode(value)
    assert all(r.reason in REASONS and r.detail for r in rejects)
    assert events or rejects or value.strip() in (b"[]",)  # nothing vanishes silently
    for event in events:
        assert isinstance(event, decoder.schema) and isinstance(event.epoch_s, float)


@pytest.mark.parametrize("decoder", DECODERS, ids=lambda d: d.schema.__name__)
@FUZZ
@given(value=st.binary(max_size=300))
def test_arbitrary_bytes(decoder: EventDecoder[Any], value: bytes) -> None:
    check(decoder, value)


@pytest.mark.parametrize("decoder", DECODERS, ids=lambda d: d.schema.__name__)
@FUZZ
@given(value=json_values)
def test_arbitrary_json(decoder: EventDecoder[Any], value: Any) -> None:
    check(decoder, json.dumps(value).encode())


@pytest.mark.parametrize("decoder", DECODERS, ids=lambda d: d.schema.__name__)
@FUZZ
@given(data=st.data())
def test_valid_events_with_one_field_broken(decoder: EventDecoder[Any], data: st.DataObject) -> None:
    good = VALID[decoder.schema]
    field = data.draw(st.sampled_from(sorted(good)))
    broken = {**good, field: data.draw(json_values)}
    array = [good, broken, good]
    events, rejects = decoder.decode(json.dumps(array).encode())
    assert len(events) + len(rejects) == 3  # each element is either counted or dead-lettered
    assert len(events) >= 2
    assert all(r.index == 1 and r.reason == REASON_INVALID_EVENT for r in rejects)
