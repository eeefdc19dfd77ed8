"""`monitor tokens ...`: make API tokens, hash one, and check the tokens file (no worker needed)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import click

from monitor.auth import PRINCIPAL, ROLES, Role, Tokens, entry_line, hash_token, new_token, parse_file_text
from monitor.cli import output as out
from monitor.cli.base import Globals, cli, json_option, pass_globals
from monitor.exceptions import ConfigError

HEADER = "# API tokens: principal, role (viewer, commander, admin) and the SHA-256 of the token.\ntokens:\n"


@cli.group("tokens")
def tokens_group() -> None:
    """API tokens: each names a principal and a role; the worker stores only their SHA-256."""


def _file_option(f: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--file",
        "file",
        type=click.Path(path_type=Path, dir_okay=False),
        help="The tokens file (default MONITOR_API_TOKENS_FILE).",
    )(f)


@tokens_group.command("add")
@click.argument("principal")
@click.option("--role", type=click.Choice(ROLES), required=True, help="What the token may do.")
@_file_option
@json_option
@pass_globals
def tokens_add(g: Globals, principal: str, role: Role, file: Path | None, as_json: bool) -> int:
    """Make a token for PRINCIPAL: print it once (stdout) and add its hash to the tokens file.

    Without a file (no --file, no MONITOR_API_TOKENS_FILE) only the line to add is printed. The
    worker picks the new file up on the next request, without a restart.
    """
    token = new_token()
    digest = hash_token(token)
    line = entry_line(principal, role, digest)
    if not PRINCIPAL.fullmatch(principal):
        raise click.BadParameter(
            "1-64 letters, digits or . _ @ + -, starting with a letter or digit", param_hint="PRINCIPAL"
        )
    file = file or g.settings().api_tokens_file
    if file is not None:
        append_entry(file, line)
    if as_json:
        entry = {"principal": principal, "role": role, "sha256": digest, "token": token, "file": file}
        out.print_json({k: str(v) if isinstance(v, Path) else v for k, v in entry.items()})
        return 0
    click.echo(token)
    if file is not None:
        click.echo(f"added to {file}: {principal} ({role}); the token above is shown only once", err=True)
    else:
        click.echo("put this line under `tokens:` in MONITOR_API_TOKENS_FILE (shown only once):", err=True)
        click.echo(line, err=True)
    return 0


def append_entry(file: Path, line: str) -> None:
    """Add `line` to the tokens file (created, mode 0600, if absent), replaced atomically; a file
    that would not parse afterwards is left as it was."""
    text = file.read_text(encoding="utf-8") if file.exists() else HEADER
    if text and not text.endswith("\n"):
        text += "\n"
    if text.strip() == "":
        text = HEADER
    updated = f"{text}{line}\n"
    parse_file_text(updated, str(file))
    mode = file.stat().st_mode & 0o777 if file.exists() else 0o600
    fd, temp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(updated)
        os.chmod(temp, mode)
        os.replace(temp, file)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


@tokens_group.command("hash")
def tokens_hash() -> int:
    """Print the SHA-256 of a token read from stdin (to move an existing token into the file)."""
    if sys.stdin.isatty():
        token = click.prompt("token", hide_input=True)
    else:
        token = sys.stdin.readline().strip()
    if not token:
        raise ConfigError("no token on stdin")
    click.echo(hash_token(token))
    return 0


@tokens_group.command("list")
@_file_option
@json_option
@pass_globals
def tokens_list(g: Globals, file: Path | None, as_json: bool) -> int:
    """Check the configured tokens (file, MONITOR_API_TOKENS, MONITOR_API_TOKEN) and list their principals."""
    settings = g.settings()
    legacy = settings.api_token.get_secret_value() if settings.api_token else None
    table = Tokens(file or settings.api_tokens_file, settings.api_tokens, legacy).table()
    rows = [
        {"principal": p.name, "role": p.role, "sha256": digest.hex()[:12], "source": p.source}
        for digest, p in table.entries
    ]
    if as_json:
        out.print_json(rows)
    else:
        out.table(("principal", "role", "sha256", "source"), [list(r.values()) for r in rows])
    return 0
