"""Work the event loop does after everything else: a few milliseconds of
it per turn, in the order it came.

Full handshakes go here (see ChatProtocol._handshake_line).  A flood opens
hundreds of connections at once, and each of its hellos costs the event
loop a cookie or an X25519 key and a SERVER_HELLO; done as they are read,
one turn of the loop would serve them all, and the records of clients
that are logged in or resuming (cheap, and what matters) would wait
behind the whole batch.  Served from here, a turn reads every ready
connection, does the cheap work at once and only ``seconds_per_turn`` of
this, so that latency stays bounded by the turn, not by the flood.  When
nothing else is waiting a queued item is served on the next turn, so an
idle server answers as fast as before.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Callable

from twisted.logger import Logger

log = Logger()


class LowPriority:
    """Callables run on later turns of ``reactor``, FIFO, at most about
    ``seconds_per_turn`` of them per turn (at least one)."""

    def __init__(self, reactor: Any, seconds_per_turn: float) -> None:
        self._reactor = reactor
        self.seconds_per_turn = seconds_per_turn
        self._queue: collections.deque[Callable[[], None]] = collections.deque()
        self._call: Any = None

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, work: Callable[[], None]) -> None:
        self._queue.append(work)
        if self._call is None:
            self._call = self._reactor.callLater(0, self._serve)

    def _serve(self) -> None:
        # _call stays set while serving: an item that adds work must not
        # schedule a second serving in this turn.
        queue = self._queue
        # The wall clock of this process, not the server's (possibly fake)
        # clock: the budget is of real time spent in this turn.
        deadline = time.perf_counter() + self.seconds_per_turn
        while queue:
            try:
                queue.popleft()()
            except Exception:
                # One item's bug must not stall the ones behind it.
                log.failure("low-priority work failed")
            if time.perf_counter() >= deadline:
                break
        self._call = self._reactor.callLater(0, self._serve) if queue else None

    def stop(self) -> None:
        """Forget what is queued (the server is stopping)."""
        self._queue.clear()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
