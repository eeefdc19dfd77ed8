"""The repository documents itself: every link resolves inside it, and every setting is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from monitor.settings import Settings, Topics

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", ROOT / "BENCHMARKS.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".j2", ".lua", ".txt", ".cfg", ".json"}


def _repo_text_files() -> list[Path]:
    # What git tracks (or would): build products and caches are not the repository's text.
    skip = {
        ".git",
        ".venv",
        "node_modules",
        ".mypy_cache",
        ".pytest_cache",
        "__pycache__",
        "evidence",
        "build",
    }
    return [
        path
        for path in ROOT.rglob("*")
        if path.is_file()
        and path.suffix in TEXT_SUFFIXES
        and path != Path(__file__)
        and not skip.intersection(path.relative_to(ROOT).parts)
        and not any(part.endswith(".egg-info") for part in path.parts)
    ]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    broken = [
        target
        for target in LINK.findall(doc.read_text(encoding="utf-8"))
        if "://" not in target
        and not target.startswith("mailto:")
        and not (doc.parent / target).resolve().exists()
    ]
    assert broken == [], f"{doc.relative_to(ROOT)} links to missing files: {broken}"


def test_nothing_points_outside_the_repository() -> None:
    outside = re.compile(r"DESIGN\.md|STYLE\.md|/work/shared|\.\./shared")
    offenders = [
        str(path.relative_to(ROOT))
        for path in _repo_text_files()
        if outside.search(path.read_text(encoding="utf-8", errors="replace"))
    ]
    assert offenders == []


def test_every_setting_is_documented() -> None:
    text = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    names = [f"MONITOR_{name.upper()}" for name in Settings.model_fields if name != "topics"]
    names += [f"MONITOR_TOPIC_{name.upper()}" for name in Topics.model_fields]
    missing = [name for name in names if name not in text]
    assert missing == [], f"docs/settings.md does not mention {missing}"
