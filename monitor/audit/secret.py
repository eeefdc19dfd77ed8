"""The secret that keys the audit chain: from the settings, else one generated once per host.

`MONITOR_AUDIT_SECRET` (or the file `MONITOR_AUDIT_SECRET_FILE` names) is what a deployment sets: the
same secret on every worker and wherever `monitor audit verify` runs. Unset, a local setup still gets
a keyed chain: a random secret is generated once and kept (mode 0600) in `audit.key` in the state
directory (`MONITOR_STATE_DIR`, default ~/.local/state/aimon), and the worker says so at start. A
per-host secret is wrong for workers on several hosts: each would key its entries with its own, and
verify would name those entries as keyed with another secret (never as intact).
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from monitor.exceptions import ConfigError
from monitor.settings import Settings

log = logging.getLogger(__name__)

KEY_FILE = "audit.key"
MIN_SECRET_BYTES = 16


@dataclass(frozen=True)
class AuditSecret:
    """The secret and where it came from (said at start and by verify; the secret never is)."""

    value: bytes
    source: str
    generated: bool = False


def default_key_path(env: Mapping[str, str] | None = None) -> Path:
    """`audit.key` in the state directory of the local services."""
    env = os.environ if env is None else env
    return Path(env.get("MONITOR_STATE_DIR") or "~/.local/state/aimon").expanduser().absolute() / KEY_FILE


def audit_secret(
    settings: Settings, env: Mapping[str, str] | None = None, *, create: bool = True, warn: bool = False
) -> AuditSecret:
    """The audit secret of `settings`; without one, the host's generated key (made if `create`, and
    said in a warning if `warn`: the worker's start)."""
    found = _find(settings, env, create=create)
    if warn and found.source not in ("MONITOR_AUDIT_SECRET", str(settings.audit_secret_file)):
        log.warning(
            "audit entries are keyed with the %s secret in %s (MONITOR_AUDIT_SECRET is unset): "
            "right for one host; give every worker the same MONITOR_AUDIT_SECRET otherwise",
            "newly generated" if found.generated else "generated",
            found.source,
        )
    return found


def _find(settings: Settings, env: Mapping[str, str] | None, *, create: bool) -> AuditSecret:
    if settings.audit_secret is not None:
        value = settings.audit_secret.get_secret_value().encode()
        _long_enough(value, "MONITOR_AUDIT_SECRET")
        return AuditSecret(value, "MONITOR_AUDIT_SECRET")
    if settings.audit_secret_file is not None:
        path = settings.audit_secret_file
        try:
            value = path.read_bytes().strip()
        except OSError as exc:
            # A named file that is not there is a mount that failed: never key with something else.
            raise ConfigError(
                f"MONITOR_AUDIT_SECRET_FILE={path} cannot be read ({exc.strerror}); "
                "fix the path or its permissions"
            ) from None
        _long_enough(value, f"MONITOR_AUDIT_SECRET_FILE={path}")
        return AuditSecret(value, str(path))
    path = default_key_path(env)
    if path.exists() or not create:
        try:
            return AuditSecret(path.read_bytes().strip(), str(path))
        except OSError as exc:
            raise ConfigError(
                f"no audit secret: MONITOR_AUDIT_SECRET is unset and {path} cannot be read ({exc.strerror}); "
                "set MONITOR_AUDIT_SECRET to the workers' secret"
            ) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it a moment ago: use that one
        return AuditSecret(path.read_bytes().strip(), str(path))
    with os.fdopen(fd, "wb") as out:
        out.write(value + b"\n")
    return AuditSecret(value, str(path), generated=True)


def _long_enough(value: bytes, where: str) -> None:
    if len(value) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"{where} is {len(value)} bytes; the audit secret needs at least {MIN_SECRET_BYTES} "
            "(e.g. `openssl rand -hex 32`)"
        )
