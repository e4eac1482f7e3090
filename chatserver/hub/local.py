"""The in-process ``Hub``: the embedded default, with no server to run.

A ``LocalBus`` joins the hubs of one Python process; the server has one
hub on it.  Several hubs on one bus behave as several processes would
over Redis (the contract tests run them so): each follows its own
streams, keeps its own presence and gets the others' invalidations.
Delivery happens within ``publish``, which the contract allows (it says
"before or after") and which keeps the embedded server's fan-out as cheap
as a loop over its followers.
"""

from __future__ import annotations

import collections
from typing import Sequence

from twisted.internet import defer
from twisted.internet.defer import Deferred

from chatserver.hub.interface import Receiver
from chatserver.hub.ordering import Fetch, InOrder


class LocalBus:
    """What the hubs of one process share."""

    def __init__(self) -> None:
        self.hubs: list[LocalHub] = []
        #: user -> {hub name: sessions there}
        self.presence: dict[str, collections.Counter[str]] = {}


class LocalHub:
    def __init__(self, fetch: Fetch, bus: LocalBus | None = None, name: str = "local") -> None:
        """``fetch`` reads a gap's events from storage (``Storage.history``)."""
        self.name = name
        #: In one process, the limits themselves are the shared counts.
        self.counters = None
        self.bus = bus if bus is not None else LocalBus()
        self._fetch = fetch
        self._order: InOrder | None = None
        self._followed: collections.Counter[str] = collections.Counter()
        self._receiver: Receiver | None = None

    @property
    def shared(self) -> bool:
        return len(self.bus.hubs) > 1

    def start(self, receiver: Receiver, positions: dict[str, int]) -> Deferred[None]:
        self._receiver = receiver
        self._order = InOrder(receiver, self._fetch, positions)
        self.bus.hubs.append(self)
        return defer.succeed(None)

    def stop(self) -> Deferred[None]:
        if self in self.bus.hubs:
            self.bus.hubs.remove(self)
        for user, where in list(self.bus.presence.items()):
            where.pop(self.name, None)
            if not where:
                del self.bus.presence[user]
        return defer.succeed(None)

    def follow(self, stream: str) -> Deferred[int | None]:
        self._followed[stream] += 1
        return defer.succeed(None)  # one process's ids are exact

    def unfollow(self, stream: str) -> None:
        count = self._followed[stream] - 1
        if count > 0:
            self._followed[stream] = count
        else:
            del self._followed[stream]

    def publish(self, stream: str, event_id: int, encoded: bytes, users: Sequence[str] = ()) -> None:
        self._offer(stream, event_id, encoded)
        hubs = self.bus.hubs
        if len(hubs) == 1:
            return  # the embedded server: no one else to ask
        presence = self.bus.presence
        for hub in hubs:
            if hub is not self and (
                stream in hub._followed or any(hub.name in presence.get(user, ()) for user in users)
            ):
                hub._offer(stream, event_id, encoded)

    def _offer(self, stream: str, event_id: int, encoded: bytes) -> None:
        if self._order is not None:
            self._order.offer(stream, event_id, encoded)

    def arrived(self, user: str) -> Deferred[None]:
        self.bus.presence.setdefault(user, collections.Counter())[self.name] += 1
        return defer.succeed(None)

    def left(self, user: str) -> None:
        where = self.bus.presence.get(user)
        if where is None or not where[self.name]:
            return
        where[self.name] -= 1
        if not where[self.name]:
            del where[self.name]
            if not where:
                del self.bus.presence[user]

    def is_online(self, user: str) -> bool:
        return user in self.bus.presence

    def online_count(self) -> int:
        return len(self.bus.presence)

    def where(self, user: str) -> set[str]:
        return set(self.bus.presence.get(user, ()))

    def invalidate(self, room: str) -> None:
        for hub in self.bus.hubs:
            if hub is not self and hub._receiver is not None:
                hub._receiver.room_changed(room)

    def close_sessions(self, user: str, device: str | None, code: str) -> None:
        for hub in self.bus.hubs:
            if hub is not self and hub._receiver is not None:
                hub._receiver.close_sessions(user, device, code)
