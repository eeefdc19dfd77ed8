"""Evidence files of an incident, each listed with its SHA-256 in a manifest."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import orjson

from monitor.exceptions import MonitorError

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class EvidenceNotFound(MonitorError):
    """No evidence folder exists for that incident id (an unknown id, not a tampered bundle)."""


def incident_dir(root: Path, incident_id: str) -> Path:
    """The incident's evidence folder; an id that could leave `root` is refused."""
    if not SAFE_ID.match(incident_id):
        raise ValueError(f"unsafe incident id {incident_id!r}")
    path = (root / incident_id).resolve()
    if path.parent != root.resolve():
        raise ValueError(f"incident id {incident_id!r} escapes the evidence directory")
    return path


def write_evidence(root: Path, incident_id: str, files: dict[str, bytes]) -> Path:
    """Write the files and `manifest.json` (name → sha256, size); returns the folder."""
    folder = incident_dir(root, incident_id)
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / "manifest.json"
    manifest = orjson.loads(manifest_path.read_bytes()) if manifest_path.exists() else {"files": {}}
    for name, content in files.items():
        if "/" in name or name.startswith(".") or name == "manifest.json":
            raise ValueError(f"bad evidence file name {name!r}")
        tmp = folder / f".{name}.tmp"
        tmp.write_bytes(content)
        os.replace(tmp, folder / name)  # a reader never sees half a file
        manifest["files"][name] = {"sha256": hashlib.sha256(content).hexdigest(), "bytes": len(content)}
    manifest_path.write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    return folder


def verify_evidence(root: Path, incident_id: str) -> list[str]:
    """Problems with an incident's evidence folder (empty when every file matches its manifest).

    An id with no folder raises EvidenceNotFound: nothing was written for it, so nothing was
    tampered with. A folder whose manifest is gone or unreadable is a problem (tampering)."""
    try:
        folder = incident_dir(root, incident_id)
    except ValueError as exc:
        raise EvidenceNotFound(f"no evidence for {incident_id!r} under {root}: {exc}") from None
    if not folder.is_dir():
        raise EvidenceNotFound(f"no evidence for {incident_id} under {root}")
    manifest_path = folder / "manifest.json"
    if not manifest_path.exists():
        return [f"{folder}: no manifest.json"]
    try:
        listed = orjson.loads(manifest_path.read_bytes())["files"]
        if not isinstance(listed, dict):
            raise TypeError("`files` is not a mapping")
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        return [f"manifest.json: unreadable ({exc})"]
    problems = []
    for name, entry in sorted(listed.items()):
        path = folder / name
        if not isinstance(entry, dict) or "sha256" not in entry:
            problems.append(f"{name}: manifest entry has no sha256")
        elif not path.exists():
            problems.append(f"{name}: missing")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != entry["sha256"]:
            problems.append(f"{name}: changed (sha256 does not match the manifest)")
    for path in sorted(folder.iterdir()):
        if path.name != "manifest.json" and path.name not in listed:
            problems.append(f"{path.name}: not in the manifest")
    return problems
