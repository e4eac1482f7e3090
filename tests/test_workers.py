"""The crypto thread pools: threads and a bounded queue per kind of work,
so that a flood of handshakes neither refuses nor delays logins, and the
handshake threads at a lower CPU priority.

Real threads (Twisted's ThreadPool) on the real reactor; the jobs block on
events the test releases, so the order they run in is observable.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, gatherResults
from twisted.trial import unittest

from chatserver.workers import HANDSHAKE_NICE, Busy, CryptoPool, threads_per_kind
from tests.support import until


class Gate:
    """Jobs that wait until released, and the order they started in."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def job(self, name: str) -> Any:
        event = self._events[name] = threading.Event()

        def run() -> str:
            with self._lock:
                self.started.append(name)
            if not event.wait(10):  # bounded: a stuck test ends
                raise RuntimeError(f"{name} never released")
            return name

        return run

    def release(self, name: str) -> None:
        self._events[name].set()

    def release_all(self) -> None:
        for event in self._events.values():
            event.set()


class CryptoPoolTests(unittest.TestCase):
    def pool(self, threads: int, max_pending: int) -> CryptoPool:
        pool = CryptoPool(reactor, threads, max_pending)
        pool.startService()
        self.addCleanup(pool.stopService)
        return pool

    async def test_a_full_handshake_queue_does_not_refuse_logins(self) -> None:
        pool = self.pool(threads=1, max_pending=3)
        gate = Gate()
        self.addCleanup(gate.release_all)
        handshakes = [pool.run(gate.job(f"h{n}")) for n in range(3)]
        self.assertRaises(Busy, pool.run, gate.job("h3"))
        login = pool.run(gate.job("login"), kind="login")
        self.assertEqual(pool.pending_by_kind, {"handshake": 3, "login": 1})
        gate.release_all()
        self.assertEqual(await login, "login")
        self.assertEqual([await d for d in handshakes], ["h0", "h1", "h2"])
        self.assertEqual(pool.pending, 0)

    async def test_a_login_does_not_wait_for_handshake_jobs(self) -> None:
        pool = self.pool(threads=1, max_pending=100)
        gate = Gate()
        self.addCleanup(gate.release_all)
        handshakes = [pool.run(gate.job(f"h{n}")) for n in range(20)]
        await until(lambda: gate.started == ["h0"])
        login = pool.run(gate.job("login"), kind="login")
        # h0 still holds the only handshake thread: the login has its own.
        await until(lambda: len(gate.started) == 2)
        self.assertEqual(gate.started, ["h0", "login"])
        gate.release("login")
        self.assertEqual(await login, "login")
        gate.release_all()
        for d in handshakes:
            await d
        self.assertEqual(gate.started[2:], [f"h{n}" for n in range(1, 20)])

    async def test_handshake_threads_run_at_a_lower_cpu_priority(self) -> None:
        if not hasattr(os, "getpriority") or not hasattr(threading, "get_native_id"):
            raise unittest.SkipTest("thread priorities are a POSIX feature")
        pool = self.pool(threads=2, max_pending=10)

        def priority() -> int:
            return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

        ours = priority()
        handshake = [await pool.run(priority) for _ in range(4)]
        login = [await pool.run(priority, kind="login") for _ in range(4)]
        self.assertEqual(handshake, [min(19, ours + HANDSHAKE_NICE)] * 4)
        self.assertEqual(login, [ours] * 4)
        self.assertEqual(priority(), ours)  # the reactor thread keeps its own

    async def test_a_failing_job_frees_its_place(self) -> None:
        pool = self.pool(threads=1, max_pending=1)

        def fails() -> None:
            raise ValueError("bad input")

        await self.assertFailure(pool.run(fails), ValueError)
        self.assertEqual(pool.pending, 0)
        self.assertEqual(await pool.run(lambda: 7), 7)

    async def test_a_network_with_a_backlog_waits_its_turn(self) -> None:
        pool = self.pool(threads=1, max_pending=100)
        done: list[str] = []
        gate = Gate()
        self.addCleanup(gate.release_all)
        first = pool.run(gate.job("first"), key="198.51.100.0/24")
        flood = [pool.run(lambda n=n: done.append(f"flood {n}"), key="198.51.100.0/24") for n in range(10)]
        newcomer = pool.run(lambda: done.append("newcomer"), key="203.0.113.0/24")
        await until(lambda: gate.started == ["first"])
        gate.release("first")
        await gatherResults([first, newcomer, *flood])
        # In arrival order it would be last (11th); in turn, it comes after
        # the one job already handed to the thread and one more at most.
        self.assertLessEqual(done.index("newcomer"), 2, done)
        self.assertEqual([d for d in done if d != "newcomer"], [f"flood {n}" for n in range(10)])
        self.assertEqual(pool.pending, 0)

    async def test_one_network_holds_at_most_a_quarter_of_the_places(self) -> None:
        pool = self.pool(threads=1, max_pending=8)
        gate = Gate()
        self.addCleanup(gate.release_all)
        held = [pool.run(gate.job(f"a{n}"), key="198.51.100.0/24") for n in range(2)]
        with self.assertRaises(Busy):
            pool.run(gate.job("a2"), key="198.51.100.0/24")
        other = pool.run(gate.job("b0"), key="203.0.113.0/24")  # another network still gets in
        gate.release_all()
        self.assertEqual(await gatherResults([*held, other]), ["a0", "a1", "b0"])
        self.assertEqual(await pool.run(lambda: "a3", key="198.51.100.0/24"), "a3")  # its places came back

    async def test_a_cancelled_job_that_has_not_started_gives_its_place_back(self) -> None:
        pool = self.pool(threads=1, max_pending=8)
        gate = Gate()
        self.addCleanup(gate.release_all)
        running = pool.run(gate.job("running"), key="a")
        handed_over = pool.run(gate.job("handed over"), key="a")  # threads + 1 are handed to the pool
        waiting = pool.run(gate.job("never"), key="b")
        self.assertEqual(pool.pending, 3)
        waiting.cancel()
        self.assertEqual(pool.pending, 2)
        self.failureResultOf(waiting, CancelledError)
        gate.release_all()
        self.assertEqual(await gatherResults([running, handed_over]), ["running", "handed over"])
        self.assertNotIn("never", gate.started)
        self.assertEqual(pool.pending, 0)

    async def test_stopping_fails_the_jobs_still_waiting(self) -> None:
        pool = CryptoPool(reactor, 1, 8)
        pool.startService()
        gate = Gate()
        self.addCleanup(gate.release_all)
        running = pool.run(gate.job("running"), key="a")
        pool.run(gate.job("handed over"), key="a")
        waiting = pool.run(gate.job("never"), key="b")
        await until(lambda: gate.started == ["running"])
        gate.release_all()
        pool.stopService()
        self.failureResultOf(waiting, Busy)
        self.assertEqual(
            pool.pending_by_kind["handshake"], 2
        )  # the two handed over finish or not: only those
        self.assertEqual(await running, "running")


class ThreadsPerKindTests(unittest.TestCase):
    def test_a_number_is_taken_as_it_is(self) -> None:
        self.assertEqual(threads_per_kind(3), 3)

    def test_zero_is_one_per_cpu_this_process_may_use(self) -> None:
        if not hasattr(os, "sched_getaffinity"):
            raise unittest.SkipTest("CPU affinity is a Linux feature")
        self.assertEqual(threads_per_kind(0), min(64, len(os.sched_getaffinity(0))))
        mask = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(mask)})  # as taskset, systemd's CPUAffinity= or a container would
        try:
            self.assertEqual(threads_per_kind(0), 1)
        finally:
            os.sched_setaffinity(0, mask)
