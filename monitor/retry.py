"""Retry with exponential backoff: the one loop behind every "try again later" in the monitor.

Ingest holding a batch while Redis is away, the reporter and the gateway riding out a broker
outage, and the deliverer re-posting to a pager all call `retry`. It is small on purpose rather
than tenacity: each caller needs only "these exceptions, this first delay, this cap, this many
tries (or forever), and tell me before each wait", and here that is one typed call whose hook
gets the exception and the delay. With tenacity the same call takes a wait, a retry and a stop
object, and each hook gets a `RetryCallState` whose outcome and next action are Optional, so
every hook would need its own checks to stay mypy-strict; the client modules (gateway,
reporter) would also pull one more dependency into the services that embed them.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def _quiet(exc: BaseException, delay_s: float) -> None:
    """The default hook: nothing to report."""


async def retry(
    attempt: Callable[[], Awaitable[T]],
    *,
    on: type[BaseException] | tuple[type[BaseException], ...],
    first_s: float = 0.1,
    max_s: float = math.inf,
    tries: int | None = None,
    before_sleep: Callable[[BaseException, float], None] = _quiet,
) -> T:
    """Await `attempt()` until it returns, retrying the exceptions in `on` after a wait that starts
    at `first_s` and doubles up to `max_s`. With `tries`, the last try's exception is raised;
    without, it retries forever. `before_sleep(exc, delay_s)` runs before each wait."""
    delay = first_s
    tried = 0
    while True:
        tried += 1
        try:
            return await attempt()
        except on as exc:
            if tries is not None and tried >= tries:
                raise
            before_sleep(exc, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_s)


__all__ = ["retry"]
