"""The default rules ship with the package: what loads when no rules path is set, wherever the monitor
runs."""

from __future__ import annotations

from pathlib import Path

import pytest

import monitor
from monitor.cli import main
from monitor.exceptions import ConfigError
from monitor.rules.loader import default_rules_path, load_rules
from monitor.settings import Settings


@pytest.fixture
def elsewhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A working directory with no rules/ folder, and no rules path in the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MONITOR_RULES_PATH", raising=False)
    return tmp_path


def test_the_default_rules_are_package_data() -> None:
    path = default_rules_path()
    assert path == Path(monitor.__file__).parent / "rules" / "default.yaml"
    assert path.is_absolute() and path.is_file()


def test_no_rules_path_means_the_packaged_rules(elsewhere: Path) -> None:
    assert Settings().rules_path is None
    ruleset = load_rules(Settings().rules_path)
    assert ruleset.sources == (str(default_rules_path()),)
    assert len(ruleset.rules) >= 10
    assert ruleset == load_rules()
    assert ruleset.warnings == ()  # the shipped file uses no deprecated key


def test_an_empty_rules_path_is_unset(elsewhere: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONITOR_RULES_PATH", "")
    assert Settings().rules_path is None


def test_an_explicit_rules_path_wins(elsewhere: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = elsewhere / "mine.yaml"
    mine.write_text("version: 1\nrules: []\n", encoding="utf-8")
    monkeypatch.setenv("MONITOR_RULES_PATH", str(mine))
    settings = Settings()
    assert settings.rules_path == mine
    ruleset = load_rules(settings.rules_path)
    assert ruleset.sources == (str(mine),) and ruleset.rules == ()


def test_a_missing_rules_path_is_named_absolute_with_its_setting(elsewhere: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        load_rules(Path("nope/rules"))
    message = str(refused.value)
    assert message.startswith(f"{elsewhere / 'nope' / 'rules'}: no such rules file or directory; ")
    assert "MONITOR_RULES_PATH" in message and "\n" not in message


def test_rules_check_without_a_path_checks_the_packaged_rules(
    elsewhere: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["rules", "check"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"OK: {len(load_rules().rules)} rules from {default_rules_path()}\n")
    assert "warning" not in out


def test_rules_check_without_a_path_follows_the_setting(
    elsewhere: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MONITOR_RULES_PATH", "missing.yaml")
    assert main(["rules", "check"]) == 1
    assert capsys.readouterr().err.startswith(
        f"{elsewhere / 'missing.yaml'}: no such rules file or directory"
    )
