"""The worker and the local services: `run`, `services`, `demo`, `rules check`."""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import click

from monitor.cli import output as out

if TYPE_CHECKING:
    from monitor.dev.service_config import ServiceConfig


from monitor.cli.base import (
    GC_THRESHOLD,
    NOISY_LOGGERS,
    Globals,
    cli,
    json_option,
    pass_globals,
)

# ---------------------------------------------------------------- worker and local services


@cli.command("run")
@click.option(
    "--web-port", type=int, help="HTTP port of the API, /metrics, /healthz, /readyz (env MONITOR_WEB_PORT)."
)
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), help="(env MONITOR_LOG_LEVEL)"
)
@click.option(
    "--rules",
    "rules_path",
    type=click.Path(path_type=Path),
    help="Rules file or folder (env MONITOR_RULES_PATH).",
)
@pass_globals
def cmd_run(g: Globals, web_port: int | None, log_level: str | None, rules_path: Path | None) -> int:
    """Run the worker until it is stopped (SIGTERM / Ctrl-C)."""
    import faust

    from monitor.api import api_tokens, open_reads
    from monitor.app import Monitor
    from monitor.preflight import check_kafka, check_redis
    from monitor.rules.loader import load_rules
    from monitor.topics import ensure_topics

    settings = g.settings(web_port=web_port, log_level=log_level, rules_path=rules_path)
    load_rules(settings.rules_path)  # a wrong rules file stops us before anything connects
    open_reads(settings, api_tokens(settings, warn_legacy=False))  # and so does a wrong tokens file
    # An absent service, a refused password or an untrusted certificate: one line, before anything
    # starts, and before the libraries' logs are let through.
    asyncio.run(check_redis(settings))
    asyncio.run(check_kafka(settings))
    # The worker's own log is the point of `run`: the libraries log at the chosen level.
    logging.getLogger().setLevel(settings.log_level.upper())
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
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


@cli.group("services", short_help="The local Kafka broker and Redis for development.")
def services_group() -> None:
    """The local Kafka broker and Redis for development, on the addresses of MONITOR_KAFKA_BOOTSTRAP and
    MONITOR_REDIS_URL (or --kafka-bootstrap / --redis-url)."""


def _service_config(g: Globals, *, secure: bool = False) -> ServiceConfig:
    """Where the local services listen: the addresses the worker dials (flags, else env)."""
    from monitor.dev.service_config import ServiceConfig

    return ServiceConfig.from_settings(g.settings(), secure=secure)


@services_group.command("up")
@click.option(
    "--secure",
    is_flag=True,
    help="Kafka with a SASL_SSL listener and Redis with TLS and an ACL user, their certificates and "
    "passwords made in MONITOR_STATE_DIR/secure (secure.env there holds the settings that reach them).",
)
@json_option
@pass_globals
def services_up(g: Globals, secure: bool, as_json: bool) -> int:
    """Start Kafka and Redis (or use the ones already running); wait until both answer."""
    from monitor.dev import services
    from monitor.dev.secure import load

    config = _service_config(g, secure=secure)
    status = services.up(config)
    made = load(config) if config.secure else None
    if as_json:
        out.print_json(
            {
                "kafka": status.kafka_bootstrap,
                "kafka_external": status.kafka_external,
                "redis": status.redis_url,
                "redis_external": status.redis_external,
                "startup_s": status.startup_s,
                "settings_file": str(made.env_file) if made else None,
            }
        )
        return 0
    click.echo(f"kafka  {status.kafka_bootstrap}{'  (external)' if status.kafka_external else ''}")
    click.echo(f"redis  {status.redis_url}{'  (external)' if status.redis_external else ''}")
    click.echo(f"ready in {status.startup_s:.1f}s")
    if made is not None:
        click.echo(f"TLS and SASL: the settings that reach them are in {made.env_file}")
        click.echo(f"  set -a; . {made.env_file}; set +a")
    return 0


@services_group.command("down")
@pass_globals
def services_down(g: Globals) -> int:
    """Stop the Kafka and Redis started from here."""
    from monitor.dev import services

    services.down(_service_config(g))
    click.echo("stopped")
    return 0


@services_group.command("status")
@json_option
@pass_globals
def services_status(g: Globals, as_json: bool) -> int:
    """Whether Kafka and Redis run, with pid and address."""
    from monitor.dev import services

    states = services.status(_service_config(g))
    if as_json:
        out.print_json(states)
    else:
        for name, state in states.items():
            click.echo(f"{name:6} {state}")
    return 0


@cli.command("demo", short_help="A live demo: local services, a worker, synthetic traffic.")
@click.option(
    "--duration", type=click.FloatRange(min=1), default=60.0, show_default=True, help="Seconds of traffic."
)
@click.option(
    "--rate", type=click.FloatRange(min=3), default=500.0, show_default=True, help="Predictions per second."
)
def cmd_demo(duration: float, rate: float) -> int:
    """Local services, a worker and synthetic traffic with an injected degradation, live in the terminal."""
    from monitor.dev.demo import run_demo

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
