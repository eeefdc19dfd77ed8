"""The `monitor` group, its global options and what every command shares (settings, the API client)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from monitor.clients.api_client import ApiClient
from monitor.settings import Settings

GC_THRESHOLD = 50_000  # allocations between young-generation collections (Python's default: 700)
# Loggers of the libraries underneath: chatty at INFO, and their warnings (a retried connection, a
# rebalance) mean nothing to a person running one command. `--verbose` brings them back.
NOISY_LOGGERS = ("faust", "aiokafka", "kafka", "mode", "urllib3", "asyncio", "aiohttp", "venusian", "redis")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Globals:
    """The options given before the subcommand."""

    kafka_bootstrap: str | None
    redis_url: str | None
    verbose: bool

    def settings(self, **overrides: Any) -> Settings:
        """The settings from env, with the global flags and `overrides` applied (None keeps env)."""
        return Settings().with_overrides(
            kafka_bootstrap=self.kafka_bootstrap, redis_url=self.redis_url, **overrides
        )


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.CRITICAL + 1)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="aimon", prog_name="monitor", message="%(prog)s %(version)s")
@click.option(
    "--kafka-bootstrap", metavar="HOST:PORT", help="The Kafka broker (env MONITOR_KAFKA_BOOTSTRAP)."
)
@click.option("--redis-url", metavar="URL", help="redis://host:port/db (env MONITOR_REDIS_URL).")
@click.option("-v", "--verbose", is_flag=True, help="Show the libraries' logs (faust, aiokafka, ...) too.")
@click.pass_context
def cli(ctx: click.Context, kafka_bootstrap: str | None, redis_url: str | None, verbose: bool) -> None:
    """AI incident-response monitor: run the worker, act on incidents and models, run drills."""
    ctx.obj = Globals(kafka_bootstrap, redis_url, verbose)
    _configure_logging(verbose)


pass_globals = click.make_pass_decorator(Globals)


def json_option(f: F) -> F:
    """`--json`: machine-readable output."""
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(f)


def api_options(f: F) -> F:
    """`--url` and `--json`, for the commands that talk to the worker's API."""
    f = json_option(f)
    return click.option(
        "--url",
        metavar="URL",
        help="The worker's web address (default http://MONITOR_WEB_HOST:MONITOR_WEB_PORT).",
    )(f)


def action_options(f: F) -> F:
    """`--why` (required) and the deprecated `--by`, for every audited action."""
    f = click.option("--why", required=True, metavar="TEXT", help="The reason (written to the audit log).")(f)
    return click.option(
        "--by",
        metavar="NAME",
        help="Deprecated: the audit log records your token's principal; a different name here is kept "
        "only as a claim beside it.",
    )(f)


def action_body(why: str, by: str | None, **fields: Any) -> dict[str, Any]:
    """The body of an action: `why`, the deprecated `by` only when given, and `fields`."""
    if by:
        click.echo("monitor: --by is deprecated: the audit log records your token's principal", err=True)
    return {"why": why, **({"by": by} if by else {}), **fields}


def client_for(g: Globals, url: str | None) -> ApiClient:
    """A client of the worker's API at `url` (default: the web host and port of the settings)."""
    settings = g.settings()
    secret = settings.cli_token or settings.api_token  # MONITOR_API_TOKEN: the deprecated shared one
    return ApiClient(url or web_url(settings), secret.get_secret_value() if secret else None)


def web_url(settings: Settings) -> str:
    """The worker's web address from the settings."""
    return settings.web_url
