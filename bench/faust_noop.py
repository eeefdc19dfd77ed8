"""Faust's own per-message ceiling: a no-op agent over a pre-loaded topic of single-object messages.

A faust-streaming app whose only agent does `async for _ in stream: n += 1` (raw values, nothing
decoded) consumes the topic from the earliest offset with a fresh consumer group, in a child
process. The child times from the first message to the `total`-th, writes the rate to a file the
parent polls, and stops itself; the parent SIGKILLs it if it has not exited a few seconds later
(shutdown is not what is measured). Nothing here can hang: the parent has a hard deadline and the
child a watchdog that ends it even if the parent is gone.

Why the earlier inline version (`FAUST_NOOP` in ingest_throughput.py) hung:
  1. `print("RATE …")` never reached the pipe: `mode.Worker` redirects stdout and stderr into the
     logging system (`redirect_stdouts=True`, at WARNING), and `loglevel="error"` drops them.
  2. `raise SystemExit(0)` in the agent does not end the process: mode's `Service._execute_task`
     catches BaseException and marks the agent crashed; its OneForOneSupervisor restarts the actor
     while the worker starts stopping, and that stop never finishes ("OneForOneSupervisor:
     Stopping..." forever; faust-streaming issue #324, "stays in Stopping state indefinitely").
  3. SIGTERM then does nothing: the worker's handler calls `Worker.stop()`, which returns at once
     because the worker is already marked stopped; the loop keeps waiting on the stuck stop.
  Here: stdout is not redirected and the rate goes to a file, the agent never raises, the child
  asks for an ordinary stop with SIGTERM after reporting (a healthy worker honours it), and the
  parent kills it with SIGKILL after a grace period whatever happens.

Library use: `faust_noop(bootstrap, topic, total)` → events/s (the topic must already hold at
least `total` messages). Standalone (creates a unique 4-partition topic, pre-loads it, deletes it):
    .venv/bin/python bench/faust_noop.py --events 20000
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[1]
CHILD_FLAG = "--child"
STOP_GRACE_S = 5.0  # after the child reported: how long it may take to stop before SIGKILL
POLL_S = 0.05
FETCH_BYTES = 8 * 1024 * 1024  # as the monitor's own app (monitor/topics.py TOPIC_MAX_MESSAGE_BYTES)

T = TypeVar("T")


def _run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even when the caller is inside an event loop
    (ingest_throughput.main calls faust_noop() from a coroutine): on a thread of its own."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


# ---------------------------------------------------------------------------------------------
# The child: one Faust worker with a no-op agent.
# ---------------------------------------------------------------------------------------------


def _write_result(path: Path, result: dict[str, float]) -> None:
    """Atomically, so the parent never reads half a file."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(result))
    os.replace(partial, path)


def _child(
    bootstrap: str, topic: str, total: int, partitions: int, app_id: str, result_path: Path, timeout_s: float
) -> None:
    """Run the no-op worker until it has seen `total` messages, report, then stop."""
    import faust  # only the child needs Faust

    # The watchdog: whatever Faust does, this process is gone after its budget.
    watchdog = threading.Timer(timeout_s, os._exit, (3,))
    watchdog.daemon = True
    watchdog.start()

    app = faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        autodiscover=False,
        web_enabled=False,  # no port to collide with a running monitor or another bench
        topic_partitions=partitions,  # only Faust's own __assignor-__leader topic is created
        consumer_auto_offset_reset="earliest",
        consumer_max_fetch_size=FETCH_BYTES,
        broker_commit_interval=1.0,
    )
    source = app.topic(topic, value_type=bytes, key_serializer="raw", value_serializer="raw")
    state: dict[str, float] = {"n": 0, "t0": 0.0}

    @app.agent(source)
    async def noop(stream: Any) -> None:
        async for _ in stream:
            now = time.perf_counter()
            if state["n"] == 0:
                state["t0"] = now
            state["n"] += 1
            if state["n"] == total:
                elapsed = now - state["t0"]
                rate = (total - 1) / elapsed if elapsed > 0 else float("inf")
                _write_result(result_path, {"rate": rate, "elapsed_s": elapsed, "messages": total})
                os.write(1, f"RATE {rate:.1f}\n".encode())
                os.kill(os.getpid(), signal.SIGTERM)  # an ordinary stop; never raise in an agent

    # redirect_stdouts=False: mode would otherwise turn stdout into log records at WARNING.
    worker = faust.Worker(app, loglevel="warning", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


# ---------------------------------------------------------------------------------------------
# The parent.
# ---------------------------------------------------------------------------------------------


async def _topic_size(bootstrap: str, topic: str) -> tuple[int, int]:
    """(partitions, messages between the earliest and the latest offsets) of an existing topic.
    Metadata of all topics is asked for, never of this one by name: that could auto-create it."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    await asyncio.wait_for(admin.start(), 30)
    try:
        described = await asyncio.wait_for(admin.describe_topics(None), 30)
    finally:
        await admin.close()
    found = [t for t in described if t["topic"] == topic]
    if not found:
        raise ValueError(f"topic {topic!r} does not exist on {bootstrap}")
    parts = [TopicPartition(topic, p["partition"]) for p in found[0]["partitions"]]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, request_timeout_ms=15_000
    )
    await asyncio.wait_for(consumer.start(), 30)
    try:
        first = await asyncio.wait_for(consumer.beginning_offsets(parts), 30)
        last = await asyncio.wait_for(consumer.end_offsets(parts), 30)
    finally:
        await consumer.stop()
    return len(parts), sum(last[tp] - first[tp] for tp in parts)


async def _delete_topics(bootstrap: str, topics: list[str]) -> None:
    """Best effort: a bench leaves no topics behind on the shared broker."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    try:
        await asyncio.wait_for(admin.start(), 30)
        await asyncio.wait_for(admin.delete_topics(topics), 30)
    except Exception:  # noqa: BLE001 - cleanup must not hide the measurement
        pass
    finally:
        await admin.close()


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """Give the child `grace_s` to exit on its own, then SIGKILL its process group."""
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)


def faust_noop(bootstrap: str, topic: str, total: int, timeout_s: float = 300) -> float:
    """Events/s of a no-op Faust agent over the first `total` messages of `topic` (single-object
    values), timed inside the worker from its first message to its `total`-th. The topic must
    exist and hold at least `total` messages. Raises TimeoutError after `timeout_s` (the child is
    killed), RuntimeError if the child dies without reporting."""
    if total < 2:
        raise ValueError("total must be at least 2 (a rate needs two messages)")
    deadline = time.monotonic() + timeout_s
    partitions, available = _run_async(_topic_size(bootstrap, topic))
    if available < total:
        raise ValueError(f"topic {topic!r} holds {available} messages, fewer than total={total}")
    app_id = f"bench-noop-{uuid.uuid4().hex[:10]}"
    workdir = Path(tempfile.mkdtemp(prefix="faust-noop-"))
    result_path, log_path = workdir / "result.json", workdir / "worker.log"
    remaining = max(deadline - time.monotonic(), 1.0)
    args = [
        sys.executable,
        str(Path(__file__).resolve()),
        CHILD_FLAG,
        bootstrap,
        topic,
        str(total),
        str(partitions),
        app_id,
        str(result_path),
        str(remaining + STOP_GRACE_S),
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
    try:
        while not result_path.exists():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the Faust no-op worker exited ({proc.returncode}) without "
                    f"reporting:\n{_log_tail(log_path)}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the Faust no-op worker did not see {total} messages of {topic!r} "
                    f"in {timeout_s:.0f} s:\n{_log_tail(log_path)}"
                )
            time.sleep(POLL_S)
        return float(json.loads(result_path.read_text())["rate"])
    finally:
        _stop(proc, STOP_GRACE_S if result_path.exists() else 0.0)
        _run_async(_delete_topics(bootstrap, [f"{app_id}-__assignor-__leader"]))
        shutil.rmtree(workdir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Standalone: a unique topic, pre-loaded, measured, deleted.
# ---------------------------------------------------------------------------------------------


def prediction_events(n: int, seed: int = 1) -> list[dict[str, object]]:
    """Prediction-like single objects (20 models, a few group attributes)."""
    rng = random.Random(seed)
    now = time.time()
    return [
        {
            "model_id": f"model-{i % 20}",
            "model_version": "1",
            "request_id": f"r{i}",
            "ts": now - rng.uniform(0, 3600),
            "prediction": 1,
            "positive": rng.random() < 0.6,
            "confidence": 0.8,
            "latency_ms": rng.lognormvariate(3.5, 0.5),
            "groups": {"sex": rng.choice("FM"), "age_band": rng.choice("abcde")},
            "user_id": f"u{rng.randrange(10_000)}",
        }
        for i in range(n)
    ]


async def create_and_preload(bootstrap: str, topic: str, n: int, partitions: int = 4) -> None:
    """Create `topic` with `partitions` and load it with `n` single-object messages."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await asyncio.wait_for(admin.start(), 30)
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    try:
        for event in prediction_events(n):
            await producer.send(topic, orjson.dumps(event))
        await producer.flush()
    finally:
        await producer.stop()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == CHILD_FLAG:
        bootstrap, topic, total, partitions, app_id, result, budget = sys.argv[2:9]
        _child(bootstrap, topic, int(total), int(partitions), app_id, Path(result), float(budget))
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--bootstrap", help="default: the local services (`monitor services up`)")
    args = parser.parse_args()
    bootstrap = args.bootstrap
    if bootstrap is None:
        sys.path.insert(0, str(ROOT))
        from monitor.dev import services

        bootstrap = services.up().kafka_bootstrap
    topic = f"bench-noop-{uuid.uuid4().hex[:6]}-singles"
    try:
        asyncio.run(create_and_preload(bootstrap, topic, args.events))
        rate = faust_noop(bootstrap, topic, args.events, args.timeout)
    finally:
        asyncio.run(_delete_topics(bootstrap, [topic]))
    print(f"no-op Faust agent, {args.events:,} single-object messages on 4 partitions: {rate:,.0f} events/s")


if __name__ == "__main__":
    main()
