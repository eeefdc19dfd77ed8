"""Tokens, principals and roles (monitor.auth): the file format, hashing, the role table, rotation."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest
from multidict import MultiDict

from monitor.api import Refused, open_reads, parse_query
from monitor.auth import (
    NEEDS,
    ROLES,
    AuthFailure,
    Principal,
    TokenFileError,
    Tokens,
    allows,
    entry_line,
    hash_token,
    new_token,
    parse_env,
    parse_file_text,
)
from monitor.openapi import ModelQuery
from monitor.settings import Settings

ALICE, BOB, CAROL = "aimon_alice-token", "aimon_bob-token", "aimon_carol-token"


def tokens_file(path: Path, *entries: tuple[str, str, str]) -> Path:
    lines = [entry_line(name, role, hash_token(token)) for name, role, token in entries]  # type: ignore[arg-type]
    path.write_text("tokens:\n" + "".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


# ---------------------------------------------------------------- the role table

ROLE_TABLE = {
    # permission: (viewer, commander, admin)
    "read": (True, True, True),
    "acknowledge": (False, True, True),
    "mitigate": (False, True, True),
    "resolve": (False, True, True),
    "escalate": (False, True, True),
    "release": (False, False, True),
    "maintenance": (False, False, True),
}


@pytest.mark.parametrize("permission", list(ROLE_TABLE))
def test_the_role_table(permission: str) -> None:
    assert tuple(allows(role, permission) for role in ROLES) == ROLE_TABLE[permission]  # type: ignore[arg-type]
    assert set(NEEDS) == set(ROLE_TABLE)


def test_hash_and_new_token() -> None:
    assert hash_token("abc") == hashlib.sha256(b"abc").hexdigest()
    token = new_token()
    assert token.startswith("aimon_") and len(token) == len("aimon_") + 43  # 32 bytes, URL-safe base64
    assert new_token() != token


# ---------------------------------------------------------------- the file and the env


def test_a_file_names_principals_and_roles(tmp_path: Path) -> None:
    path = tokens_file(tmp_path / "t.yaml", ("alice", "commander", ALICE), ("bob", "viewer", BOB))
    table = parse_file_text(path.read_text(), str(path))
    assert table.lookup(ALICE) == Principal("alice", "commander", str(path))
    assert table.lookup(BOB) == Principal("bob", "viewer", str(path))
    assert table.lookup("aimon_nobody") is None and table.lookup("") is None
    assert "alice-token" not in path.read_text()  # only the hash is stored


def test_an_empty_file_has_no_tokens() -> None:
    assert len(parse_file_text("", "f")) == 0
    assert len(parse_file_text("tokens: []\n", "f")) == 0
    assert len(parse_file_text("# nobody yet\ntokens:\n", "f")) == 0


DIGEST = "a" * 64


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tokens: [", "f: not valid YAML (line 1)"),
        ("- alice\n", "f: must be a mapping with one key, `tokens`"),
        ("tokens: {alice: x}\n", "f: `tokens` must be a list"),
        ("users: []\n", "f: must be a mapping with one key, `tokens`"),
        ("tokens:\n  - alice\n", "f: token 1 (line 2): must be a mapping with principal, role, sha256"),
        (
            f"tokens:\n  - {{principal: a, role: viewer, sha256: {DIGEST}}}\n"
            f"  - {{principal: b, role: boss, sha256: {'b' * 64}}}\n",
            "f: token 2 (line 3): role must be one of viewer, commander, admin (got 'boss')",
        ),
        (
            "tokens:\n  - {principal: a, role: viewer}\n",
            "f: token 1 (line 2): `sha256` is missing",
        ),
        (
            f"tokens:\n  - {{principal: a, role: viewer, sha256: {DIGEST}, expires: 2027}}\n",
            "f: token 1 (line 2): unknown field `expires` (fields: principal, role, sha256)",
        ),
        (
            "tokens:\n  - {principal: a, role: viewer, sha256: aimon_plaintext}\n",
            "f: token 1 (line 2): sha256 must be 64 lowercase hex digits (a token itself? store its hash: "
            "`monitor tokens hash`)",
        ),
        (
            f"tokens:\n  - {{principal: a b, role: viewer, sha256: {DIGEST}}}\n",
            "f: token 1 (line 2): principal must be 1-64 letters, digits or . _ @ + - (got 'a b')",
        ),
        (
            f"tokens:\n  - {{principal: a, role: viewer, sha256: {DIGEST}}}\n"
            f"  - {{principal: b, role: admin, sha256: {DIGEST}}}\n",
            "f: token 2 (line 3): the same token is already configured for a",
        ),
    ],
)
def test_a_wrong_file_is_refused_naming_the_entry_and_field(text: str, message: str) -> None:
    with pytest.raises(TokenFileError) as refused:
        parse_file_text(text, "f")
    assert str(refused.value).startswith(message), str(refused.value)


def test_env_tokens_are_json() -> None:
    table = parse_env(f'[{{"principal": "ci", "role": "commander", "sha256": "{hash_token(CAROL)}"}}]')
    assert table.lookup(CAROL) == Principal("ci", "commander", "MONITOR_API_TOKENS")
    with pytest.raises(TokenFileError, match="MONITOR_API_TOKENS: not valid JSON"):
        parse_env("[{principal: ci}]")
    with pytest.raises(TokenFileError, match=r"MONITOR_API_TOKENS: token 1: role must be one of"):
        parse_env(f'[{{"principal": "ci", "role": "root", "sha256": "{DIGEST}"}}]')


def test_the_legacy_token_is_an_admin_named_token(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "monitor.auth"):
        tokens = Tokens(legacy="shared-secret")
    assert "MONITOR_API_TOKEN is deprecated" in caplog.text and "shared-secret" not in caplog.text
    assert tokens.authenticate("Bearer shared-secret") == Principal("token", "admin", "MONITOR_API_TOKEN")
    assert tokens.configured and not tokens.named


def test_one_token_in_two_sources_is_refused(tmp_path: Path) -> None:
    path = tokens_file(tmp_path / "t.yaml", ("alice", "admin", ALICE))
    with pytest.raises(TokenFileError, match="configured twice"):
        Tokens(path, legacy=ALICE)


def test_a_missing_or_unreadable_file_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match="no such tokens file"):
        Tokens(tmp_path / "absent.yaml")
    (tmp_path / "dir.yaml").mkdir()  # what a bind mount of a missing host file leaves
    with pytest.raises(TokenFileError, match="cannot read the tokens file"):
        Tokens(tmp_path / "dir.yaml")


# ---------------------------------------------------------------- authentication and roles


@pytest.mark.parametrize(
    ("header", "status", "reason", "message"),
    [
        (None, 401, "missing", "missing bearer token"),
        ("", 401, "missing", "missing bearer token"),
        ("Basic YWxpY2U6eA==", 401, "malformed", "the Authorization header must be `Bearer <token>`"),
        ("Bearer", 401, "malformed", "the Authorization header must be `Bearer <token>`"),
        ("Bearer two words", 401, "malformed", "the Authorization header must be `Bearer <token>`"),
        ("Bearer caf\udce9", 401, "malformed", "the Authorization header must be `Bearer <token>`"),
        ("Bearer aimon_unknown", 401, "unknown_token", "unknown or revoked token"),
        (f"Bearer {BOB}", 403, "beyond_role", "acknowledge needs the commander role; token of bob is viewer"),
        (f"Bearer {ALICE}", 403, "beyond_role", "release needs the admin role; token of alice is commander"),
    ],
)
def test_refusals_name_the_reason_and_the_role_needed(
    tmp_path: Path, header: str | None, status: int, reason: str, message: str
) -> None:
    tokens = Tokens(tokens_file(tmp_path / "t.yaml", ("alice", "commander", ALICE), ("bob", "viewer", BOB)))
    action = "release" if header == f"Bearer {ALICE}" else "acknowledge"
    with pytest.raises(AuthFailure) as refused:
        tokens.authorize(header, action, action)  # type: ignore[arg-type]
    assert (refused.value.status, refused.value.reason, refused.value.message) == (status, reason, message)
    assert (refused.value.principal is not None) == (reason == "beyond_role")


def test_a_role_allows_what_it_should(tmp_path: Path) -> None:
    tokens = Tokens(
        tokens_file(tmp_path / "t.yaml", ("alice", "commander", ALICE), ("carol", "admin", CAROL))
    )
    assert tokens.authorize(f"bearer  {ALICE} ", "escalate", "escalate").who == "human:alice"
    assert tokens.authorize(f"Bearer {CAROL}", "release", "release").name == "carol"


def test_no_tokens_at_all_disables_the_api() -> None:
    with pytest.raises(AuthFailure) as refused:
        Tokens().authorize("Bearer x", "read", "reading")
    assert (refused.value.status, refused.value.reason) == (403, "disabled")


# ---------------------------------------------------------------- rotation


def test_an_edited_file_is_reread_and_a_broken_edit_keeps_the_last_good_tokens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tokens_file(tmp_path / "t.yaml", ("alice", "commander", ALICE))
    tokens = Tokens(path)
    assert tokens.authenticate(f"Bearer {ALICE}").name == "alice"

    tokens_file(path, ("alice", "commander", BOB))  # alice's token rotated
    with pytest.raises(AuthFailure, match="unknown or revoked token"):
        tokens.authenticate(f"Bearer {ALICE}")
    assert tokens.authenticate(f"Bearer {BOB}").name == "alice"
    assert (tokens.reloads, tokens.reload_failures) == (1, 0)

    with caplog.at_level(logging.ERROR, "monitor.auth"):
        path.write_text("tokens:\n  - {principal: alice, role: comander, sha256: x}\n")
        assert tokens.authenticate(f"Bearer {BOB}").name == "alice"  # the last good table stays
        assert tokens.authenticate(f"Bearer {BOB}").name == "alice"
    assert caplog.text.count("tokens file not reloaded") == 1  # once per change, not per request
    assert (tokens.reloads, tokens.reload_failures) == (1, 1)

    path.unlink()  # a vanished file keeps the last good table too
    assert tokens.authenticate(f"Bearer {BOB}").name == "alice"
    tokens_file(path)  # an empty list revokes every token of the file
    with pytest.raises(AuthFailure, match="unknown or revoked token"):
        tokens.authenticate(f"Bearer {BOB}")


def test_a_same_size_rewrite_in_the_same_second_is_seen(tmp_path: Path) -> None:
    path = tokens_file(tmp_path / "t.yaml", ("alice", "viewer", ALICE))
    tokens = Tokens(path)
    stat = path.stat()
    replacement = tmp_path / "new.yaml"
    tokens_file(replacement, ("bobby", "viewer", ALICE))  # the token handed over: the same size...
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ...and the same mtime
    assert replacement.stat().st_size == stat.st_size
    os.replace(replacement, path)  # an atomic replace: only the inode differs
    assert tokens.authenticate(f"Bearer {ALICE}").name == "bobby"


# ---------------------------------------------------------------- reads, and the /models query


def test_reads_are_open_until_named_principals_are_configured(tmp_path: Path) -> None:
    path = tokens_file(tmp_path / "t.yaml", ("alice", "viewer", ALICE))
    legacy = Settings(api_token="x")  # type: ignore[arg-type]
    assert open_reads(legacy, Tokens(legacy="x")) is True
    named = Settings(api_tokens_file=path)
    assert open_reads(named, Tokens(path)) is False
    explicit = Settings(api_tokens_file=path, api_open_reads=True)
    assert open_reads(explicit, Tokens(path)) is True
    with pytest.raises(Exception, match="MONITOR_API_OPEN_READS=false needs tokens"):
        open_reads(Settings(api_open_reads=False), Tokens())


def test_the_models_query() -> None:
    query = parse_query(MultiDict([("limit", "2"), ("after", "m1")]), ModelQuery)
    assert (query.limit, query.after) == (2, "m1")
    assert parse_query(MultiDict(), ModelQuery).limit == 1000
    with pytest.raises(Refused, match=r"unknown query parameter `page` \(allowed: limit, after\)"):
        parse_query(MultiDict([("page", "2")]), ModelQuery)


def test_a_wrong_tokens_file_stops_the_worker_before_it_connects(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "tokens.yaml"
    path.write_text(f"tokens:\n  - {{principal: a, role: viewer, sha256: {DIGEST}}}\n  - {{principal: b}}\n")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MONITOR_")}
    env.update(
        MONITOR_API_TOKENS_FILE=str(path),
        MONITOR_KAFKA_BOOTSTRAP="127.0.0.1:9",  # nothing listens: the check must come first
        MONITOR_REDIS_URL="redis://127.0.0.1:9/0",
    )
    done = subprocess.run(
        [sys.executable, "-m", "monitor", "run"], env=env, capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stderr) == (1, f"monitor: {path}: token 2 (line 3): `role` is missing\n")
