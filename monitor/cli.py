"""The `monitor` command: thin subcommands that call library functions and return exit codes.

Built on Click: each action is its own subcommand with its own arguments and `--help`, and the
parser enforces what is required before anything connects anywhere.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from pydantic import ValidationError
from pydantic_settings import SettingsError

from monitor import cli_output as out
from monitor.client import ApiClient
from monitor.exceptions import MonitorError
from monitor.settings import Settings

if TYPE_CHECKING:
    from monitor.service_config import ServiceConfig

GC_THRESHOLD = 50_000  # allocations between young-generation collections (Python's default: 700)
# Loggers of the libraries underneath: chatty at INFO, and their warnings (a retried connection, a
# rebalance) mean nothing to a person running one command. `--verbose` brings them back.
NOISY_LOGGERS = ("faust", "aiokafka", "kafka", "mode", "urllib3", "asyncio", "aiohttp", "venusian", "redis")
F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("monitor")


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
@click.option("--kafka-bootstrap", metavar="HOST:PORT", help="The Kafka broker (env MONITOR_KAFKA_BOOTSTRAP).")
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
        "--url", metavar="URL", help="The worker's web address (default http://MONITOR_WEB_HOST:MONITOR_WEB_PORT)."
    )(f)


def action_options(f: F) -> F:
    """`--by` (default $USER) and `--why`, both required, for every audited action."""
    f = click.option("--why", required=True, metavar="TEXT", help="The reason (written to the audit log).")(f)
    return click.option(
        "--by", metavar="NAME", callback=_by_default, show_default="$USER",
        help="Who you are (written to the audit log).",
    )(f)


def _by_default(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    # $USER is read when the command runs (not at import), and a shell without it must say --by.
    value = value or os.environ.get("USER")
    if not value:
        raise click.MissingParameter(ctx=ctx, param=param)
    return value


def client_for(g: Globals, url: str | None) -> ApiClient:
    """A client of the worker's API at `url` (default: the web host and port of the settings)."""
    settings = g.settings()
    token = settings.api_token.get_secret_value() if settings.api_token else None
    return ApiClient(url or web_url(settings), token)


def web_url(settings: Settings) -> str:
    """The worker's web address from the settings."""
    return f"http://{settings.web_host}:{settings.web_port}"


# ---------------------------------------------------------------- worker and local services


@cli.command("run")
@click.option("--web-port", type=int, help="HTTP port of the API, /metrics, /healthz, /readyz (env MONITOR_WEB_PORT).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), help="(env MONITOR_LOG_LEVEL)")
@click.option("--rules", "rules_path", type=click.Path(path_type=Path), help="Rules file or folder (env MONITOR_RULES_PATH).")
@pass_globals
def cmd_run(g: Globals, web_port: int | None, log_level: str | None, rules_path: Path | None) -> int:
    """Run the worker until it is stopped (SIGTERM / Ctrl-C)."""
    import faust

    from monitor.app import Monitor
    from monitor.rules.loader import load_rules
    from monitor.topics import ensure_topics

    settings = g.settings(web_port=web_port, log_level=log_level, rules_path=rules_path)
    # The worker's own log is the point of `run`: the libraries log at the chosen level.
    logging.getLogger().setLevel(settings.log_level.upper())
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    load_rules(settings.rules_path)  # a wrong rules file stops us before anything connects
    asyncio.run(_check_redis(settings.redis_url))
    asyncio.run(ensure_topics(settings))
    monitor = Monitor(settings)
    # The worker allocates millions of short-lived objects (events, counters) around a large,
    # long-lived heap (Faust, caches): the default thresholds spent 17 % of an evaluator tick at
    # 1,000 models in collections (bench/evaluator_scale.py). Freeze what start-up built and
    # collect less often.
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)
    worker = faust.Worker(monitor.app, loglevel=settings.log_level, quiet=True)
    worker.execute_from_commandline()
    return 0


async def _check_redis(url: str) -> None:
    """At start, an unreachable Redis is a configuration error (later, an outage is waited out)."""
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    from monitor.exceptions import ServicesError

    client = Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        raise ServicesError(
            f"Redis at {url} does not answer ({exc}); start it with `monitor services up` or set MONITOR_REDIS_URL"
        ) from None
    finally:
        await client.aclose()


@cli.group("services", short_help="The local Kafka broker and Redis for development.")
def services_group() -> None:
    """The local Kafka broker and Redis for development, on the addresses of MONITOR_KAFKA_BOOTSTRAP and
    MONITOR_REDIS_URL (or --kafka-bootstrap / --redis-url)."""


def _service_config(g: Globals) -> ServiceConfig:
    """Where the local services listen: the addresses the worker dials (flags, else env)."""
    from monitor.service_config import ServiceConfig

    return ServiceConfig.from_settings(g.settings())


@services_group.command("up")
@json_option
@pass_globals
def services_up(g: Globals, as_json: bool) -> int:
    """Start Kafka and Redis (or use the ones already running); wait until both answer."""
    from monitor import services

    status = services.up(_service_config(g))
    if as_json:
        out.print_json({"kafka": status.kafka_bootstrap, "kafka_external": status.kafka_external,
                        "redis": status.redis_url, "redis_external": status.redis_external,
                        "startup_s": status.startup_s})
        return 0
    click.echo(f"kafka  {status.kafka_bootstrap}{'  (external)' if status.kafka_external else ''}")
    click.echo(f"redis  {status.redis_url}{'  (external)' if status.redis_external else ''}")
    click.echo(f"ready in {status.startup_s:.1f}s")
    return 0


@services_group.command("down")
@pass_globals
def services_down(g: Globals) -> int:
    """Stop the Kafka and Redis started from here."""
    from monitor import services

    services.down(_service_config(g))
    click.echo("stopped")
    return 0


@services_group.command("status")
@json_option
@pass_globals
def services_status(g: Globals, as_json: bool) -> int:
    """Whether Kafka and Redis run, with pid and address."""
    from monitor import services

    states = services.status(_service_config(g))
    if as_json:
        out.print_json(states)
    else:
        for name, state in states.items():
            click.echo(f"{name:6} {state}")
    return 0


@cli.command("demo", short_help="A live demo: local services, a worker, synthetic traffic.")
@click.option("--duration", type=click.FloatRange(min=1), default=60.0, show_default=True, help="Seconds of traffic.")
@click.option("--rate", type=click.FloatRange(min=3), default=500.0, show_default=True, help="Predictions per second.")
def cmd_demo(duration: float, rate: float) -> int:
    """Local services, a worker and synthetic traffic with an injected degradation, live in the terminal."""
    from monitor.demo import run_demo

    return run_demo(duration_s=duration, rate_per_s=rate)


@cli.group("rules")
def rules_group() -> None:
    """Detection rules."""


@rules_group.command("check")
@click.argument("path", type=click.Path(path_type=Path), required=False)
@pass_globals
def rules_check(g: Globals, path: Path | None) -> int:
    """Validate a rules file or folder (default: MONITOR_RULES_PATH, else the packaged rules); exit 1
    with file:line: field: problem when wrong."""
    from monitor.rules.loader import check_command

    # No PATH: the rules `monitor run` would load (MONITOR_RULES_PATH, else the packaged default).
    code, text = check_command(path if path is not None else g.settings().rules_path)
    click.echo(text, err=code != 0)
    return code


# ---------------------------------------------------------------- offline checks


@cli.group("audit")
def audit_group() -> None:
    """The hash-chained audit log of every human action."""


@audit_group.command("verify")
@json_option
@pass_globals
def audit_verify(g: Globals, as_json: bool) -> int:
    """Check every link of the audit log's hash chain in Redis; exit 1 if any is broken."""
    from redis.asyncio import Redis

    from monitor.audit import AuditLog, Verification
    from monitor.store.keys import Keys

    settings = g.settings()

    async def verify() -> Verification:
        redis = Redis.from_url(settings.redis_url, socket_connect_timeout=3)
        try:
            return await AuditLog(redis, Keys(settings.key_prefix)).verify()
        except (OSError, ConnectionError) as exc:
            from monitor.exceptions import ServicesError

            raise ServicesError(f"Redis at {settings.redis_url} does not answer ({exc}); set MONITOR_REDIS_URL") from None
        finally:
            await redis.aclose()

    result = asyncio.run(verify())
    if as_json:
        out.print_json({"ok": result.ok, "entries": result.entries, "problem": result.problem or None})
    elif result.ok:
        click.echo(f"audit log intact: {result.entries} entries")
    else:
        click.echo(f"audit log TAMPERED: {result.problem}", err=True)
    return 0 if result.ok else 1


@cli.group("evidence", short_help="Incident evidence bundles.")
def evidence_group() -> None:
    """Incident evidence bundles (files listed with their SHA-256 in a manifest)."""


@evidence_group.command("verify")
@click.argument("incident_id", metavar="ID")
@click.option("--dir", "evidence_dir", type=click.Path(path_type=Path), help="Evidence folder (env MONITOR_EVIDENCE_DIR).")
@json_option
@pass_globals
def evidence_verify(g: Globals, incident_id: str, evidence_dir: Path | None, as_json: bool) -> int:
    """Check an incident's evidence files against their manifest: exit 1 if tampered, 2 if there is none."""
    from monitor.incidents.evidence import EvidenceNotFound, verify_evidence

    root = g.settings(evidence_dir=evidence_dir).evidence_dir
    try:
        problems = verify_evidence(root, incident_id)
    except EvidenceNotFound as exc:
        click.echo(f"monitor: {exc}", err=True)
        return 2
    if as_json:
        out.print_json({"id": incident_id, "dir": str(root / incident_id), "ok": not problems, "problems": problems})
    elif problems:
        for problem in problems:
            click.echo(f"TAMPERED {incident_id}: {problem}", err=True)
    else:
        click.echo(f"evidence of {incident_id} intact ({root / incident_id})")
    return 1 if problems else 0


# ---------------------------------------------------------------- drills


@cli.command("drill", short_help="Run drill scenarios against a running worker.")
@click.argument("scenarios", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@api_options
@pass_globals
def cmd_drill(g: Globals, scenarios: tuple[Path, ...], url: str | None, as_json: bool) -> int:
    """Run drill scenarios (files or folders, see drills/) against a running worker; exit 1 if any fails."""
    from monitor.drill import load_scenario, run_drill

    settings = g.settings()
    paths = [p for arg in scenarios for p in (sorted(arg.glob("*.yaml")) if arg.is_dir() else [arg])]
    loaded = [load_scenario(path) for path in paths]
    worker_url = url or web_url(settings)
    failed, reports = 0, []
    for scenario in loaded:
        report = asyncio.run(run_drill(scenario, settings, worker_url=worker_url,
                                       progress=lambda line: click.echo(line, err=True)))
        failed += not report.passed
        reports.append(report)
        if not as_json:
            click.echo(report.text())
    if as_json:
        out.print_json([{
            "name": r.scenario.name, "model_id": r.model_id, "passed": r.passed,
            "outcomes": [{"rule": o.expectation.rule, "passed": o.passed, "detail": o.detail, "delay_s": o.delay_s}
                         for o in r.outcomes],
        } for r in reports])
    else:
        click.echo(f"{len(loaded) - failed} passed, {failed} failed")
    return 1 if failed else 0


from monitor import cli_api  # noqa: E402  # registers `incidents` and `models` on `cli`

__all__ = ["cli", "cli_api", "main"]


# ---------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `monitor` console script: the exit code."""
    try:
        result = cli.main(args=list(argv) if argv is not None else None, prog_name="monitor", standalone_mode=False)
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
        return f"{_env_name((field,))}: {SETTING_HINTS.get(field, 'is not valid JSON')} (got {_env_value(field)!r})"
    error = exc.errors()[0]
    loc = tuple(str(part) for part in error["loc"])
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
