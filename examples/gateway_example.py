"""A routing gateway in miniature: follow the control topic and route synthetic requests every second.

    python examples/gateway_example.py --bootstrap 127.0.0.1:19092 --model credit-scoring

With `--report predictions` it also sends each routed request to the monitor as a prediction
(through PredictionReporter), so the monitor knows the model. Stop it with Ctrl-C.
See examples/README.md for how to make the level change while it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import time
from contextlib import AsyncExitStack
from itertools import count

from monitor.clients.gateway import GatewayClient
from monitor.clients.reporter import PredictionReporter
from monitor.exceptions import ServicesError

# Requests a model server might see: confident, borderline, unsure, no score, and one caller
# whose credentials an incident could revoke.
REQUESTS: tuple[tuple[str, float | None, str | None], ...] = (
    ("confident", 0.97, "web-frontend"),
    ("borderline", 0.81, "web-frontend"),
    ("unsure", 0.55, "web-frontend"),
    ("no score", None, "web-frontend"),
    ("batch caller", 0.97, "svc-batch-export"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--bootstrap", default="127.0.0.1:19092", help="Kafka bootstrap servers")
    parser.add_argument("--model", default="credit-scoring", help="the model_id to route requests for")
    parser.add_argument("--topic", default="control", help="the control topic (MONITOR_TOPIC_CONTROL)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between rounds")
    parser.add_argument("--seed", type=int, default=None, help="seed the review sampling (reproducible runs)")
    parser.add_argument(
        "--report",
        metavar="TOPIC",
        default=None,
        help="also send each request as a prediction to this topic (off by default)",
    )
    parser.add_argument("--model-version", default="2.3.0", help="model_version of reported predictions")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    """Route one round of requests per interval, forever."""
    async with AsyncExitStack() as stack:
        gateway = await stack.enter_async_context(
            GatewayClient(args.bootstrap, args.topic, rng=random.Random(args.seed))
        )
        reporter = None
        if args.report:
            reporter = await stack.enter_async_context(PredictionReporter(args.bootstrap, args.report))
        # Serve only after the latest state is known, or a paused model would be routed as normal.
        await gateway.wait_caught_up()
        print(f"following {args.topic!r} on {args.bootstrap}; {len(gateway.models())} models under control")
        request_ids = count()
        while True:
            state = gateway.state(args.model)
            header = (
                "level 0 (no control message)"
                if state is None
                else (f"level {state.level} mode={state.mode} seq={state.seq}: {state.reason}")
            )
            print(f"\n{time.strftime('%H:%M:%S')} {args.model}: {header}")
            if state is not None and state.rollback_to:
                print(f"  rollback recommended to {state.rollback_to}")
            for label, confidence, principal in REQUESTS:
                route = gateway.route(args.model, confidence=confidence, principal=principal)
                shown = "  -  " if confidence is None else f"{confidence:.2f}"
                print(f"  {label:<13} conf {shown}  -> {route.decision:<13} {route.reason}")
                if reporter is not None and route.decision != "blocked":
                    await reporter.report(
                        {
                            "model_id": args.model,
                            "model_version": args.model_version,
                            "request_id": f"example-{time.time_ns()}-{next(request_ids)}",
                            "ts": time.time(),
                            "prediction": 1,
                            "positive": True,
                            "confidence": confidence,
                            "latency_ms": 20.0,
                            "user_id": principal,
                        }
                    )
            await asyncio.sleep(args.interval)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        print("\nstopped")
    except (ServicesError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
