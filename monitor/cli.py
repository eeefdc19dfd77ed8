"""The `monitor` command: thin subcommands that call library functions and return exit codes."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from monitor.exceptions import MonitorError
from monitor.settings import Settings

log = logging.getLogger("monitor")


def _settings(args: argparse.Namespace) -> Settings:
    return Settings().with_overrides(
        kafka_bootstrap=args.kafka_bootstrap,
        redis_url=args.redis_url,
        web_port=getattr(args, "web_port", None),
        log_level=getattr(args, "log_level", None),
    )


def cmd_run(args: argparse.Namespace) -> int:
    """Run the worker until it is stopped (SIGTERM / Ctrl-C)."""
    import faust

    from monitor.app import Monitor
    from monitor.rules.loader import load_rules
    from monitor.topics import ensure_topics

    settings = _settings(args)
    load_rules(settings.rules_path)  # a wrong rules file stops us before anything connects
    asyncio.run(ensure_topics(settings))
    monitor = Monitor(settings)
    worker = faust.Worker(monitor.app, loglevel=settings.log_level, quiet=True)
    worker.execute_from_commandline()
    return 0


def cmd_services(args: argparse.Namespace) -> int:
    """Start, stop or show the local Kafka broker and Redis."""
    from monitor import services

    if args.action == "up":
        status = services.up()
        print(f"kafka  {status.kafka_bootstrap}{'  (external)' if status.kafka_external else ''}")
        print(f"redis  {status.redis_url}{'  (external)' if status.redis_external else ''}")
        print(f"ready in {status.startup_s:.1f}s")
    elif args.action == "down":
        services.down()
        print("stopped")
    else:
        for name, state in services.status().items():
            print(f"{name:6} {state}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Local services, a worker and synthetic traffic, with live figures in the terminal."""
    from monitor.demo import run_demo

    return run_demo(duration_s=args.duration, rate_per_s=args.rate)


def cmd_rules_check(args: argparse.Namespace) -> int:
    """Validate a rules file or directory; exit 1 with file:line: field: problem when wrong."""
    from pathlib import Path

    from monitor.rules.loader import check_command

    code, text = check_command(Path(args.path))
    print(text, file=sys.stdout if code == 0 else sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="monitor", description="AI incident-response monitor")
    parser.add_argument("--kafka-bootstrap", help="host:port (env MONITOR_KAFKA_BOOTSTRAP)")
    parser.add_argument("--redis-url", help="redis://host:port/db (env MONITOR_REDIS_URL)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the worker")
    run.add_argument("--web-port", type=int, help="HTTP port of /metrics, /healthz, /readyz")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.set_defaults(func=cmd_run)

    svc = sub.add_parser("services", help="local Kafka broker and Redis for development")
    svc.add_argument("action", choices=["up", "down", "status"])
    svc.set_defaults(func=cmd_services)

    rules = sub.add_parser("rules", help="detection rules")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True)
    check = rules_sub.add_parser("check", help="validate a rules file or directory")
    check.add_argument("path", nargs="?", default="rules")
    check.set_defaults(func=cmd_rules_check)

    demo = sub.add_parser("demo", help="run the daemon on live synthetic traffic")
    demo.add_argument("--duration", type=float, default=60.0, help="seconds of traffic")
    demo.add_argument("--rate", type=float, default=500.0, help="predictions per second")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `monitor` console script."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ValidationError as exc:
        print(f"monitor: bad setting: {_first_error(exc)}", file=sys.stderr)
        return 2
    except MonitorError as exc:
        print(f"monitor: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']} (got {error.get('input')!r})"


if __name__ == "__main__":
    sys.exit(main())
