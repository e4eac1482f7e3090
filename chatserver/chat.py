"""The chat core: rooms, members and fan-out, with no network in sight.

A *member* is anything with a ``user`` name and a ``deliver(plaintext)``
method that takes an already-encoded event list (see
``channel.encode_events``).  Each event is serialized once, however many
members receive it; the protocol seals it per recipient.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Protocol

from chatserver.channel import encode_events


class Member(Protocol):
    user: str | None

    def deliver(self, plaintext: bytes) -> None: ...


class Room:
    __slots__ = ("name", "members", "connections_of", "last_id")

    def __init__(self, name: str) -> None:
        self.name = name
        self.members: dict[Member, None] = {}  # insertion-ordered set
        # user -> number of that user's connections in the room, so presence
        # changes are O(1) however many members there are.
        self.connections_of: dict[str, int] = {}
        self.last_id = 0

    def users(self) -> list[str]:
        return sorted(self.connections_of)


class ChatService:
    """Rooms and their members.  Ids are per room, increasing from 1."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.rooms: dict[str, Room] = {}

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def room(self, name: str) -> Room:
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(name)
        return room

    def _publish(self, room: Room, event: dict[str, Any]) -> dict[str, Any]:
        room.last_id += 1
        event["id"] = room.last_id
        event["ts"] = self._now_ms()
        plaintext = encode_events([event])
        for member in list(room.members):
            member.deliver(plaintext)
        return event

    def join(self, member: Member, name: str) -> Room:
        """Add ``member``; announce the user if this is their first connection."""
        room = self.room(name)
        if member in room.members:
            return room
        room.members[member] = None
        user = member.user
        if user is not None:
            count = room.connections_of.get(user, 0)
            room.connections_of[user] = count + 1
            if count == 0:
                self._publish(room, {"type": "joined", "room": name, "user": user})
        return room

    def leave(self, member: Member, name: str) -> None:
        room = self.rooms.get(name)
        if room is None or member not in room.members:
            return
        del room.members[member]
        user = member.user
        if user is not None:
            count = room.connections_of[user] - 1
            if count:
                room.connections_of[user] = count
            else:
                del room.connections_of[user]
                self._publish(room, {"type": "left", "room": name, "user": user})

    def leave_all(self, member: Member) -> None:
        for name in [n for n, r in self.rooms.items() if member in r.members]:
            self.leave(member, name)

    def say(self, member: Member, name: str, body: str) -> dict[str, Any]:
        """Broadcast a message; returns the published event (with id, ts)."""
        room = self.rooms.get(name)
        if room is None or member not in room.members:
            raise NotAMember(name)
        return self._publish(room, {"type": "msg", "room": name, "from": member.user, "body": body})

    def who(self, member: Member, name: str) -> list[str]:
        room = self.rooms.get(name)
        if room is None or member not in room.members:
            raise NotAMember(name)
        return room.users()


class NotAMember(Exception):
    """The member is not in that room."""
