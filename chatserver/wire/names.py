"""The names both sides use: streams, room kinds, roles and their ranks.

A stream is where events are numbered: ``room:NAME`` for a room, and
``dm:A:B`` (the two user names sorted) for the direct messages of two
users (docs/protocol.rst, "Streams").
"""

from __future__ import annotations

ROOM_KINDS = ("public", "private", "readonly")

#: How far a role reaches: a room's member, moderator and owner, and the
#: server's admins, who outrank every room role.  No role ranks 0.
RANK = {"member": 1, "moderator": 2, "owner": 3, "admin": 4}


def room_stream(name: str) -> str:
    return "room:" + name


def dm_stream(a: str, b: str) -> str:
    first, second = sorted((a, b))
    return f"dm:{first}:{second}"


def dm_peer(stream: str, me: str) -> str:
    """The other user of a ``dm:A:B`` stream."""
    _, a, b = stream.split(":", 2)
    return b if a == me else a
