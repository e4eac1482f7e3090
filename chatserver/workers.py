"""A bounded thread pool for the expensive per-client crypto.

RSA decryption, key derivation and password hashing each take from a
fraction of a millisecond to a hundred milliseconds, far too long for the
reactor thread.  They run here instead.  The pool has a fixed number of
threads *and* a bound on queued jobs: a flood of handshakes gets ``Busy``
at once instead of growing an unbounded queue that delays every honest
client behind it.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool


class Busy(Exception):
    """Too many jobs are queued already."""


class CryptoPool(Service):
    name = "crypto-pool"

    def __init__(self, reactor: Any, threads_: int, max_pending: int) -> None:
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=0, maxthreads=threads_, name="chatserver-crypto")
        self.max_pending = max_pending
        self.pending = 0

    def startService(self) -> None:
        super().startService()
        self._pool.start()

    def stopService(self) -> None:
        super().stopService()
        self._pool.stop()

    def run(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run ``f(*args)`` in the pool; raises :class:`Busy` when full."""
        if self.pending >= self.max_pending:
            raise Busy()
        self.pending += 1
        d = threads.deferToThreadPool(self._reactor, self._pool, f, *args)

        def done(result: Any) -> Any:
            self.pending -= 1
            return result

        d.addBoth(done)
        return d
