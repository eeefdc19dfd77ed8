"""`monitor audit verify|list|restore`: the audit log in Redis, checked against its Kafka anchor."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

import click

from monitor.cli import output as out
from monitor.cli.base import Globals, cli, json_option, pass_globals
from monitor.settings import Settings

T = TypeVar("T")
VERDICT_WORD = {"tampered": "TAMPERED", "missing": "INCOMPLETE", "unanchored": "NOT ANCHORED"}
AUDIT_HEADERS = ("SEQ", "AT (UTC)", "WHO", "ACTION", "TARGET", "WHY", "DETAILS")


@cli.group("audit")
def audit_group() -> None:
    """The audit log of every human action: HMAC-sealed, chained, anchored on the Kafka audit topic."""


def _with_redis(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run `work(redis)` on a client of the settings' Redis; an unreachable Redis is one line."""
    from monitor.exceptions import ServicesError
    from monitor.security import redact_url, redis_client
    from monitor.store.redis import TRANSIENT

    async def run() -> T:
        redis = redis_client(settings, socket_connect_timeout=3)
        try:
            return await work(redis)
        except TRANSIENT as exc:  # redis-py's connection errors are no OSError
            raise ServicesError(
                f"Redis at {redact_url(settings.redis_url)} does not answer ({exc}); set MONITOR_REDIS_URL"
            ) from None
        finally:
            await redis.aclose()

    return asyncio.run(run())


async def _redis_started_at(redis: Any) -> float:
    """When the Redis server last started, by its own clock (TIME minus its uptime)."""
    now_s, now_us = await redis.time()
    uptime = float((await redis.info("server"))["uptime_in_seconds"])
    return float(now_s) + float(now_us) / 1e6 - uptime


@audit_group.command("verify")
@click.option(
    "--no-anchor", is_flag=True, help="Check the Redis chain alone (a removed newest entry goes unseen)."
)
@json_option
@pass_globals
def audit_verify(g: Globals, no_anchor: bool, as_json: bool) -> int:
    """Check every seal and link of the audit log, and the log against the audit topic; exit 1 if not
    intact, with one line naming the entry."""
    from monitor.audit import Verification, verify_chain
    from monitor.audit.anchor import read_anchor
    from monitor.audit.chain import key_id
    from monitor.audit.secret import audit_secret
    from monitor.security import kafka_client_options
    from monitor.store.keys import Keys

    settings = g.settings()
    topic = settings.topics.audit

    async def verify(redis: Any) -> tuple[Verification, str, str]:
        raw = await redis.lrange(Keys(settings.key_prefix).audit(), 0, -1)  # Redis first: is it there?
        secret = audit_secret(settings, create=False)
        return await check(redis, raw, secret.value), secret.source, key_id(secret.value)

    async def check(redis: Any, raw: list[bytes], secret: bytes) -> Verification:
        started = await _redis_started_at(redis)
        if no_anchor:
            return verify_chain(raw, secret, None, redis_started_at=started)
        anchor = await read_anchor(settings.kafka_bootstrap, topic, **kafka_client_options(settings))
        result = verify_chain(raw, secret, anchor or [], redis_started_at=started)
        if anchor is None and raw and result.verdict in ("intact", "unanchored"):
            return replace(
                result,
                ok=False,
                verdict="unanchored",
                problem=f"the audit topic {topic!r} does not exist (MONITOR_TOPIC_AUDIT), so a removed "
                "entry would go unnoticed; the worker creates it at start",
            )
        return result

    result, source, kid = _with_redis(settings, verify)
    if as_json:
        out.print_json(
            {
                "ok": result.ok,
                "verdict": result.verdict,
                "entries": result.entries,
                "anchored": result.anchored,
                "seq": result.first_bad,
                "problem": result.problem or None,
                "legacy": result.legacy,
                "notes": list(result.notes),
                "key_id": kid,
                "secret": source,
                "topic": None if no_anchor else topic,
            }
        )
    elif result.ok:
        where = "the Redis chain alone" if no_anchor else f"{result.anchored} records on topic {topic}"
        count = f"{result.entries} entr{'y' if result.entries == 1 else 'ies'}"
        click.echo(f"audit log intact: {count} (checked against {where}; key id {kid})")
        for note in result.notes:
            click.echo(f"  note: {note}")
    else:
        click.echo(f"audit log {VERDICT_WORD[result.verdict]}: {result.problem}", err=True)
    return 0 if result.ok else 1


@audit_group.command("list")
@click.option("--who", metavar="NAME", help="Only this person's entries (`dana` matches human:dana).")
@click.option("--action", metavar="ACTION", help="Only this action (acknowledge, resolve, escalate, ...).")
@click.option("--target", metavar="ID", help="Only entries about this incident or model.")
@click.option(
    "--since", metavar="TIME", help="From TIME on: 2026-12-01T09:00:00Z, epoch seconds, or an age (2h)."
)
@click.option("--until", metavar="TIME", help="Before TIME (same forms as --since).")
@click.option(
    "--limit", type=click.IntRange(1), metavar="N", default=50, show_default=True, help="The newest N."
)
@json_option
@pass_globals
def audit_list(
    g: Globals,
    who: str | None,
    action: str | None,
    target: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    as_json: bool,
) -> int:
    """The audit entries that match, oldest first (the newest --limit of them), read from Redis."""
    from monitor.audit.query import AuditQuery, parse_time
    from monitor.store.keys import Keys

    now = time.time()
    try:
        query = AuditQuery(
            who=who,
            action=action,
            target=target,
            since=None if since is None else parse_time(since, now),
            until=None if until is None else parse_time(until, now),
            limit=limit,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since/--until") from None
    settings = g.settings()

    async def read(redis: Any) -> list[bytes]:
        return list(await redis.lrange(Keys(settings.key_prefix).audit(), 0, -1))

    import orjson

    found = query.select(orjson.loads(raw) for raw in _with_redis(settings, read))
    if as_json:
        out.print_json(found)
        return 0
    rows = [
        [
            str(e.get("seq")),
            out.when(e.get("at"), seconds=True),
            str(e.get("who")),
            str(e.get("action")),
            str(e.get("target")),
            out.value(e.get("why")),
            out.value(e.get("details")),
        ]
        for e in found
    ]
    out.table(AUDIT_HEADERS, rows)
    return 0


@audit_group.command("restore")
@json_option
@pass_globals
def audit_restore(g: Globals, as_json: bool) -> int:
    """Put back, from the audit topic, the entries missing at the end of the Redis list (after a Redis
    crash lost them); only sealed originals that continue the chain are appended."""
    from monitor.audit import AuditLog
    from monitor.audit.anchor import read_anchor
    from monitor.audit.secret import audit_secret
    from monitor.security import kafka_client_options
    from monitor.store.keys import Keys

    settings = g.settings()

    async def restore(redis: Any) -> int:
        secret = audit_secret(settings, create=False)
        anchor = (
            await read_anchor(
                settings.kafka_bootstrap, settings.topics.audit, **kafka_client_options(settings)
            )
            or []
        )
        return await AuditLog(redis, Keys(settings.key_prefix), secret=secret.value).restore(anchor)

    restored = _with_redis(settings, restore)
    if as_json:
        out.print_json({"restored": restored})
    else:
        click.echo(
            f"restored {restored} entr{'y' if restored == 1 else 'ies'} from topic {settings.topics.audit}"
        )
    return 0
