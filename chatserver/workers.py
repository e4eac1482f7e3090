"""Bounded thread pools for the expensive per-client crypto, one per kind
of work.

RSA decryption, key derivation and password hashing each take from a
fraction of a millisecond to a hundred milliseconds, far too long for the
reactor thread.  They run here instead, on a fixed number of threads.

Each kind of work has its own threads and its own bounded queue:
``handshake`` (a full handshake's RSA decryption and key derivation, which
anyone can ask for before proving anything) and ``login`` (password
hashing, for clients that completed a handshake).  A full queue refuses
with ``Busy`` at once instead of growing, and only its own kind: a flood of
handshakes fills the handshake queue and is refused there, while logins
keep their own queue and threads and never wait behind a handshake.

The handshake threads also run at a lower CPU priority (``nice`` +10).
``cryptography`` releases the GIL while it decrypts, so on a busy core the
kernel's scheduler, not the GIL, decides who runs: the reactor (everyone
already connected, and resumed logins, which need no RSA) comes first, and
unauthenticated RSA gets what is left, about a tenth of a contended core.
On an idle core nothing changes.  (A thread can lower its own priority
without privileges, but not raise it again: hence threads of their own.)

Within a kind, jobs wait in one queue per ``key`` (for handshakes, the
client's network: its /24 or /64) and the threads take them in turn from
each key that has any, not in arrival order, and one key may hold at
most a quarter of the kind's places.  A flood from one network that has
queued a hundred decryptions makes a new client from another network
wait for one of them, not for all; from 49 networks, for one of each.
"""

from __future__ import annotations

import collections
import os
import sys
import threading
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

#: The kinds of work.
KINDS = ("login", "handshake")

#: How much lower the handshake threads' CPU priority is.
HANDSHAKE_NICE = 10


def threads_per_kind(setting: int) -> int:
    """``[server] crypto_threads``: the number given, or for 0 the number
    of CPUs this process may run on (its affinity mask, which a container
    or systemd's CPUAffinity= may make smaller than the machine)."""
    if setting > 0:
        return setting
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(64, cpus))


class Busy(Exception):
    """Too many jobs of that kind are queued already."""


class _LowerPriority:
    """Runs jobs after lowering the calling thread's CPU priority, once per
    thread (Linux: PRIO_PROCESS with a thread id is that thread alone)."""

    def __init__(self, increment: int) -> None:
        self.increment = increment
        self._done = threading.local()

    def __call__(self, f: Callable[..., Any], *args: Any) -> Any:
        if not getattr(self._done, "niced", False):
            self._done.niced = True
            if not sys.platform.startswith("linux"):
                return f(*args)  # elsewhere PRIO_PROCESS would mean the whole process
            try:
                tid = threading.get_native_id()
                lower = min(19, os.getpriority(os.PRIO_PROCESS, tid) + self.increment)
                os.setpriority(os.PRIO_PROCESS, tid, lower)
            except (AttributeError, OSError):  # not Linux, or forbidden: the job still runs
                pass
        return f(*args)


class CryptoPool(Service):
    name = "crypto-pool"

    #: The share of a kind's places that one key may hold.
    KEY_SHARE = 4

    def __init__(self, reactor: Any, threads_: int, max_pending: int | dict[str, int]) -> None:
        """``threads_`` threads per kind; ``max_pending``: the bound of
        every queue, or one per kind."""
        self._reactor = reactor
        self.threads = threads_
        self._pools = {
            kind: ThreadPool(minthreads=0, maxthreads=threads_, name=f"chatserver-{kind}") for kind in KINDS
        }
        self._wrap: dict[str, Callable[..., Any] | None] = {
            "login": None,
            "handshake": _LowerPriority(HANDSHAKE_NICE),
        }
        limits = max_pending if isinstance(max_pending, dict) else dict.fromkeys(KINDS, max_pending)
        self.max_pending = {kind: limits[kind] for kind in KINDS}
        #: Jobs queued or running, per kind.
        self.pending_by_kind = dict.fromkeys(KINDS, 0)
        #: Per kind, jobs queued or running per key.
        self._pending_by_key: dict[str, collections.Counter[Any]] = {k: collections.Counter() for k in KINDS}
        #: Per kind, the waiting jobs of each key, in the order the keys
        #: are to be served (a key goes to the end once served).
        self._waiting: dict[str, dict[Any, collections.deque[tuple[Any, ...]]]] = {k: {} for k in KINDS}
        #: Jobs handed to the threads, per kind (at most ``threads`` + 1).
        self._running = dict.fromkeys(KINDS, 0)

    @property
    def pending(self) -> int:
        """Jobs queued or running, of every kind."""
        return sum(self.pending_by_kind.values())

    def startService(self) -> None:
        super().startService()
        for pool in self._pools.values():
            pool.start()

    def stopService(self) -> None:
        super().stopService()
        for kind, waiting in self._waiting.items():
            # Never started: they fail (their connections are closing).
            entries = [(key, entry) for key, queue in waiting.items() for entry in queue]
            waiting.clear()
            for key, (_f, _args, result) in entries:
                self._count_out(kind, key)
                result.errback(Failure(Busy()))
        for pool in self._pools.values():
            pool.stop()

    def run(
        self, f: Callable[..., Any], *args: Any, kind: str = "handshake", key: Any = None
    ) -> Deferred[Any]:
        """Run ``f(*args)`` on a thread of ``kind``, in turn with the jobs
        of other ``key``s; raises :class:`Busy` when the queue of
        ``kind``, or ``key``'s share of it, is full."""
        if self.pending_by_kind[kind] >= self.max_pending[kind]:
            raise Busy()
        by_key = self._pending_by_key[kind]
        if key is not None and by_key[key] >= max(1, self.max_pending[kind] // self.KEY_SHARE):
            raise Busy()
        self.pending_by_kind[kind] += 1
        by_key[key] += 1
        waiting = self._waiting[kind]
        queue = waiting.get(key)
        if queue is None:
            queue = waiting[key] = collections.deque()

        def withdraw(d: Deferred[Any]) -> None:
            # Cancelled before it started: its place is free at once.
            # (Once started it runs to the end; its result is dropped.)
            for entry in queue:
                if entry[2] is d:
                    queue.remove(entry)
                    if not queue and waiting.get(key) is queue:
                        del waiting[key]
                    self._count_out(kind, key)
                    return

        result: Deferred[Any] = Deferred(withdraw)
        queue.append((f, args, result))
        self._start_next(kind)
        return result

    def _start_next(self, kind: str) -> None:
        waiting = self._waiting[kind]
        # One job more than there are threads is handed over, so that a
        # thread that finishes finds its next job at once instead of
        # waiting for the (busy) reactor to hand it one.
        while waiting and self._running[kind] <= self.threads:
            key = next(iter(waiting))
            queue = waiting.pop(key)
            f, args, result = queue.popleft()
            if queue:
                waiting[key] = queue  # to the end: the other keys go first
            self._running[kind] += 1
            wrap = self._wrap[kind]
            if wrap is None:
                job = threads.deferToThreadPool(self._reactor, self._pools[kind], f, *args)
            else:
                job = threads.deferToThreadPool(self._reactor, self._pools[kind], wrap, f, *args)
            job.addBoth(self._finished, kind, key).chainDeferred(result)

    def _count_out(self, kind: str, key: Any) -> None:
        self.pending_by_kind[kind] -= 1
        by_key = self._pending_by_key[kind]
        by_key[key] -= 1
        if not by_key[key]:
            del by_key[key]

    def _finished(self, outcome: Any, kind: str, key: Any) -> Any:
        self._running[kind] -= 1
        self._count_out(kind, key)
        self._start_next(kind)
        return outcome
