"""Exactly once and in order, from a transport that is at least once.

Each process keeps, per stream, the last id it has delivered.  An event at
or below it is a duplicate and dropped; the next one is delivered; one
further ahead is held while the events between are read from storage
(they are committed: an event is published only after its commit), and
then everything delivered in order.  A stream this process has no
position for starts at its first event.

With several writers an early event is the usual case, not a fault: two
processes commit a stream's ids one after the other, and the later one's
publication can overtake the earlier one's on their way through Redis.
So, given a clock, a gap is read from storage only if it is still open
``grace`` seconds later; almost always the missing events have arrived
by then and no read is made (each read costs the process and the
database more than the events it saves: the bench's fan-out to 10 lost
about a fifth of its CPU to them).  What is held meanwhile waits, which
is the order it must be delivered in anyway.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatserver.hub.interface import Receiver
from chatserver.storage.interface import StoreClosed

log = Logger(namespace="chatserver.hub")

#: Reads the committed events of a stream after an id and before another,
#: as JSON texts in id order (``Storage.history``'s signature).
Fetch = Callable[[str, int, int, int], "Deferred[list[str]]"]


#: Seconds a gap may stay open before it is read from storage, with several
#: writers: far above the few milliseconds by which one publication
#: overtakes another, and short beside a client's patience.
GAP_GRACE = 0.2


class InOrder:
    def __init__(
        self,
        receiver: Receiver,
        fetch: Fetch,
        positions: dict[str, int],
        clock: Any = None,
        grace: float = GAP_GRACE,
    ) -> None:
        """``clock`` (an ``IReactorTime``): wait ``grace`` seconds before
        reading a gap; without one a gap is read at once."""
        self.receiver = receiver
        self._fetch = fetch
        self._clock = clock
        self._grace = grace
        #: stream -> last id delivered
        self.positions = dict(positions)
        #: stream -> {id: encoded} of events that came early
        self._held: dict[str, dict[int, bytes]] = {}
        #: stream -> the call that reads its gap, if it is still open then
        self._waiting: dict[str, Any] = {}
        #: Gaps opened, and gaps read from storage (for the tests).
        self.stats = {"gaps": 0, "fills": 0}

    def offer(self, stream: str, event_id: int, encoded: bytes) -> None:
        last = self.positions.get(stream)
        if last is None or event_id == last + 1:
            # The usual case, and the hot path: one lookup, one compare.
            self.positions[stream] = event_id
            self.receiver.deliver(stream, event_id, encoded)
            if stream in self._held:
                self._release(stream)
        elif event_id > last:  # early: held until the gap is filled (at or below: a duplicate)
            held = self._held.get(stream)
            if held is None:
                held = self._held[stream] = {}
                self.stats["gaps"] += 1
                if self._clock is None:
                    self._fill(stream, last, event_id)
                else:
                    self._waiting[stream] = self._clock.callLater(self._grace, self._still_open, stream)
            held[event_id] = encoded

    def forget(self, stream: str) -> None:
        """No position for ``stream`` any more (no one here follows it): the
        next event starts it again, and a gap fill under way is dropped."""
        self.positions.pop(stream, None)
        self._held.pop(stream, None)
        self._stop_waiting(stream)

    def stop(self) -> None:
        """No more reads (the hub stopping)."""
        for stream in list(self._waiting):
            self._stop_waiting(stream)

    def _stop_waiting(self, stream: str) -> None:
        call = self._waiting.pop(stream, None)
        if call is not None and call.active():
            call.cancel()

    def _still_open(self, stream: str) -> None:
        del self._waiting[stream]
        held = self._held.get(stream)
        if held:
            self._fill(stream, self.positions.get(stream, min(held) - 1), min(held))

    def _fill(self, stream: str, after: int, before: int) -> None:
        """Read what is missing between ``after`` and ``before``."""
        self.stats["fills"] += 1
        d = self._fetch(stream, after, before, before - after - 1)
        d.addCallbacks(
            self._filled, self._fill_failed, callbackArgs=(stream, after), errbackArgs=(stream, after)
        )

    def _filled(self, texts: list[str], stream: str, after: int) -> None:
        held = self._held.get(stream)
        if held is None:
            return
        for text in texts:
            event_id = json.loads(text)["id"]
            held.setdefault(event_id, text.encode("utf-8"))
        self._release(stream)
        rest = self._held.get(stream)
        if not rest:
            return
        position = self.positions.get(stream, after)
        if position == after:
            # Storage has not got the gap (it always has, if publishing
            # follows commits; but never stall): go on from what is held.
            first = min(rest)
            log.warn(
                "stream {stream}: ids {start}..{end} missing from storage; going on from {first}",
                stream=stream,
                start=after + 1,
                end=first - 1,
                first=first,
            )
            self.positions[stream] = first - 1
            self._release(stream)
        else:
            self._fill(stream, position, min(rest))  # a later gap

    def _fill_failed(self, failure: Failure, stream: str, after: int) -> None:
        if failure.check(StoreClosed):
            return  # shutting down: nothing more is delivered
        log.failure("filling a gap of {stream} after {after} failed", failure, stream=stream, after=after)
        held = self._held.get(stream)
        if held:
            # Try again from where the stream is; the held events stay.
            self._fill(stream, self.positions.get(stream, after), min(held))

    def _release(self, stream: str) -> None:
        """Deliver the held events that are next, in order."""
        held = self._held[stream]
        last = self.positions[stream]
        while held:
            if last + 1 in held:
                last += 1
                self.positions[stream] = last
                self.receiver.deliver(stream, last, held.pop(last))
            else:
                for stale in [i for i in held if i <= last]:
                    del held[stale]
                if not held:
                    break
                return  # still a gap: the fill under way or awaited (or _filled) sees to it
        del self._held[stream]
        self._stop_waiting(stream)
