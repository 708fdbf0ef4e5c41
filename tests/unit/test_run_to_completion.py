"""A stop cancels the worker's fetcher and timers; a batch must never be cut short
half-way through persisting, so `run_to_completion` lets it finish and raises the cancellation after."""

import asyncio

import pytest

from streams.transport import run_to_completion


async def _persist(steps: list, n: int, fail: bool = False) -> str:
    for i in range(n):
        await asyncio.sleep(0.01)
        steps.append(i)
    if fail:
        raise RuntimeError("the broker refused")
    return "done"


def test_returns_the_result_when_not_cancelled():
    steps: list = []
    assert asyncio.run(run_to_completion(_persist(steps, 3))) == "done"
    assert steps == [0, 1, 2]


def test_a_cancellation_waits_for_the_work_and_is_raised_after_it():
    steps: list = []

    async def main():
        caller = asyncio.ensure_future(run_to_completion(_persist(steps, 10)))
        for _ in range(4):  # cancelled again and again, as Faust's fetcher stop does while it waits
            await asyncio.sleep(0.015)
            caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        return list(steps)

    assert asyncio.run(main()) == list(range(10))


def test_a_failure_of_the_work_is_raised_instead_of_the_cancellation():
    steps: list = []

    async def main():
        caller = asyncio.ensure_future(run_to_completion(_persist(steps, 5, fail=True)))
        await asyncio.sleep(0.02)
        caller.cancel()
        with pytest.raises(RuntimeError, match="refused"):
            await caller

    asyncio.run(main())
    assert steps == list(range(5))


def test_without_it_the_cancellation_cuts_the_work_short():
    """The hazard itself: a plain await is interrupted half-way."""
    steps: list = []

    async def main():
        caller = asyncio.ensure_future(_persist(steps, 10))
        await asyncio.sleep(0.035)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller

    asyncio.run(main())
    assert 0 < len(steps) < 10
