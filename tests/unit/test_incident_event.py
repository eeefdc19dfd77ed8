"""An incident as published and as shown: the contracts' fields, copied from one place."""

from __future__ import annotations

import msgspec

from monitor.events import IncidentEvent
from monitor.incidents.incident import Incident, IncidentView


def incident() -> Incident:
    return Incident(
        id="INC-20240101-0000beef",
        category="performance",
        rule="error-rate",
        model_id="credit",
        model_version="2",
        group="sex=F",
        severity="HIGH",
        level=2,
        status="acknowledged",
        opened_at=100.0,
        updated_at=160.0,
        observation={"value": 0.2, "threshold": 0.05},
        scope={"window_s": 300},
        actions=[{"what": "paged"}],
        evidence_ref="s3://e/1",
        summary="errors up",
        remediation=["roll back"],
        revoke=["svc-x"],
        notified_at=150.0,
        outbox=["opened"],
    )


def test_the_event_carries_the_incident_fields_the_wire_contract_declares() -> None:
    event = incident().event("updated")
    assert msgspec.to_builtins(event) == {
        "event": "updated",
        "id": "INC-20240101-0000beef",
        "category": "performance",
        "rule": "error-rate",
        "model_id": "credit",
        "model_version": "2",
        "severity": "HIGH",
        "status": "acknowledged",
        "opened_at": 100.0,
        "updated_at": 160.0,
        "observation": {"value": 0.2, "threshold": 0.05},
        "scope": {"window_s": 300},
        "actions": [{"what": "paged"}],
        "evidence_ref": "s3://e/1",
        "group": "sex=F",
        "summary": "errors up",
        "remediation": ["roll back"],
    }
    assert isinstance(event, IncidentEvent)


def test_the_public_view_leaves_the_bookkeeping_out() -> None:
    view = incident().public()
    assert type(view) is IncidentView
    shown = msgspec.to_builtins(view)
    assert "outbox" not in shown and "notified_at" not in shown
    assert shown["revoke"] == ["svc-x"] and shown["level"] == 2 and shown["status"] == "acknowledged"
