"""Whether the monitor may judge silence now: the catch-up hold (pure: values in, decision out).

A rule based on silence (metric `silence`, the `downtime` rule) compares a model's newest event
with the clock. That comparison means "the model stopped" only if the monitor has read its input
up to the clock. A worker consuming a backlog (after its own restart or outage, or a burst of
late traffic) has not: every model's newest applied event lags the clock by the backlog's age,
and a 30-minute dead-man's switch would pause the whole fleet for the monitor's own outage.

So silence is judged only while the monitor is caught up on the predictions topic:

* Every partition must have a fresh report (younger than `stale_after_s`) saying it is caught
  up, or behind by less than `caught_up_within_s` (default 60 s: a busy worker is always a few
  batches behind; a silence of 30 min judged with under a minute of input unread errs by under a
  minute). A partition nobody reports on (not assigned yet, its worker gone, or a worker that has
  just started) counts as behind with an unknown lag: the monitor cannot judge input it has not
  seen.
* The hold is global over the topic's partitions, not per model: predictions are keyed by
  request id, so any model's events may sit on any partition.
* While held, silence rules produce no finding at all: no silence incident opens, and an open
  one is neither re-fired (its "silent for N minutes" is an artefact of the lag) nor resolved
  (what was applied so far is partial evidence; hysteresis needs the whole picture). The first
  tick after catching up decides with everything read.

`CatchUp.delay_s` is the monitor's own signal, "detection delayed: N minutes behind": the largest
known lag, and for a partition without a fresh report the time since its last one (or since the
evaluator started watching), a lower bound on how far behind it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from monitor.aggregates.lag import PartitionProgress

DEFAULT_CAUGHT_UP_WITHIN_S = 60.0
DEFAULT_STALE_AFTER_S = 10.0


@dataclass(frozen=True)
class CatchUp:
    """The hold decision of one tick."""

    held: bool  # silence rules hold this tick
    delay_s: float  # how far behind (lower bound where unknown); 0 when every partition is current
    behind: dict[int, float | None] = field(default_factory=dict)  # partition -> lag (None: unknown)


def judge(
    reports: Mapping[int, PartitionProgress],
    partitions: Iterable[int],
    now: float,
    *,
    watching_since: float,
    caught_up_within_s: float = DEFAULT_CAUGHT_UP_WITHIN_S,
    stale_after_s: float = DEFAULT_STALE_AFTER_S,
) -> CatchUp:
    """Hold silence rules unless every partition is reported fresh and within the tolerance."""
    behind: dict[int, float | None] = {}
    delay = 0.0
    for partition in sorted(set(partitions) | set(reports)):
        report = reports.get(partition)
        if report is None or now - report.at > stale_after_s:
            behind[partition] = None
            delay = max(delay, now - (report.at if report is not None else watching_since))
            continue
        if report.behind is False:
            continue
        if report.lag_s is None:
            behind[partition] = None
            delay = max(delay, now - max(report.at, watching_since))
            continue
        delay = max(delay, report.lag_s)
        if report.lag_s >= caught_up_within_s:
            behind[partition] = report.lag_s
    held = bool(behind) or not reports  # no partition known at all: nothing seen yet
    return CatchUp(held, max(0.0, delay), behind)
