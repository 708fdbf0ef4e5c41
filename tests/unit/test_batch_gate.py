"""A rebalance must not let a batch handed over before it run after it: that batch would append to
changelogs of partitions another worker may already have rebuilt (`streams.transport.BatchGate`)."""

import asyncio

from streams.transport import BatchGate


def test_a_batch_handed_over_before_a_revocation_is_refused_and_one_after_it_runs():
    gate = BatchGate()
    ran: list[str] = []

    async def work(name: str, hold: float = 0.0):
        await asyncio.sleep(hold)
        ran.append(name)

    async def main():
        first = asyncio.ensure_future(gate.run(gate.admit(), lambda: work("in hand", 0.05)))
        await asyncio.sleep(0.01)  # the first batch holds the gate
        stale = gate.run(gate.admit(), lambda: work("stale"))  # handed over, waiting for the gate
        stale_task = asyncio.ensure_future(stale)
        await asyncio.sleep(0)
        await gate.revoke()  # the revocation waits for the batch in hand
        assert ran == ["in hand"]
        assert await first is True
        assert await stale_task is False  # ... and voids the one handed over before it
        assert await gate.run(gate.admit(), lambda: work("after")) is True
        assert ran == ["in hand", "after"]

    asyncio.run(main())


def test_without_a_revocation_every_batch_runs_in_turn():
    gate = BatchGate()
    order: list[int] = []

    async def work(i: int):
        await asyncio.sleep(0.001 * (5 - i))
        order.append(i)

    async def main():
        results = await asyncio.gather(*(gate.run(gate.admit(), lambda i=i: work(i)) for i in range(5)))
        assert results == [True] * 5 and order == [0, 1, 2, 3, 4]  # one at a time, in hand-over order

    asyncio.run(main())
