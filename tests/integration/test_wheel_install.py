"""What the container image does, without Docker: build the wheel from the files the Dockerfile copies,
install it into a fresh venv, and start `monitor run` from a directory with no rules/ folder until
/readyz answers 200. The default rules, the Lua scripts and the templates must come from the wheel."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, unique_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def dockerfile_build_context() -> list[str]:
    """The paths the Dockerfile's build stage copies from the repository (its COPY lines before the 2nd
    FROM)."""
    copied: list[str] = []
    stages = 0
    for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        words = line.split()
        if words[:1] == ["FROM"]:
            stages += 1
            if stages > 1:
                break
        elif words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            copied += words[1:-1]
    assert "monitor" in [Path(p).name for p in copied], copied
    return copied


def run(*argv: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, (
        f"{' '.join(map(str, argv))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    )
    return done  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(the wheel, the bin dir of a fresh venv with it installed), built from the image's build context."""
    tmp = tmp_path_factory.mktemp("wheel")
    context = tmp / "context"
    context.mkdir()
    for name in dockerfile_build_context():
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, context / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, context / name)
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", tmp / "dist", context)
    (wheel,) = (tmp / "dist").glob("aimon-*.whl")
    venv = tmp / "venv"
    run(sys.executable, "-m", "venv", venv)
    # Dependencies from the package index, as the image's `pip install .` gets them (pip's cache helps).
    run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", wheel)
    yield wheel, venv / "bin"


def clean_env(bin_dir: Path) -> dict[str, str]:
    """This process's environment without anything that would make the venv see the source tree."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MONITOR_RULES_PATH", "PYTHONHOME")
    }
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_the_wheel_ships_every_file_of_the_package(installed: tuple[Path, Path]) -> None:
    wheel, _ = installed
    shipped = set(zipfile.ZipFile(wheel).namelist())
    source = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "monitor").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert source - shipped == set()
    assert "monitor/rules/default.yaml" in shipped


def test_the_installed_monitor_starts_from_another_directory(
    installed: tuple[Path, Path], services: tuple[str, str], tmp_path: Path
) -> None:
    _, bin_dir = installed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = clean_env(bin_dir)
    # The package imported is the installed one, not this checkout.
    where = run(bin_dir / "python", "-c", "import monitor; print(monitor.__file__)", cwd=elsewhere, env=env)
    site = Path(where.stdout.strip()).parent
    assert site.is_relative_to(bin_dir.parent), site
    check = run(bin_dir / "monitor", "rules", "check", cwd=elsewhere, env=env)
    assert (
        check.stdout.startswith("OK: ") and f" rules from {site / 'rules' / 'default.yaml'}\n" in check.stdout
    )

    settings = unique_settings(*services)
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [bin_dir / "monitor", "run"],
            cwd=elsewhere,
            env={**env, **settings.to_env()},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        ready = f"http://127.0.0.1:{settings.web_port}/readyz"
        deadline = time.monotonic() + 120
        status = None
        while status != 200:
            assert worker.poll() is None, (
                f"the worker exited {worker.returncode}:\n{log_path.read_text()[-4000:]}"
            )
            assert time.monotonic() < deadline, (
                f"no 200 from {ready} in 120 s:\n{log_path.read_text()[-4000:]}"
            )
            try:
                with urllib.request.urlopen(ready, timeout=3) as answer:
                    status = answer.status
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)
    assert not (elsewhere / "rules").exists()
