"""The `monitor` command: thin subcommands that call library functions and return exit codes.

Built on Click: each action is its own subcommand with its own arguments and `--help`, and the
parser enforces what is required before anything connects anywhere.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click
from pydantic import ValidationError
from pydantic_settings import SettingsError

# Each module registers its commands on the `cli` group when imported.
from monitor.cli import audit, incidents, offline, tokens, worker  # noqa: F401
from monitor.cli.base import cli
from monitor.exceptions import MonitorError

__all__ = ["cli", "main"]

# ---------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `monitor` console script: the exit code."""
    try:
        result = cli.main(
            args=list(argv) if argv is not None else None, prog_name="monitor", standalone_mode=False
        )
    except click.ClickException as exc:  # usage errors (exit 2) and bad parameters
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        return 130
    except (ValidationError, SettingsError) as exc:
        click.echo(f"monitor: bad setting {bad_setting(exc)}", err=True)
        return 2
    except MonitorError as exc:
        click.echo(f"monitor: {exc}", err=True)
        return 1
    except KeyboardInterrupt:
        return 130
    return result if isinstance(result, int) else 0


# What a value must look like, for the settings that are read as JSON from the environment.
SETTING_HINTS = {"webhook_urls": 'must be a JSON list of URLs, e.g. ["http://x"]'}


def bad_setting(exc: ValidationError | SettingsError) -> str:
    """One line naming the environment variable of the first wrong setting, what is wrong, and what it got."""
    import re

    if isinstance(exc, SettingsError):
        found = re.search(r'field "([^"]+)"', str(exc))
        field = found.group(1) if found else "?"
        return (
            f"{_env_name((field,))}: {SETTING_HINTS.get(field, 'is not valid JSON')} "
            f"(got {_env_value(field)!r})"
        )
    error = exc.errors()[0]
    loc = tuple(str(part) for part in error["loc"])
    if not loc:  # a check of several settings together: its message names them
        return str(error["msg"]).removeprefix("Value error, ")
    hint = SETTING_HINTS.get(loc[0] if loc else "", error["msg"])
    return f"{_env_name(loc)}: {hint} (got {error.get('input')!r})"


def _env_name(loc: tuple[str, ...]) -> str:
    if len(loc) > 1 and loc[0] == "topics":
        return f"MONITOR_TOPIC_{loc[1].upper()}"
    return f"MONITOR_{loc[0].upper()}" if loc else "MONITOR_?"


def _env_value(field: str) -> str | None:
    # pydantic-settings matches env names case-insensitively; so does this look-up.
    wanted = f"MONITOR_{field}".upper()
    return next((v for k, v in os.environ.items() if k.upper() == wanted), None)


if __name__ == "__main__":
    sys.exit(main())
