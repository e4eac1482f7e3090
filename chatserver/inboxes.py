"""Device inboxes: messages to one device of a user (room keys, key
verification), carried as an ordinary stream, ``device:USER:DEVICE``.

The events are committed and published like any other, so they survive
restarts, reach the device on whichever process it is connected to, and
arrive in id order.  A connection that declares its device (the ``keys``
request) is sent the inbox's backlog and then its live events; the
device confirms what it has handled with ``to_device_ack``, and what it
confirmed is deleted.  What it has not confirmed comes again at its next
connection, so nothing is lost to a connection that drops.
"""

from __future__ import annotations

import json
from typing import Any, Protocol, Sequence

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatserver.hub.interface import Hub
from chatserver.storage.interface import Storage

log = Logger(namespace="chatserver.inboxes")

#: Events read per page of a backlog.
PAGE = 200
#: The most messages an inbox holds unconfirmed: a device that never comes
#: back, or someone who floods it, does not fill the disk.
MAX_INBOX = 1000


class Device(Protocol):
    """One logged-in connection that declared its device."""

    user: str | None

    def deliver(self, encoded: bytes) -> None: ...


def inbox_stream(user: str, device: str) -> str:
    return f"device:{user}:{device}"


def _unwrapped(failure: Failure) -> Failure:
    """The first failure of a gathering as itself (a database that went
    away ...), so that the client is told what it was."""
    error = failure.value
    if isinstance(error, defer.FirstError):
        first: Failure = error.subFailure
        return first
    return failure


class Inboxes:
    def __init__(self, storage: Storage, hub: Hub, clock: Any, max_inbox: int = MAX_INBOX) -> None:
        self.storage = storage
        self.hub = hub
        self._clock = clock
        self.max_inbox = max_inbox
        #: inbox stream -> messages being committed to it from here (the
        #: count in storage does not have them yet)
        self._committing: dict[str, int] = {}
        #: inbox stream -> the connections of that device here
        self.online: dict[str, dict[Device, None]] = {}
        #: connections still being sent their backlog -> the live events
        #: held for them meanwhile, as (id, JSON)
        self._catching_up: dict[Device, list[tuple[int, bytes]]] = {}

    @defer.inlineCallbacks
    def bind(self, conn: Device, device: str) -> Any:
        """``conn`` is ``device``: send it the inbox's backlog, then its
        live events, each once and in id order."""
        assert conn.user is not None
        stream = inbox_stream(conn.user, device)
        conns = self.online.setdefault(stream, {})
        first = not conns
        conns[conn] = None
        held = self._catching_up[conn] = []
        # Follow first, read second: an event committed in between is in
        # both, and is sent once (by its id).  One follow per stream here,
        # as ``unbind`` unfollows once its last connection goes.
        if first:
            yield self.hub.follow(stream)
        sent = 0
        while conn in self._catching_up:
            texts = yield self.storage.history(stream, sent, None, PAGE)
            if not texts or conn not in self._catching_up:
                break
            for text in texts:
                conn.deliver(text.encode("utf-8"))
            sent = json.loads(texts[-1])["id"]
        held = self._catching_up.pop(conn, [])
        for event_id, encoded in held:
            if event_id > sent:
                conn.deliver(encoded)

    def unbind(self, conn: Device, device: str) -> None:
        if conn.user is None:
            return
        stream = inbox_stream(conn.user, device)
        self._catching_up.pop(conn, None)
        conns = self.online.get(stream)
        if conns is None or conn not in conns:
            return
        del conns[conn]
        if not conns:
            del self.online[stream]
        self.hub.unfollow(stream)

    def deliver(self, stream: str, event_id: int, encoded: bytes) -> None:
        """An inbox's committed event, from the hub."""
        for conn in list(self.online.get(stream, ())):
            held = self._catching_up.get(conn)
            if held is not None:
                held.append((event_id, encoded))
            else:
                conn.deliver(encoded)

    @defer.inlineCallbacks
    def send(
        self,
        sender: str,
        sender_device: str,
        messages: Sequence[dict[str, Any]],
        existing: set[tuple[str, str]],
    ) -> Any:
        """Commit one inbox event per message whose device is in
        ``existing`` and whose inbox is not full; fires with (the events,
        once all are committed; the messages refused for a full inbox)."""
        wanted = [m for m in messages if (m["user"], m["device"]) in existing]
        streams = sorted({inbox_stream(m["user"], m["device"]) for m in wanted})
        held = yield self.storage.event_counts(streams)
        for stream in streams:  # with what this process has on the way
            held[stream] = held.get(stream, 0) + self._committing.get(stream, 0)
        full = []
        now = int(self._clock.seconds() * 1000)
        sends = []
        for message in wanted:
            stream = inbox_stream(message["user"], message["device"])
            if held.get(stream, 0) >= self.max_inbox:
                full.append(message)
                continue
            held[stream] = held.get(stream, 0) + 1
            event = {
                "type": "to_device",
                "stream": stream,
                "id": 0,  # its place among the fields; the commit sets it
                "ts": now,
                "from": sender,
                "from_device": sender_device,
                "body": message["body"],
            }
            self._committing[stream] = self._committing.get(stream, 0) + 1
            d = self.storage.append(event).addCallback(self._published, event)
            sends.append(d.addBoth(self._committed, stream))
        if full:
            log.warn(
                "inbox full: {count} message(s) from {sender} refused ({streams})",
                count=len(full),
                sender=sender,
                streams=" ".join(sorted({inbox_stream(m["user"], m["device"]) for m in full})),
            )
        if not sends:
            return [], full
        gathered: Deferred[list[dict[str, Any]]] = defer.gatherResults(sends, consumeErrors=True)
        # The first failure as itself (a database that went away ...), not wrapped.
        sent = yield gathered.addErrback(_unwrapped)
        return sent, full

    def _committed(self, result: Any, stream: str) -> Any:
        left = self._committing[stream] - 1
        if left:
            self._committing[stream] = left
        else:
            del self._committing[stream]
        return result

    def _published(self, text: str, event: dict[str, Any]) -> dict[str, Any]:
        self.hub.publish(event["stream"], event["id"], text.encode("utf-8"))
        return event

    def acknowledge(self, user: str, device: str, upto: int) -> Deferred[None]:
        """The device has handled its inbox up to ``upto``: drop that."""
        return self.storage.write([("drop_inbox", (inbox_stream(user, device), upto))])
