"""The one retry-with-backoff helper: what it retries, how long it waits, when it gives up."""

from __future__ import annotations

import asyncio

import pytest

from monitor.retry import retry


class Flaky:
    """Fails with the given exceptions in turn, then returns how many calls it took."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self) -> int:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return self.calls


async def test_waits_double_up_to_the_cap_and_the_result_comes_back() -> None:
    waits: list[float] = []
    attempt = Flaky(*(OSError(f"down {i}") for i in range(5)))
    result = await retry(
        attempt, on=OSError, first_s=0.001, max_s=0.004, before_sleep=lambda exc, delay: waits.append(delay)
    )
    assert result == 6 and attempt.calls == 6
    assert waits == [0.001, 0.002, 0.004, 0.004, 0.004]


async def test_without_a_cap_the_wait_keeps_doubling() -> None:
    waits: list[float] = []
    await retry(
        Flaky(OSError(), OSError(), OSError()),
        on=OSError,
        first_s=0.001,
        before_sleep=lambda exc, delay: waits.append(delay),
    )
    assert waits == [0.001, 0.002, 0.004]


async def test_the_hook_sees_each_exception() -> None:
    seen: list[str] = []
    await retry(
        Flaky(TimeoutError("a"), ConnectionError("b")),
        on=(TimeoutError, ConnectionError),
        first_s=0.0,
        before_sleep=lambda exc, delay: seen.append(str(exc)),
    )
    assert seen == ["a", "b"]


async def test_after_the_last_try_the_last_exception_is_raised_without_a_wait() -> None:
    waits: list[float] = []
    attempt = Flaky(OSError("1"), OSError("2"), OSError("3"), OSError("4"))
    with pytest.raises(OSError, match="^3$"):
        await retry(
            attempt, on=OSError, first_s=0.001, tries=3, before_sleep=lambda exc, delay: waits.append(delay)
        )
    assert attempt.calls == 3 and waits == [0.001, 0.002]


async def test_other_exceptions_are_not_retried() -> None:
    attempt = Flaky(ValueError("bad input"))
    with pytest.raises(ValueError):
        await retry(attempt, on=OSError, first_s=0.0)
    assert attempt.calls == 1


async def test_cancellation_is_never_swallowed() -> None:
    attempt = Flaky(*(OSError() for _ in range(1000)))
    task = asyncio.ensure_future(retry(attempt, on=Exception, first_s=0.01))
    await asyncio.sleep(0.03)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert 1 <= attempt.calls < 10
