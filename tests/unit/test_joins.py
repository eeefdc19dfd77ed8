"""The compact join records: small, deterministic, and equal exactly when the values are."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from monitor.aggregates.joins import (
    JOIN_SLOTS,
    compact_value,
    label_record,
    prediction_record,
    request_digest,
    shape_id,
)


@given(st.text(min_size=1, max_size=512))
def test_a_request_digest_is_twelve_characters_and_names_one_slot(request_id: str) -> None:
    digest, slot = request_digest(request_id)
    assert len(digest) == 12 and 0 <= slot < JOIN_SLOTS
    assert request_digest(request_id) == (digest, slot)


@given(st.text(max_size=300), st.text(max_size=300))
def test_compacted_values_are_equal_exactly_when_the_values_are(a: str, b: str) -> None:
    assert (compact_value(a) == compact_value(b)) == (a == b)
    assert len(compact_value(a).encode()) <= 16


def test_a_record_holds_its_minute_of_the_day_and_decision() -> None:
    shape, body = shape_id("v2", ("g|sex|F|",))
    assert body == '["v2",["g|sex|F|"]]' and len(shape) == 8
    record = prediction_record(shape, 1_700_000_040, False, "s:deny")
    minute_of_day = (1_700_000_040 % 86_400) // 60
    assert record == f"{shape}{minute_of_day:04d}0s:deny"
    assert label_record(True, "s:deny") == "1s:deny"
    assert label_record(None, "1") == "-1"
