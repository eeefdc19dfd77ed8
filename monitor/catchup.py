"""The evaluator's view of the catch-up hold: read the workers' progress, judge, say so.

The decision itself is `monitor.rules.catchup.judge` (pure); this reads its inputs from Redis each
tick, keeps the "detection delayed" metric and log line, and tells the evaluator whether silence
rules hold.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from monitor.metrics import CatchUpMetrics
from monitor.rules.catchup import DEFAULT_CAUGHT_UP_WITHIN_S, DEFAULT_STALE_AFTER_S, CatchUp, judge
from monitor.store.lag import LagStore

log = logging.getLogger(__name__)

LOG_EVERY_S = 60.0  # "detection delayed" is repeated this often while behind


class SilenceHold:
    """Judges, once per tick, whether the monitor is caught up on the predictions topic."""

    def __init__(
        self,
        store: LagStore,
        topic: str,
        partitions: Callable[[], int],
        *,
        caught_up_within_s: float = DEFAULT_CAUGHT_UP_WITHIN_S,
        stale_after_s: float = DEFAULT_STALE_AFTER_S,
        metrics: CatchUpMetrics | None = None,
    ) -> None:
        self.store = store
        self.topic = topic
        self.partitions = partitions  # the topic's partition count
        self.caught_up_within_s = caught_up_within_s
        self.stale_after_s = stale_after_s
        self.metrics = metrics
        self._since: float | None = None  # the first check (a worker's start: hold until reports)
        self._logged_at: float | None = None  # last "detection delayed" line; None: caught up

    async def check(self, now: float) -> CatchUp:
        """This tick's decision (read from Redis; a failed read propagates and skips the tick)."""
        if self._since is None:
            self._since = now
        reports = await self.store.read(self.topic)
        count = self.partitions()
        decision = judge(
            reports,
            range(count),
            now,
            watching_since=self._since,
            caught_up_within_s=self.caught_up_within_s,
            stale_after_s=self.stale_after_s,
        )
        self._say(decision, now)
        if self.metrics is not None:
            self.metrics.detection_delay.set(decision.delay_s)
            self.metrics.silence_held.set(1 if decision.held else 0)
        return decision

    def _say(self, decision: CatchUp, now: float) -> None:
        if decision.held:
            if self._logged_at is None or now - self._logged_at >= LOG_EVERY_S:
                unknown = sorted(p for p, lag in decision.behind.items() if lag is None)
                log.warning(
                    "detection delayed: %.1f minutes behind on %s (%d of its partitions behind%s); "
                    "silence rules (downtime) hold until it catches up",
                    decision.delay_s / 60,
                    self.topic,
                    len(decision.behind),
                    f", lag unknown on {unknown}" if unknown else "",
                )
                self._logged_at = now
        elif self._logged_at is not None:
            log.info(
                "detection caught up on %s (%.0f s behind at most): silence rules apply again",
                self.topic,
                decision.delay_s,
            )
            self._logged_at = None
