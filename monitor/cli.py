"""The `monitor` command: thin subcommands that call library functions and return exit codes."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

from monitor.exceptions import MonitorError
from monitor.settings import Settings

GC_THRESHOLD = 50_000  # allocations between young-generation collections (Python's default: 700)

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

    # No PATH: the rules `monitor run` would load (MONITOR_RULES_PATH, else the packaged default).
    code, text = check_command(Path(args.path) if args.path else _settings(args).rules_path)
    print(text, file=sys.stdout if code == 0 else sys.stderr)
    return code


def _client(args: argparse.Namespace) -> Any:
    from monitor.client import ApiClient

    settings = _settings(args)
    url = args.url or f"http://{settings.web_host}:{settings.web_port}"
    token = settings.api_token.get_secret_value() if settings.api_token else None
    return ApiClient(url, token)


def _print(args: argparse.Namespace, value: Any, table: Callable[[Any], list[list[str]]]) -> None:
    if args.json:
        print(json.dumps(value, indent=2, sort_keys=True))
        return
    rows = table(value)
    if not rows:
        print("(none)")
        return
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _incident_rows(incidents: list[dict[str, Any]]) -> list[list[str]]:
    rows = [["ID", "STATUS", "SEVERITY", "LEVEL", "MODEL", "RULE", "GROUP", "OPENED (UTC)"]]
    for i in incidents:
        opened = time.strftime("%Y-%m-%d %H:%M", time.gmtime(i["opened_at"]))
        rows.append([i["id"], i["status"], i["severity"], str(i["level"]), i["model_id"], i["rule"],
                     i.get("group") or "", opened])
    return rows


def cmd_incidents(args: argparse.Namespace) -> int:
    """List, show, acknowledge, mitigate or resolve incidents through the worker's API."""
    client = _client(args)
    if args.action == "list":
        query = f"/incidents?status={args.status}" + (f"&model={args.model}" if args.model else "")
        _print(args, client.get(query)["incidents"], _incident_rows)
    elif args.action == "show":
        incident = client.get(f"/incidents/{args.id}")
        if args.json:
            print(json.dumps(incident, indent=2, sort_keys=True))
        else:
            _show_incident(incident)
    else:
        if not args.id or not args.why:
            raise SystemExit(f"monitor incidents {args.action} ID --by NAME --why TEXT")
        action = {"ack": "acknowledge"}.get(args.action, args.action)
        reply = client.post(f"/incidents/{args.id}/{action}", {"by": args.by, "why": args.why})
        print(json.dumps(reply, indent=2) if args.json else f"{args.id}: {reply.get('incident', {}).get('status', reply.get('status'))}")
    return 0


def _show_incident(i: dict[str, Any]) -> None:
    print(f"{i['id']}  {i['severity']}  {i['status']}  level {i['level']}")
    print(f"  {i.get('summary') or i['rule']}")
    print(f"  model {i['model_id']} {i.get('model_version') or ''}  rule {i['rule']}  group {i.get('group') or '-'}")
    obs = i.get("observation", {})
    print(f"  value {obs.get('value')}  threshold {obs.get('threshold')}  baseline {obs.get('baseline')}  samples {obs.get('samples')}")
    if i.get("evidence_ref"):
        print(f"  evidence {i['evidence_ref']}")
    for entry in i.get("timeline", []):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(entry["at"]))
        extra = ", ".join(f"{k}={v}" for k, v in entry.items() if k not in ("at", "what"))
        print(f"  {when}  {entry['what']}  {extra}")


def cmd_models(args: argparse.Namespace) -> int:
    """Show models and their levels; escalate or release a manual override."""
    client = _client(args)
    if args.action == "status":
        if args.model:
            model = client.get(f"/models/{args.model}")
            if args.json:
                print(json.dumps(model, indent=2, sort_keys=True))
            else:
                print(f"{model['model_id']}: level {model['level']} (override {model['override']}), seq {model['seq']}")
                if model.get("control"):
                    print(f"  {model['control']['reason']}")
                _print(args, model["open_incidents"], _incident_rows)
        else:
            rows = lambda models: [["MODEL", "LEVEL", "OVERRIDE", "SEQ", "OPEN INCIDENTS"]] + [  # noqa: E731
                [m["model_id"], str(m["level"]), str(m["override"] if m["override"] is not None else "-"),
                 str(m["seq"]), str(m["open_incidents"])] for m in models]
            _print(args, client.get("/models")["models"], rows)
    else:
        if not args.model or not args.why:
            raise SystemExit(f"monitor models {args.action} MODEL [--level N] --by NAME --why TEXT")
        body: dict[str, Any] = {"by": args.by, "why": args.why}
        if args.action == "escalate":
            body["level"] = args.level
        reply = client.post(f"/models/{args.model}/{args.action}", body)
        print(json.dumps(reply, indent=2) if args.json else f"{args.model}: {args.action} {'applied' if reply.get('ok') else reply}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """Verify the hash chain of the audit log."""
    from redis.asyncio import Redis

    from monitor.audit import AuditLog
    from monitor.store.keys import Keys

    settings = _settings(args)

    async def verify() -> Any:
        redis = Redis.from_url(settings.redis_url)
        try:
            return await AuditLog(redis, Keys(settings.key_prefix)).verify()
        finally:
            await redis.aclose()

    result = asyncio.run(verify())
    if result.ok:
        print(f"audit log intact: {result.entries} entries")
        return 0
    print(f"audit log TAMPERED: {result.problem}", file=sys.stderr)
    return 1


def cmd_evidence(args: argparse.Namespace) -> int:
    """Check an incident's evidence files against their SHA-256 manifest."""
    from monitor.incidents.evidence import verify_evidence

    settings = _settings(args)
    try:
        problems = verify_evidence(settings.evidence_dir, args.id)
    except ValueError as exc:
        print(f"monitor: {exc}", file=sys.stderr)
        return 2
    if problems:
        for problem in problems:
            print(f"TAMPERED {args.id}: {problem}", file=sys.stderr)
        return 1
    print(f"evidence of {args.id} intact ({settings.evidence_dir / args.id})")
    return 0


def cmd_drill(args: argparse.Namespace) -> int:
    """Run drill scenarios against a running worker; exit 1 if any fails."""
    from pathlib import Path

    from monitor.drill import load_scenario, run_drill

    settings = _settings(args)
    paths = [p for arg in args.scenarios for p in (sorted(Path(arg).glob("*.yaml")) if Path(arg).is_dir() else [Path(arg)])]
    scenarios = [load_scenario(path) for path in paths]
    failed = 0
    for scenario in scenarios:
        report = asyncio.run(run_drill(scenario, settings))
        print(report.text(), flush=True)
        failed += not report.passed
    print(f"{len(scenarios) - failed} passed, {failed} failed")
    return 1 if failed else 0


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
    check.add_argument("path", nargs="?", help="default: MONITOR_RULES_PATH, else the packaged rules")
    check.set_defaults(func=cmd_rules_check)

    def api_command(name: str, help_text: str) -> argparse.ArgumentParser:
        parser_ = sub.add_parser(name, help=help_text)
        parser_.add_argument("--url", help="the worker's web address (default from MONITOR_WEB_HOST/PORT)")
        parser_.add_argument("--json", action="store_true", help="machine-readable output")
        parser_.add_argument("--by", default=os.environ.get("USER", "operator"), help="who you are (audited)")
        parser_.add_argument("--why", help="the reason (audited)")
        return parser_

    incidents = api_command("incidents", "list, show, ack, mitigate or resolve incidents")
    incidents.add_argument("action", choices=["list", "show", "ack", "mitigate", "resolve"])
    incidents.add_argument("id", nargs="?")
    incidents.add_argument("--status", default="open", choices=["open", "acknowledged", "mitigated", "resolved", "all"])
    incidents.add_argument("--model")
    incidents.set_defaults(func=cmd_incidents)

    models = api_command("models", "model status; escalate or release a manual override")
    models.add_argument("action", choices=["status", "escalate", "release"])
    models.add_argument("model", nargs="?")
    models.add_argument("--level", type=int, choices=range(5))
    models.set_defaults(func=cmd_models)

    audit = sub.add_parser("audit", help="the audit log")
    audit.add_argument("action", choices=["verify"])
    audit.set_defaults(func=cmd_audit)

    evidence = sub.add_parser("evidence", help="incident evidence bundles")
    evidence.add_argument("action", choices=["verify"])
    evidence.add_argument("id")
    evidence.set_defaults(func=cmd_evidence)

    drill = sub.add_parser("drill", help="run drill scenarios against a running worker")
    drill.add_argument("scenarios", nargs="+", help="scenario files or folders (see drills/)")
    drill.set_defaults(func=cmd_drill)

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
