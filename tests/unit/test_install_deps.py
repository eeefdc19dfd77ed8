"""scripts/install-deps, the set-up step of `make demo`, `make test` and .ci/run, on a PATH made up
for each test: which programs are missing, and what it runs (a fake apt-get records it) or prints."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "install-deps"
BASH = shutil.which("bash") or "/bin/bash"
ALL = ("redis-server", "mvn", "promtool", "prometheus-alertmanager", "openssl", "java")


def fake_bin(tmp_path: Path, *tools: str, java_version: str = "17.0.9") -> Path:
    """A directory of stand-ins for `tools`, and an apt-get that writes its arguments to apt.log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for tool in tools:
        body = f"echo 'openjdk version \"{java_version}\" 2023-10-17' >&2" if tool == "java" else "exit 0"
        (bin_dir / tool).write_text(f"#!/bin/sh\n{body}\n")
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "apt.log"}\n')
    for path in bin_dir.iterdir():
        path.chmod(0o755)
    return bin_dir


def run(
    bin_dir: Path, *args: str, user: list[str] | None = None, python: str = sys.executable
) -> subprocess.CompletedProcess[str]:
    # Only the made-up PATH: the real tools of this machine must not count.
    env = {"PATH": str(bin_dir), "PYTHON": python, "HOME": os.environ.get("HOME", "/")}
    return subprocess.run(
        [*(user or []), BASH, str(SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
        check=False,
    )


def apt_calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "apt.log"
    return log.read_text().splitlines() if log.exists() else []


def test_nothing_missing_is_quiet_and_succeeds(tmp_path: Path) -> None:
    bin_dir = fake_bin(tmp_path, *ALL)
    done = run(bin_dir)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert run(bin_dir, "--dry-run").stdout == "install-deps: nothing missing\n"
    assert apt_calls(tmp_path) == []


def test_dry_run_lists_what_is_missing_and_installs_nothing(tmp_path: Path) -> None:
    bin_dir = fake_bin(tmp_path, "mvn", "java")
    done = run(bin_dir, "--dry-run")
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "install-deps: missing redis-server (redis-server), promtool (prometheus), "
        "Alertmanager (prometheus-alertmanager), openssl (openssl)",
        "would run: apt-get update && apt-get install -y --no-install-recommends "
        "redis-server prometheus prometheus-alertmanager openssl",
    ]
    assert apt_calls(tmp_path) == []


def test_an_old_java_counts_as_missing(tmp_path: Path) -> None:
    bin_dir = fake_bin(
        tmp_path,
        "redis-server",
        "mvn",
        "promtool",
        "prometheus-alertmanager",
        "openssl",
        "java",
        java_version="11.0.21",
    )
    done = run(bin_dir, "--dry-run")
    assert (
        done.stdout.splitlines()[0]
        == "install-deps: missing Java 17 or newer (found 11) (default-jre-headless)"
    )
    assert run(fake_bin(tmp_path / "j8", *ALL, java_version="1.8.0_392"), "--dry-run").returncode == 1
    assert run(fake_bin(tmp_path / "j21", *ALL, java_version="21.0.2"), "--dry-run").returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="installs only as root")
def test_as_root_it_installs_what_is_missing_with_apt_get(tmp_path: Path) -> None:
    bin_dir = fake_bin(tmp_path, "redis-server", "promtool", "prometheus-alertmanager", "openssl")
    done = run(bin_dir)
    assert done.returncode == 0, done.stderr
    assert apt_calls(tmp_path) == [
        "update -qq",
        "install -y --no-install-recommends maven default-jre-headless -qq",
    ]


@pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/bin/setpriv").exists(),
    reason="needs root to run the script as another user",
)
def test_not_root_it_prints_the_command_and_fails(tmp_path: Path) -> None:
    # pytest's base temporary directory is root's alone: the fake tools go where nobody can run them.
    shared = Path(tempfile.mkdtemp(prefix="aimon-install-deps-"))
    shared.chmod(0o755)
    try:
        bin_dir = fake_bin(shared, "redis-server", "mvn", "java", "prometheus-alertmanager", "openssl")
        check_as_nobody(bin_dir)
        assert apt_calls(shared) == []
    finally:
        shutil.rmtree(shared)


def check_as_nobody(bin_dir: Path) -> None:
    (bin_dir / "python3").write_text("#!/bin/sh\nexit 0\n")  # this venv's Python may be unreadable to nobody
    (bin_dir / "python3").chmod(0o755)
    nobody = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    done = run(bin_dir, user=nobody, python="python3")
    assert done.returncode == 1
    assert done.stdout == "install-deps: missing promtool (prometheus)\n"
    assert done.stderr.splitlines() == [
        "install-deps: not root; run this, then try again:",
        "  sudo apt-get update && sudo apt-get install -y --no-install-recommends prometheus",
    ]


def test_without_apt_get_it_names_the_packages(tmp_path: Path) -> None:
    bin_dir = fake_bin(tmp_path, "redis-server", "mvn", "java", "promtool", "openssl")
    (bin_dir / "apt-get").unlink()
    done = run(bin_dir)
    assert done.returncode == 1
    assert done.stderr == (
        "install-deps: no apt-get here; install these with your package manager: prometheus-alertmanager\n"
    )


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("target", ["demo", "test"])
def test_the_readme_commands_run_it_first(target: str) -> None:
    root = SCRIPT.parents[1]
    planned = subprocess.run(
        ["make", "-n", "-C", str(root), target], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    steps = [line for line in planned.splitlines() if not line.startswith("make")]
    assert steps[0] == "PYTHON=python3 scripts/install-deps"


def test_ci_runs_it_before_the_tests() -> None:
    text = (SCRIPT.parents[1] / ".ci" / "run").read_text()
    lines = [line.strip() for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert lines.index("scripts/install-deps") < next(
        i for i, line in enumerate(lines) if "make test" in line
    )
