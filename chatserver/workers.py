"""A bounded thread pool for the expensive per-client crypto, with one
queue per kind of work.

RSA decryption, key derivation and password hashing each take from a
fraction of a millisecond to a hundred milliseconds, far too long for the
reactor thread.  They run here instead, on a fixed number of threads.

Each kind of work has its own bounded queue: ``handshake`` (a full
handshake's RSA decryption and key derivation, which anyone can ask for
before proving anything) and ``login`` (password hashing, for clients that
completed a handshake).  A full queue refuses with ``Busy`` at once instead
of growing, and only its own kind: a flood of handshakes fills the
handshake queue and is refused there, while logins keep their own queue.
The threads take the queues in turn, one job from each that has one, so a
queued login waits for at most one handshake job per thread, however many
handshakes are waiting.
"""

from __future__ import annotations

import collections
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool

#: The kinds of work, in the order the threads take them in turn.
KINDS = ("login", "handshake")


#: A queued job: the function, its arguments, and what fires with its result.
_Job = tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]


class Busy(Exception):
    """Too many jobs of that kind are queued already."""


class CryptoPool(Service):
    name = "crypto-pool"

    def __init__(self, reactor: Any, threads_: int, max_pending: int | dict[str, int]) -> None:
        """``max_pending``: the bound of every queue, or one per kind."""
        self._reactor = reactor
        self.threads = threads_
        self._pool = ThreadPool(minthreads=0, maxthreads=threads_, name="chatserver-crypto")
        limits = max_pending if isinstance(max_pending, dict) else dict.fromkeys(KINDS, max_pending)
        self.max_pending = {kind: limits[kind] for kind in KINDS}
        #: Jobs not yet handed to a thread, per kind (all on the reactor
        #: thread: no lock needed).
        self._queues: dict[
            str, collections.deque[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]]
        ] = {kind: collections.deque() for kind in KINDS}
        #: Jobs queued or running, per kind.
        self.pending_by_kind = dict.fromkeys(KINDS, 0)
        self._running = 0
        self._turn = 0  # which queue the next free thread looks at first

    @property
    def pending(self) -> int:
        """Jobs queued or running, of every kind."""
        return sum(self.pending_by_kind.values())

    def startService(self) -> None:
        super().startService()
        self._pool.start()

    def stopService(self) -> None:
        super().stopService()
        self._pool.stop()

    def run(self, f: Callable[..., Any], *args: Any, kind: str = "handshake") -> Deferred[Any]:
        """Run ``f(*args)`` on a thread; raises :class:`Busy` when the
        queue of ``kind`` is full."""
        if self.pending_by_kind[kind] >= self.max_pending[kind]:
            raise Busy()
        self.pending_by_kind[kind] += 1
        d: Deferred[Any] = Deferred()
        self._queues[kind].append((f, args, d))
        self._next()
        return d

    def _next(self) -> None:
        """Hand queued jobs to free threads, taking the queues in turn."""
        while self._running < self.threads:
            for step in range(len(KINDS)):
                kind = KINDS[(self._turn + step) % len(KINDS)]
                if self._queues[kind]:
                    self._turn = (self._turn + step + 1) % len(KINDS)
                    self._start(kind, *self._queues[kind].popleft())
                    break
            else:
                return  # nothing queued

    def _start(self, kind: str, f: Callable[..., Any], args: tuple[Any, ...], d: Deferred[Any]) -> None:
        self._running += 1
        job = threads.deferToThreadPool(self._reactor, self._pool, f, *args)

        def done(result: Any) -> Any:
            self._running -= 1
            self.pending_by_kind[kind] -= 1
            self._next()
            return result

        job.addBoth(done).chainDeferred(d)
