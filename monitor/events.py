"""Wire schemas (docs/events.md) and the decoder that splits a message value into events and rejects.

A message value is one JSON object or a JSON array of them. Decoding tries the whole value at once
(the fast path, one msgspec call); only when that fails does it look at the elements one by one, so a
single bad element of an array costs that element, never its neighbours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec

from monitor.exceptions import DecodeError

NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
Unit = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0.0)]
Scalar = str | int | float | bool | None
GroupValue = str | int | float | bool

# Reason codes are Prometheus label values: keep the set small and stable.
REASON_EMPTY = "empty"
REASON_TOO_LARGE = "too_large"
REASON_INVALID_JSON = "invalid_json"
REASON_INVALID_EVENT = "invalid_event"


def to_epoch_s(ts: float | str) -> float:
    """Epoch seconds from epoch seconds or an RFC 3339 string; raises ValueError otherwise."""
    if isinstance(ts, str):
        parsed = datetime.fromisoformat(ts)
        if parsed.tzinfo is None:
            raise ValueError(f"timestamp {ts!r} has no UTC offset")
        return parsed.timestamp()
    if not math.isfinite(ts) or ts < 0:
        raise ValueError(f"timestamp {ts!r} is not a finite epoch second")
    return float(ts)


class _Timed(msgspec.Struct, kw_only=True, gc=False):
    """Base of every inbound event: `ts` is normalised to epoch seconds on decode."""

    ts: float | str

    def __post_init__(self) -> None:
        self.ts = to_epoch_s(self.ts)

    @property
    def epoch_s(self) -> float:
        """The event time in epoch seconds (always a float after decoding)."""
        assert isinstance(self.ts, float)
        return self.ts


class PredictionEvent(_Timed, kw_only=True, gc=False):
    """One decision a model made."""

    model_id: NonEmpty
    model_version: NonEmpty
    request_id: NonEmpty
    prediction: Scalar = None
    positive: bool | None = None
    confidence: Unit | None = None
    latency_ms: NonNegative | None = None
    error: bool | str | None = None
    groups: dict[NonEmpty, GroupValue] = {}
    subject_id: str | None = None
    flags: list[NonEmpty] = []
    user_id: str | None = None

    @property
    def failed(self) -> bool:
        """True when the request errored (a bool `error`, or any non-empty error code)."""
        return bool(self.error)


class LabelEvent(_Timed, kw_only=True, gc=False):
    """The ground truth for one earlier prediction, arriving minutes to days later."""

    request_id: NonEmpty
    model_id: NonEmpty
    label: Scalar
    positive: bool | None = None


AccessAction = Literal["read", "download", "write", "delete", "deploy", "query", "login", "grant"]
ResourceType = Literal["model_weights", "training_data", "endpoint", "config", "credentials"]


class AccessEvent(_Timed, kw_only=True, gc=False):
    """One access to a model asset, from IAM or storage logs."""

    principal: NonEmpty
    action: AccessAction
    resource_type: ResourceType
    resource: NonEmpty
    outcome: Literal["allowed", "denied"]
    model_id: str | None = None
    source_ip: str | None = None
    auth_method: str | None = None
    bytes: Annotated[int, msgspec.Meta(ge=0)] | None = None
    api_key_id: str | None = None


class RegistryEvent(_Timed, kw_only=True, gc=False):
    """A model-registry event: an approval, a deployment, an artifact write, a retirement."""

    model_id: NonEmpty
    version: NonEmpty
    event: Literal["approved", "deployed", "artifact_written", "retired"]
    sha256: Annotated[str, msgspec.Meta(pattern="^[0-9a-fA-F]{64}$")]
    actor: NonEmpty
    approval_ref: str | None = None


class ControlMessage(msgspec.Struct, kw_only=True):
    """The gateway contract on the compacted `control` topic (key = model_id)."""

    model_id: str
    seq: int
    level: Annotated[int, msgspec.Meta(ge=0, le=4)]
    mode: Literal["auto", "human_review", "paused"]
    review_sampling_rate: Unit
    review_below_confidence: Unit | None
    rollback_to: str | None
    revoke_principals: list[str]
    reason: str
    incident_ids: list[str]
    issued_by: str
    issued_at: float


class IncidentEvent(msgspec.Struct, kw_only=True):
    """An incident's state as published on the `incidents` topic (key = incident id)."""

    event: Literal["opened", "updated", "acknowledged", "mitigated", "resolved"]
    id: str
    category: str
    rule: str
    model_id: str
    model_version: str | None
    severity: Literal["MEDIUM", "HIGH", "CRITICAL"]
    status: Literal["open", "acknowledged", "mitigated", "resolved"]
    opened_at: float
    updated_at: float
    observation: dict[str, Any]
    scope: dict[str, Any] = {}
    actions: list[dict[str, Any]] = []
    evidence_ref: str | None = None
    group: str | None = None
    summary: str = ""
    remediation: list[str] = []


E = TypeVar("E", bound=_Timed)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A value (or one element of an array value) that is not a valid event."""

    reason: str
    detail: str
    raw: bytes
    index: int | None = None  # position in the array value, None for a whole value


class EventDecoder(Generic[E]):
    """Decodes message values of one topic into events of one schema."""

    def __init__(self, schema: type[E], max_value_bytes: int) -> None:
        self.schema = schema
        self.max_value_bytes = max_value_bytes
        self._whole = msgspec.json.Decoder(schema | list[schema])  # type: ignore[valid-type]
        self._one = msgspec.json.Decoder(schema)
        self._elements = msgspec.json.Decoder(list[msgspec.Raw])

    def decode(self, value: bytes | None) -> tuple[list[E], list[Rejected]]:
        """Split one message value into its valid events and its rejects (never raises)."""
        try:
            return self._decode_checked(value), []
        except DecodeError as exc:
            return [], [Rejected(exc.reason, exc.detail, value or b"")]
        except msgspec.ValidationError:
            return self._decode_elements(value or b"")

    def _decode_checked(self, value: bytes | None) -> list[E]:
        if not value or not value.strip():
            raise DecodeError(REASON_EMPTY, "message value is empty")
        if len(value) > self.max_value_bytes:
            raise DecodeError(
                REASON_TOO_LARGE, f"value is {len(value)} bytes, the limit is {self.max_value_bytes}"
            )
        try:
            decoded = self._whole.decode(value)
        except msgspec.ValidationError:
            raise
        except msgspec.DecodeError as exc:
            raise DecodeError(REASON_INVALID_JSON, str(exc)) from None
        return decoded if isinstance(decoded, list) else [decoded]

    def _decode_elements(self, value: bytes) -> tuple[list[E], list[Rejected]]:
        # msgspec validates while it parses, so a value can fail validation before the parser
        # reaches a syntax error further on: the JSON itself is checked again here.
        if not value.lstrip().startswith(b"["):
            try:
                self._one.decode(value)
            except msgspec.ValidationError as exc:
                return [], [Rejected(REASON_INVALID_EVENT, str(exc), value)]
            except msgspec.DecodeError as exc:
                return [], [Rejected(REASON_INVALID_JSON, str(exc), value)]
            raise AssertionError("a value that failed validation passed it on its own")
        try:
            elements = self._elements.decode(value)
        except msgspec.DecodeError as exc:
            return [], [Rejected(REASON_INVALID_JSON, str(exc), value)]
        good: list[E] = []
        bad: list[Rejected] = []
        for index, raw in enumerate(elements):
            element = bytes(raw)
            try:
                good.append(self._one.decode(element))
            except msgspec.ValidationError as exc:
                bad.append(Rejected(REASON_INVALID_EVENT, f"[{index}] {exc}", element, index))
        return good, bad


_control_encoder = msgspec.json.Encoder()


def encode(message: msgspec.Struct) -> bytes:
    """JSON bytes of an outbound message (control, incident)."""
    return _control_encoder.encode(message)
