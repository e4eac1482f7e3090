"""What the desktop client knows about its conversations, without Qt.

One :class:`Conversation` per stream (a room, or the direct messages with
one user): its events in id order without duplicates, whatever order live
events, catch-up pages and scroll-back pages arrive in; its unread count;
and whether older history is left to load.  The widgets only draw this.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
from typing import Any

from chatserver.wire.names import dm_peer

#: Event types that count as unread messages.
MESSAGES = ("msg", "dm")


@dataclasses.dataclass
class Conversation:
    stream: str
    #: The room name, or the other user of a direct-message stream.
    name: str
    kind: str  # "room" or "dm"
    events: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    ids: list[int] = dataclasses.field(default_factory=list)
    unread: int = 0
    mentioned: bool = False
    #: Older events exist before the first one we hold (unknown: True).
    more_before: bool = True
    #: A history page has been loaded at least once.
    loaded: bool = False
    topic: str = ""
    #: Still a member (rooms): a kicked or banned user keeps the transcript.
    joined: bool = True

    @property
    def oldest_id(self) -> int | None:
        return self.ids[0] if self.ids else None

    @property
    def newest_id(self) -> int:
        return self.ids[-1] if self.ids else 0

    def replace(self, event: dict[str, Any]) -> bool:
        """An event held here, as it reads now (a message decrypted once
        its room key came); False if it is not held."""
        for at, held in enumerate(self.events):
            if held.get("id") == event.get("id"):
                self.events[at] = event
                return True
        return False

    def insert(self, event: dict[str, Any]) -> int | None:
        """Insert in id order; the index, or None for a duplicate."""
        event_id = event["id"]
        at = bisect.bisect_left(self.ids, event_id)
        if at < len(self.ids) and self.ids[at] == event_id:
            return None
        self.ids.insert(at, event_id)
        self.events.insert(at, event)
        if event.get("type") == "topic":
            self.topic = event.get("topic", "")
        return at


class ChatModel:
    def __init__(self, me: str) -> None:
        self.me = me
        self.conversations: dict[str, Conversation] = {}
        self.current: str | None = None
        self._mention = re.compile(rf"(?<![\w@-])@?{re.escape(me)}(?![\w-])", re.IGNORECASE)

    def conversation(self, stream: str) -> Conversation:
        found = self.conversations.get(stream)
        if found is None:
            if stream.startswith("room:"):
                found = Conversation(stream, stream[5:], "room")
            else:
                found = Conversation(stream, dm_peer(stream, self.me), "dm")
            self.conversations[stream] = found
        return found

    def rooms(self) -> list[Conversation]:
        return sorted(
            (c for c in self.conversations.values() if c.kind == "room" and c.joined), key=lambda c: c.name
        )

    def dms(self) -> list[Conversation]:
        return sorted((c for c in self.conversations.values() if c.kind == "dm"), key=lambda c: c.name)

    def mentions_me(self, event: dict[str, Any]) -> bool:
        if event.get("type") != "msg" or event.get("from") == self.me:
            return False
        return bool(self._mention.search(str(event.get("body", ""))))

    def add_event(self, event: dict[str, Any]) -> tuple[Conversation, int] | None:
        """A live or caught-up stream event: (conversation, index), or None
        if it is not a stream event or a duplicate."""
        stream = event.get("stream")
        if not isinstance(stream, str) or not isinstance(event.get("id"), int):
            return None
        conversation = self.conversation(stream)
        at = conversation.insert(event)
        if at is None:
            return None
        self._track_membership(conversation, event)
        if (
            stream != self.current
            and event.get("type") in MESSAGES
            and event.get("from") != self.me
            and at == len(conversation.events) - 1
        ):
            conversation.unread += 1
            if conversation.kind == "dm" or self.mentions_me(event):
                conversation.mentioned = True
        return conversation, at

    def _track_membership(self, conversation: Conversation, event: dict[str, Any]) -> None:
        if conversation.kind != "room":
            return
        if event.get("type") == "deleted":
            conversation.joined = False  # the room is gone, with everyone in it
            return
        if event.get("user") != self.me:
            return
        # Only the newest event says whether we are in the room now.
        if event["id"] != conversation.newest_id:
            return
        kind = event.get("type")
        if kind == "joined":
            conversation.joined = True
        elif kind in ("left", "kicked", "banned"):
            conversation.joined = False

    def add_history(self, stream: str, events: list[dict[str, Any]], more: bool, older: bool) -> int:
        """A history page; ``older``: it was read backwards (no ``after``),
        so ``more`` says whether even older events exist.  Returns how many
        events were new."""
        conversation = self.conversation(stream)
        added = sum(1 for event in events if conversation.insert(event) is not None)
        if older:
            conversation.more_before = more
        elif not events and conversation.oldest_id is None:
            conversation.more_before = False
        conversation.loaded = True
        return added

    def open(self, stream: str) -> Conversation:
        """Make ``stream`` the shown conversation: it has no unread left."""
        conversation = self.conversation(stream)
        self.current = stream
        conversation.unread = 0
        conversation.mentioned = False
        return conversation
