"""Rate limits and login throttles counted by every process together
(ratelimit.Limits.share, accounts.LoginThrottle.share, hub/counters.py),
over a real redis-server: what an account takes on one process counts on
the others, so neither reconnecting to another process nor spreading
attempts over several gains anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import reactor, task
from twisted.trial import unittest

from chatclient.session import ServerError
from chatserver.accounts import LoginThrottle
from chatserver.config import Settings
from chatserver.ratelimit import Limits
from chatserver.storage.sqlite import SqliteStorage
from tests import backends
from tests.contract_hub import Recorder
from tests.support import (
    PASSWORD,
    RunningServer,
    logged_in,
    make_settings,
    open_session,
    postgres_only,
    until,
)
from tests.test_contract_redis_hub import make_redis_hubs

ALICE = ("user", "alice")


class SharedCountsTests(unittest.TestCase):
    """Two processes' limits (two hubs on one Redis), on one fake clock:
    the times are the callers', so the test decides what has elapsed."""

    skip = backends.missing()

    async def setUp(self) -> None:
        self.redis = backends.Redis().start()
        self.addCleanup(lambda: self.redis.stop())
        path = Path(self.mktemp()) / "hub.sqlite3"
        path.parent.mkdir()
        storage = SqliteStorage(path, "NORMAL", create=True, reactor=reactor)
        storage.startService()
        self.addCleanup(storage.stopService)
        self.hubs = make_redis_hubs(self, 3, storage, self.redis.url)
        for hub in self.hubs:
            await hub.start(Recorder(), {})
        self.clock = task.Clock()
        self.clock.advance(1_000_000)  # any time; the same on every process

    def limits(self, hub: Any, rate: float = 1.0, burst: int = 5) -> Limits:
        limits = Limits(self.clock, {"messages": (rate, burst)})
        limits.share(hub.counters, reactor)
        self.addCleanup(limits.stop)
        return limits

    def takes(self, limits: Limits, count: int, key: Any = ALICE) -> list[bool]:
        return [limits.check("messages", key) == 0 for _ in range(count)]

    async def synced(self, *all_limits: Limits) -> None:
        marks = [limits.stats["syncs"] for limits in all_limits]
        await until(lambda: all(lim.stats["syncs"] > m for lim, m in zip(all_limits, marks, strict=True)))

    async def test_what_an_account_took_on_one_process_counts_on_another(self) -> None:
        one, two = self.limits(self.hubs[0]), self.limits(self.hubs[1])
        self.assertEqual(self.takes(one, 6), [True] * 5 + [False])
        await self.synced(one)
        # Alice logs in on the other process: her bucket is read there.
        await two.load([("messages", ALICE)])
        wait = two.check("messages", ALICE)
        self.assertGreater(wait, 0.5)  # a whole token to wait for, at 1 a second
        self.assertLessEqual(wait, 1.0)
        # Another account is not touched, on either process.
        self.assertEqual(self.takes(two, 5, ("user", "bob")), [True] * 5)
        # And it refills everywhere as time passes.
        self.clock.advance(2)
        await two.load([("messages", ALICE)])
        self.assertEqual(self.takes(two, 3), [True, True, False])

    async def test_takes_on_two_processes_at_once_are_paid_back(self) -> None:
        one, two = self.limits(self.hubs[0]), self.limits(self.hubs[1])
        # Before either has heard of the other's takes, each lets a
        # burst through: twice the burst in all...
        self.assertEqual(self.takes(one, 5), [True] * 5)
        await self.synced(one)
        self.assertEqual(self.takes(two, 5), [True] * 5)
        await self.synced(two)
        # ... which the shared bucket holds as debt: five tokens below
        # empty, six seconds to the next take.
        self.assertAlmostEqual(two.check("messages", ALICE), 6.0, places=3)
        # The first process, which shared before the second took, learns
        # of the debt with its next take (its copy said one second):
        self.assertAlmostEqual(one.check("messages", ALICE), 1.0, places=3)
        self.clock.advance(1)
        self.assertEqual(self.takes(one, 1), [True])
        await self.synced(one)
        self.assertAlmostEqual(one.check("messages", ALICE), 6.0, places=3)
        # And the debt is paid back by time alone, everywhere.
        self.clock.advance(6)
        await two.load([("messages", ALICE)])
        self.assertEqual(self.takes(two, 2), [True, False])

    async def test_an_answer_is_refilled_by_the_time_it_took(self) -> None:
        """The shared count answers for the moment the exchange left; a
        take here while it was on its way still counts once, and the
        time that passed meanwhile refills the copy (a CI run once read a
        debt of one token here: 2 s to wait instead of 1)."""
        one = self.limits(self.hubs[0])
        self.assertEqual(self.takes(one, 5), [True] * 5)
        await self.synced(one)  # the shared bucket: empty, now
        answer = one.load([("messages", ALICE)])  # leaves now...
        self.clock.advance(1)
        self.assertEqual(self.takes(one, 1), [True])  # ...a token refilled and taken here
        await answer  # ...and answers "empty" as of a second ago
        self.assertAlmostEqual(one.check("messages", ALICE), 1.0, places=3)
        await self.synced(one)  # the take shared: the same there
        self.assertAlmostEqual(one.check("messages", ALICE), 1.0, places=3)

    async def test_a_late_sync_loses_no_refill(self) -> None:
        """Takes are counted as of when they were made, not when they were
        shared (a CI run, whose sync left after the test's clock moved on,
        was refused a token it had)."""
        one = self.limits(self.hubs[0])
        self.assertEqual(self.takes(one, 5), [True] * 5)  # a full bucket emptied at T
        self.clock.advance(0.5)  # before the sync leaves (0.1 s of the real clock)
        await self.synced(one)
        self.assertAlmostEqual(one.check("messages", ALICE), 0.5, places=3)  # half a token back, not none
        self.clock.advance(0.5)
        self.assertEqual(self.takes(one, 2), [True, False])

    async def test_a_clock_behind_does_not_refill_twice(self) -> None:
        one, two = self.limits(self.hubs[0]), self.limits(self.hubs[1])
        behind = task.Clock()
        behind.advance(self.clock.seconds() - 0.5)
        two._clock = behind
        self.assertEqual(self.takes(one, 5), [True] * 5)
        await self.synced(one)  # empty at T
        await two.load([("messages", ALICE)])  # read at T - 0.5: no refill, nor a stamp moved back
        self.clock.advance(1)
        await one.load([("messages", ALICE)])  # at T + 1: one second's refill, not 1.5
        self.assertEqual(self.takes(one, 1), [True])
        self.assertAlmostEqual(one.check("messages", ALICE), 1.0, places=3)  # not 0.5

    async def test_a_third_process_sees_the_sum(self) -> None:
        all_limits = [self.limits(hub, rate=0.1, burst=9) for hub in self.hubs]
        for limits in all_limits:
            self.assertEqual(self.takes(limits, 3), [True] * 3)
            await self.synced(limits)
        fresh = self.limits(self.hubs[2])
        fresh.rules = {"messages": (0.1, 9)}
        await fresh.load([("messages", ALICE)])
        self.assertGreater(fresh.check("messages", ALICE), 0)

    async def test_connections_are_never_shared(self) -> None:
        one = self.limits(self.hubs[0])
        connection = object()
        self.assertEqual(self.takes(one, 5, connection), [True] * 5)
        await task.deferLater(reactor, 0.3, lambda: None)  # three sync periods
        self.assertEqual(one.stats["syncs"], 0)  # nothing to share

    async def test_without_redis_each_process_still_limits(self) -> None:
        one = self.limits(self.hubs[0])
        self.redis.stop()
        self.assertEqual(self.takes(one, 6), [True] * 5 + [False])
        await until(lambda: one.stats["sync_failures"] >= 1)
        await one.load([("messages", ("user", "carol"))])  # fires all the same
        self.assertEqual(self.takes(one, 6, ("user", "carol")), [True] * 5 + [False])

    async def test_failed_logins_count_on_every_process(self) -> None:
        settings = Settings(login_failures_per_account=3, login_failures_per_address=5, login_lockout=60)
        one, two, three = (LoginThrottle(self.clock, settings) for _ in range(3))
        for throttle, hub in zip((one, two, three), self.hubs, strict=True):
            throttle.share(hub.counters)
        # Three failures for alice, each on another process and address.
        for n, throttle in enumerate((one, two, three)):
            self.assertEqual(await throttle.retry_after("alice", f"10.0.0.{n}"), 0)
            await throttle.fail("alice", f"10.0.0.{n}")
        wait = await two.retry_after("alice", "10.0.0.9")
        self.assertAlmostEqual(wait, 60.0, places=3)
        self.assertEqual(await two.retry_after("bob", "10.0.0.9"), 0)
        # An address is counted everywhere too: five failures, any names.
        for n in range(5):
            await (one, two)[n % 2].fail(f"user{n}", "10.0.0.7")
        self.assertGreater(await three.retry_after("dave", "10.0.0.7"), 0)
        self.assertGreater(await three.retry_after(None, "10.0.0.7"), 0)  # registration's check
        # A successful login clears the account's count for everyone...
        await three.succeeded("alice")
        fresh = LoginThrottle(self.clock, settings)
        fresh.share(self.hubs[0].counters)
        self.assertEqual(await fresh.retry_after("alice", "10.0.0.9"), 0)
        # ... and a lockout ends by itself.
        self.clock.advance(61)
        self.assertEqual(await fresh.retry_after("dave", "10.0.0.7"), 0)

    async def test_without_redis_failed_logins_still_count_here(self) -> None:
        settings = Settings(login_failures_per_account=2, login_failures_per_address=100, login_lockout=60)
        one = LoginThrottle(self.clock, settings)
        one.share(self.hubs[0].counters)
        self.redis.stop()
        await one.fail("alice", "10.0.0.1")
        self.assertEqual(await one.retry_after("alice", "10.0.0.1"), 0)
        await one.fail("alice", "10.0.0.1")
        self.assertGreater(await one.retry_after("alice", "10.0.0.1"), 0)


class SharedLimitsAcrossNodesTests(unittest.TestCase):
    """Two real servers on one PostgreSQL and Redis: a client that moves
    to the other node, or tries passwords on both, gains nothing."""

    skip = backends.missing() or postgres_only("several nodes on one PostgreSQL and Redis")

    async def setUp(self) -> None:
        url = backends.postgres_url()
        shared = {
            "database": url,
            "hub_url": backends.redis_url(),
            "hub_prefix": f"limits{id(self)}:",
            "messages_rate": 0.05,
            "messages_burst": 5,
            "login_failures_per_account": 3,
        }
        self.nodes: list[RunningServer] = []
        for n in (1, 2):
            node = RunningServer(make_settings(Path(self.mktemp()), hub_name=f"node{n}", **shared))
            await node.start()
            self.addCleanup(node.stop)
            self.nodes.append(node)

    async def test_moving_to_the_other_node_refills_no_bucket(self) -> None:
        one, two = self.nodes
        alice = await logged_in(self, one, "alice")
        outcomes = []
        for n in range(6):
            try:
                await alice.say("lobby", f"m{n}")
                outcomes.append("ack")
            except ServerError as e:
                outcomes.append(e.code)
        self.assertEqual(outcomes, ["ack"] * 5 + ["rate_limited"])
        await until(lambda: one.factory.rate_limits.settled)
        await alice.close()
        again = await logged_in(self, two, "alice", register=False)
        error = await self.assertFailure(again.say("lobby", "from node 2"), ServerError)
        self.assertEqual(error.code, "rate_limited")
        self.assertGreater(error.event["retry_after"], 10)  # a token every 20 s

    async def test_password_guesses_count_on_both_nodes(self) -> None:
        one, two = self.nodes
        await logged_in(self, one, "alice")
        for node in (one, two, one):
            session = await open_session(self, node)
            error = await self.assertFailure(session.login("alice", "wrong password"), ServerError)
            self.assertEqual(error.code, "auth_failed")
        # The fourth try, on the other node, even with the right password:
        session = await open_session(self, two)
        error = await self.assertFailure(session.login("alice", PASSWORD), ServerError)
        self.assertEqual(error.code, "throttled")
        self.assertGreater(error.event["retry_after"], 0)
