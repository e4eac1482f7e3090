"""Exactly once and in order, from a transport that is at least once.

Each process keeps, per stream, the last id it has delivered.  An event at
or below it is a duplicate and dropped; the next one is delivered; one
further ahead is held while the events between are read from storage
(they are committed: an event is published only after its commit), and
then everything delivered in order.  A stream this process has no
position for starts at its first event.
"""

from __future__ import annotations

import json
from typing import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatserver.hub.interface import Receiver
from chatserver.storage.interface import StoreClosed

log = Logger(namespace="chatserver.hub")

#: Reads the committed events of a stream after an id and before another,
#: as JSON texts in id order (``Storage.history``'s signature).
Fetch = Callable[[str, int, int, int], "Deferred[list[str]]"]


class InOrder:
    def __init__(self, receiver: Receiver, fetch: Fetch, positions: dict[str, int]) -> None:
        self.receiver = receiver
        self._fetch = fetch
        #: stream -> last id delivered
        self.positions = dict(positions)
        #: stream -> {id: encoded} of events that came early
        self._held: dict[str, dict[int, bytes]] = {}

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
                self._fill(stream, last, event_id)
            held[event_id] = encoded

    def forget(self, stream: str) -> None:
        """No position for ``stream`` any more (no one here follows it): the
        next event starts it again, and a gap fill under way is dropped."""
        self.positions.pop(stream, None)
        self._held.pop(stream, None)

    def _fill(self, stream: str, after: int, before: int) -> None:
        """Read what is missing between ``after`` and ``before``."""
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
                return  # still a gap: the fill under way (or _filled) sees to it
        del self._held[stream]
