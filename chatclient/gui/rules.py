"""The desktop client's decisions that need no window: what the user may
do to a member, and how a failed request is put to the user.  (A message
whose send was cut off needs no decision: the client library sends it
again with its id, and the server stores it once.)

The main window asks these and draws the answer; they are tested without
Qt (tests/test_gui_rules.py).  The ranks are the server's
(``chatserver.wire.names.RANK``), so the client offers exactly what the
server would allow.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from chatserver.wire.names import RANK

#: (label, request) offered for a member; request None: "open a direct message".
Action = tuple[str, "dict[str, Any] | None"]


def my_rank(server_role: str | None, room_role: str | None) -> int:
    """How far the user reaches in a room: a server admin outranks every
    room role; otherwise the room role's rank (0: not a member)."""
    if server_role == "admin":
        return RANK["admin"]
    return RANK.get(room_role or "", 0)


def member_actions(
    me: str | None,
    rank: int,
    room: str | None,
    user: str,
    target_role: str | None,
) -> list[Action]:
    """What to offer for ``user``: a direct message to anyone else, and in
    a room (``room`` given) the moderation the server would allow someone
    of ``rank`` over a member of ``target_role``."""
    actions: list[Action] = []
    if user != me:
        actions.append(("Send a direct message", None))
    if room is None or user == me:
        return actions
    target_rank = RANK.get(target_role or "", 0)
    if rank >= RANK["moderator"] and target_rank < rank:
        actions += [
            ("Remove from room (kick)", {"type": "kick", "room": room, "user": user}),
            ("Mute for 10 minutes", {"type": "mute", "room": room, "user": user, "duration": 600}),
            ("Mute until lifted", {"type": "mute", "room": room, "user": user}),
            ("Lift mute", {"type": "unmute", "room": room, "user": user}),
            ("Ban for 1 day", {"type": "ban", "room": room, "user": user, "duration": 86400}),
            ("Ban until lifted", {"type": "ban", "room": room, "user": user}),
        ]
    if rank >= RANK["owner"] and target_role is not None and target_role != "owner":
        if target_role == "moderator":
            actions.append(("Make a plain member", {"type": "deop", "room": room, "user": user}))
        else:
            actions.append(("Make moderator", {"type": "op", "room": room, "user": user}))
    return actions


@dataclasses.dataclass(frozen=True)
class Problem:
    """Why a request got no answer, as the widgets see it: no exception,
    no Twisted (the bridge makes these from the client library's failures).

    ``kind``: ``refused`` (the server answered with an error event, in
    ``event``), ``dropped`` (the connection ended before the answer: the
    request may or may not have been carried out) or ``failed``.
    """

    kind: str
    message: str
    retry_after: Any = None
    event: dict[str, Any] | None = None

    @property
    def dropped(self) -> bool:
        return self.kind == "dropped"

    def text(self) -> str:
        """The reason, with when to try again if the server said so."""
        if self.kind == "refused" and self.retry_after:
            return f"{self.message} (try again in {self.retry_after} s)"
        return self.message
