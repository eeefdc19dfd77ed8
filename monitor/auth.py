"""Who may call the API: bearer tokens, each naming a principal and a role, stored only as hashes.

A token is a high-entropy random string (`new_token`: 256 bits). The worker keeps only its SHA-256
and compares digests with `hmac.compare_digest`, over every entry, so neither a stored hash nor a
reply's timing gives a token away. A slow password hash (bcrypt, argon2) protects *low*-entropy
secrets against guessing once the hash leaks; a 256-bit random token cannot be guessed from its
SHA-256 anyway, and a slow hash would cost every API call tens of milliseconds of CPU for nothing.

Tokens come from a file (`MONITOR_API_TOKENS_FILE`, YAML, re-read when it changes: rotation needs
no restart), from `MONITOR_API_TOKENS` (JSON, fixed for the process's life), and from the
deprecated single `MONITOR_API_TOKEN` (an admin principal named `token`). Roles are ordered, each
allowing what the one before allows:

| role | may |
|---|---|
| viewer | read incidents and models |
| commander | besides: acknowledge, mitigate, resolve, escalate |
| admin | besides: release an override, maintenance windows |
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from monitor.exceptions import ConfigError, MonitorError

log = logging.getLogger(__name__)

Role = Literal["viewer", "commander", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)  # in order: each role allows what the ones before allow
Permission = Literal["read", "acknowledge", "mitigate", "resolve", "escalate", "release", "maintenance"]
NEEDS: dict[Permission, Role] = {
    "read": "viewer",
    "acknowledge": "commander",
    "mitigate": "commander",
    "resolve": "commander",
    "escalate": "commander",
    "release": "admin",
    "maintenance": "admin",
}
LEGACY_PRINCIPAL = "token"
TOKEN_PREFIX = "aimon_"  # lets secret scanners and people recognise a leaked token
PRINCIPAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# RFC 6750's b64token: what a bearer credential may hold.
B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
FIELDS = ("principal", "role", "sha256")
FailureReason = Literal["missing", "malformed", "unknown_token", "beyond_role", "disabled"]
FAILURE_REASONS: tuple[FailureReason, ...] = get_args(FailureReason)


class TokenFileError(ConfigError):
    """A tokens file or MONITOR_API_TOKENS is wrong; the message names the source, entry and field."""


class AuthFailure(MonitorError):
    """A request the API refuses for its credentials: `status` 401 or 403, `reason` a metric label."""

    def __init__(self, status: int, reason: FailureReason, message: str, principal: Principal | None = None):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.principal = principal


@dataclass(frozen=True)
class Principal:
    """Whom a token names, with its role and where the token was configured."""

    name: str
    role: Role
    source: str

    def allows(self, permission: Permission) -> bool:
        """Whether this principal's role allows `permission`."""
        return allows(self.role, permission)

    @property
    def who(self) -> str:
        """The principal as the audit log, timelines and control messages name it."""
        return f"human:{self.name}"


def allows(role: Role, permission: Permission) -> bool:
    """Whether `role` allows `permission` (the role table above)."""
    return ROLES.index(role) >= ROLES.index(NEEDS[permission])


def hash_token(token: str) -> str:
    """The SHA-256 (hex) a token is stored as."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def new_token() -> str:
    """A fresh random token: the prefix and 256 bits, URL-safe."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def entry_line(principal: str, role: Role, digest: str) -> str:
    """One tokens-file entry, as `monitor tokens add` prints it (a YAML flow mapping on one line)."""
    return f"  - {{principal: {principal}, role: {role}, sha256: {digest}}}"


@dataclass(frozen=True)
class TokenTable:
    """Principals by token digest; `lookup` compares against every digest in constant time each."""

    entries: tuple[tuple[bytes, Principal], ...] = ()

    def lookup(self, token: str) -> Principal | None:
        """The principal of `token`, or None; every entry is compared, so the time says nothing."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found: Principal | None = None
        for stored, principal in self.entries:
            if hmac.compare_digest(stored, digest):
                found = principal
        return found

    def __len__(self) -> int:
        return len(self.entries)

    def principals(self) -> list[Principal]:
        """Every principal, in the order configured (a principal with two tokens appears twice)."""
        return [p for _, p in self.entries]

    def merged(self, other: TokenTable) -> TokenTable:
        """Both tables; a digest in both is refused (one token would name two principals)."""
        mine = {d for d, _ in self.entries}
        for digest, principal in other.entries:
            if digest in mine:
                raise TokenFileError(
                    f"{principal.source}: the token of {principal.name} is configured twice "
                    "(one token must name one principal)"
                )
        return TokenTable(self.entries + other.entries)


def parse_entries(items: Any, source: str, lines: list[int] | None = None) -> TokenTable:
    """A table from decoded entries ({principal, role, sha256} each), or TokenFileError naming one."""
    if not isinstance(items, list):
        raise TokenFileError(f"{source}: `tokens` must be a list of {{principal, role, sha256}}")
    entries: list[tuple[bytes, Principal]] = []
    seen: dict[str, str] = {}
    for index, item in enumerate(items):
        where = f"{source}: token {index + 1}" + (f" (line {lines[index]})" if lines else "")
        if not isinstance(item, dict):
            raise TokenFileError(f"{where}: must be a mapping with {', '.join(FIELDS)}")
        unknown = sorted(str(k) for k in item if k not in FIELDS)
        if unknown:
            raise TokenFileError(f"{where}: unknown field `{unknown[0]}` (fields: {', '.join(FIELDS)})")
        missing = [f for f in FIELDS if f not in item]
        if missing:
            raise TokenFileError(f"{where}: `{missing[0]}` is missing")
        name, role, digest = (str(item[f]) if item[f] is not None else "" for f in FIELDS)
        if not PRINCIPAL.fullmatch(name):
            raise TokenFileError(
                f"{where}: principal must be 1-64 letters, digits or . _ @ + - (got {name!r})"
            )
        if role not in ROLES:
            raise TokenFileError(f"{where}: role must be one of {', '.join(ROLES)} (got {role!r})")
        if not SHA256_HEX.fullmatch(digest):
            hint = " (a token itself? store its hash: `monitor tokens hash`)" if len(digest) != 64 else ""
            raise TokenFileError(f"{where}: sha256 must be 64 lowercase hex digits{hint}")
        if digest in seen:
            raise TokenFileError(f"{where}: the same token is already configured for {seen[digest]}")
        seen[digest] = name
        entries.append((bytes.fromhex(digest), Principal(name, role, source)))
    return TokenTable(tuple(entries))


def parse_file_text(text: str, source: str) -> TokenTable:
    """A tokens file's table. The file is YAML: `tokens:` and a list of {principal, role, sha256}."""
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise TokenFileError(f"{source}: not valid YAML{line}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return TokenTable()
    if not isinstance(data, dict) or set(data) - {"tokens"}:
        raise TokenFileError(f"{source}: must be a mapping with one key, `tokens` (a list of tokens)")
    return parse_entries(data.get("tokens") or [], source, _item_lines(root))


def _item_lines(root: yaml.Node | None) -> list[int] | None:
    """The line of each entry under `tokens`, for error messages."""
    if not isinstance(root, yaml.MappingNode):
        return None
    for key, value in root.value:
        if (
            isinstance(key, yaml.ScalarNode)
            and key.value == "tokens"
            and isinstance(value, yaml.SequenceNode)
        ):
            return [item.start_mark.line + 1 for item in value.value]
    return None


def parse_env(text: str, source: str = "MONITOR_API_TOKENS") -> TokenTable:
    """The table of MONITOR_API_TOKENS: a JSON list of {principal, role, sha256}."""
    try:
        items = json.loads(text)
    except ValueError as exc:
        raise TokenFileError(f"{source}: not valid JSON ({exc})") from None
    return parse_entries(items, source)


def legacy_table(token: str) -> TokenTable:
    """The deprecated single MONITOR_API_TOKEN, as an admin principal named `token`."""
    principal = Principal(LEGACY_PRINCIPAL, "admin", "MONITOR_API_TOKEN")
    return TokenTable(((bytes.fromhex(hash_token(token)), principal),))


def _signature(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


class Tokens:
    """Every configured token; the file's are re-read when it changes (mtime, size or inode).

    A file that turns unreadable or invalid keeps the last good table (a half-saved edit must not
    lock everyone out) and is logged as an error once per change; `reload_failures` counts those.
    To revoke every token of the file, empty its `tokens` list.
    """

    def __init__(
        self,
        file: Path | None = None,
        env: str | None = None,
        legacy: str | None = None,
        *,
        warn_legacy: bool = True,
    ) -> None:
        self.file = file
        self.fixed = TokenTable()
        if env:
            self.fixed = self.fixed.merged(parse_env(env))
        if legacy and warn_legacy:
            log.warning(
                "MONITOR_API_TOKEN is deprecated: it is an admin principal named %r; give each person "
                "a token of their own in MONITOR_API_TOKENS_FILE (`monitor tokens add`)",
                LEGACY_PRINCIPAL,
            )
        if legacy:
            self.fixed = self.fixed.merged(legacy_table(legacy))
        self.reloads = 0
        self.reload_failures = 0
        self._signature: tuple[int, int, int, int] | None = None
        self._table = self.fixed
        if file is not None:
            signature = _signature(file)
            if signature is None:
                raise TokenFileError(f"{file}: no such tokens file (MONITOR_API_TOKENS_FILE)")
            try:
                self._load(file, signature)
            except (OSError, UnicodeDecodeError) as exc:  # a directory, no permission, not UTF-8
                raise TokenFileError(f"{file}: cannot read the tokens file ({exc})") from None

    @property
    def configured(self) -> bool:
        """Whether any token source is set (an empty file counts: its tokens may come later)."""
        return self.file is not None or len(self.fixed) > 0

    @property
    def named(self) -> bool:
        """Whether principals come from a file or MONITOR_API_TOKENS (not only the legacy token)."""
        return self.file is not None or any(p.source != "MONITOR_API_TOKEN" for p in self.fixed.principals())

    def _load(self, file: Path, signature: tuple[int, int, int, int]) -> None:
        table = parse_file_text(file.read_text(encoding="utf-8"), str(file))
        self._table = self.fixed.merged(table)
        self._signature = signature

    def table(self) -> TokenTable:
        """The current table, re-reading the file first if it changed since the last read."""
        if self.file is None:
            return self._table
        signature = _signature(self.file)
        if signature is not None and signature != self._signature:
            try:
                self._load(self.file, signature)
            except (OSError, UnicodeDecodeError, ConfigError) as exc:
                self._signature = signature  # logged once per change, not on every request
                self.reload_failures += 1
                log.error("tokens file not reloaded, the previous tokens stay in force: %s", exc)
            else:
                self.reloads += 1
                log.info("tokens file %s reloaded: %d tokens", self.file, len(self._table))
        return self._table

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an `Authorization: Bearer <token>` header, or AuthFailure (401)."""
        if not self.configured:
            raise AuthFailure(
                403,
                "disabled",
                "the API has no tokens configured: set MONITOR_API_TOKENS_FILE or MONITOR_API_TOKENS",
            )
        if not authorization:
            raise AuthFailure(401, "missing", "missing bearer token")
        scheme, _, credentials = authorization.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() != "bearer" or not B64TOKEN.fullmatch(credentials):
            raise AuthFailure(401, "malformed", "the Authorization header must be `Bearer <token>`")
        principal = self.table().lookup(credentials)
        if principal is None:
            raise AuthFailure(401, "unknown_token", "unknown or revoked token")
        return principal

    def authorize(self, authorization: str | None, permission: Permission, action: str) -> Principal:
        """The principal, if its role allows `permission`; else AuthFailure (401; 403 naming the role)."""
        principal = self.authenticate(authorization)
        if not principal.allows(permission):
            raise AuthFailure(
                403,
                "beyond_role",
                f"{action} needs the {NEEDS[permission]} role; token of {principal.name} is {principal.role}",
                principal,
            )
        return principal
