"""Where the audit secret comes from: the setting, a named file, else one generated once per host."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from monitor.audit.secret import audit_secret, default_key_path
from monitor.exceptions import ConfigError
from monitor.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("MONITOR_"):
            monkeypatch.delenv(name)


def test_the_setting_wins_and_round_trips_through_the_environment(tmp_path: Path) -> None:
    settings = Settings(audit_secret=SecretStr("x" * 32), audit_secret_file=tmp_path / "unused")
    found = audit_secret(settings, {"MONITOR_STATE_DIR": str(tmp_path)})
    assert (found.value, found.source, found.generated) == (b"x" * 32, "MONITOR_AUDIT_SECRET", False)
    assert not (tmp_path / "audit.key").exists()
    env = settings.to_env()
    assert env["MONITOR_AUDIT_SECRET"] == "x" * 32
    assert "**" not in "".join(env.values())  # never the masked form of a SecretStr


def test_unset_a_secret_is_generated_once_and_kept_private(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env = {"MONITOR_STATE_DIR": str(tmp_path / "state")}
    with caplog.at_level(logging.WARNING, "monitor.audit.secret"):
        first = audit_secret(Settings(), env, warn=True)
    assert first.generated and first.source == str(tmp_path / "state" / "audit.key")
    assert len(first.value) == 64 and stat.S_IMODE((tmp_path / "state" / "audit.key").stat().st_mode) == 0o600
    assert "newly generated secret in" in caplog.text and first.value.decode() not in caplog.text
    again = audit_secret(Settings(), env)
    assert (again.value, again.generated) == (first.value, False)


def test_verify_never_generates_a_secret(tmp_path: Path) -> None:
    env = {"MONITOR_STATE_DIR": str(tmp_path)}
    with pytest.raises(
        ConfigError, match="no audit secret: MONITOR_AUDIT_SECRET is unset and .*audit.key cannot"
    ):
        audit_secret(Settings(), env, create=False)
    assert not default_key_path(env).exists()


def test_a_named_file_that_cannot_be_read_is_refused(tmp_path: Path) -> None:
    settings = Settings(audit_secret_file=tmp_path / "missing")
    with pytest.raises(
        ConfigError, match=r"MONITOR_AUDIT_SECRET_FILE=.*missing cannot be read \(No such file"
    ):
        audit_secret(settings, {"MONITOR_STATE_DIR": str(tmp_path)})
    assert not (tmp_path / "audit.key").exists()  # no fallback to a generated key


def test_a_named_file_is_read_without_its_newline(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("f" * 40 + "\n")
    assert audit_secret(Settings(audit_secret_file=tmp_path / "secret")).value == b"f" * 40


def test_an_empty_file_setting_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONITOR_AUDIT_SECRET_FILE", "")
    assert Settings().audit_secret_file is None


@pytest.mark.parametrize("secret", ["", "short"])
def test_a_short_secret_is_refused(secret: str) -> None:
    with pytest.raises(
        ConfigError, match=r"MONITOR_AUDIT_SECRET is \d bytes; the audit secret needs at least 16 "
    ):
        audit_secret(Settings(audit_secret=SecretStr(secret)))
