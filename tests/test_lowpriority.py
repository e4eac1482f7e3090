"""The low-priority queue (lowpriority.py) on the real reactor: order,
the per-turn budget that lets other work in between, and robustness."""

from __future__ import annotations

from twisted.internet import reactor, task
from twisted.trial import unittest

from chatserver.lowpriority import LowPriority
from tests.support import until


class LowPriorityTests(unittest.TestCase):
    async def test_items_run_in_order_on_later_turns(self) -> None:
        queue = LowPriority(reactor, 1.0)
        done: list[int] = []
        for n in range(5):
            queue.add(lambda n=n: done.append(n))
        self.assertEqual(done, [])  # not now: after this turn's other work
        await until(lambda: len(done) == 5)
        self.assertEqual(done, [0, 1, 2, 3, 4])
        self.assertEqual(len(queue), 0)

    async def test_other_work_runs_between_turns_once_the_budget_is_spent(self) -> None:
        queue = LowPriority(reactor, 0.0)  # the budget is spent by each item: one per turn
        events: list[str] = []
        for n in range(3):
            queue.add(lambda n=n: events.append(f"item {n}"))
        # Scheduled after the queue's first turn: it must get in before the
        # last item, which it would not if the queue ran all three at once.
        reactor.callLater(0, lambda: reactor.callLater(0, lambda: events.append("other")))
        await until(lambda: len(events) == 4)
        self.assertLess(events.index("other"), events.index("item 2"), events)
        self.assertEqual([e for e in events if e != "other"], ["item 0", "item 1", "item 2"])

    async def test_a_failing_item_does_not_stall_the_ones_behind_it(self) -> None:
        queue = LowPriority(reactor, 1.0)
        done: list[str] = []

        def fails() -> None:
            raise ValueError("a bug in one item")

        queue.add(fails)
        queue.add(lambda: done.append("after"))
        await until(lambda: done == ["after"])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    async def test_stop_forgets_what_is_queued(self) -> None:
        queue = LowPriority(reactor, 1.0)
        done: list[int] = []
        queue.add(lambda: done.append(1))
        queue.stop()
        await task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(done, [])
        self.assertEqual(len(queue), 0)
        queue.add(lambda: done.append(2))  # usable again
        await until(lambda: done == [2])
