"""Filling the conversations from the server's history, with no window.

:class:`HistoryLoader` asks for the first page when a conversation is
opened, older pages as the user scrolls back, the gap left while the user
was out of a room, a place to catch up from for rooms not yet seen, and
the rooms' topics.  It puts what comes into the
:class:`~chatclient.gui.model.ChatModel` and tells a :class:`HistoryView`
what changed; the main window is that view.  It needs neither Qt nor
Twisted: requests go through anything with the bridge's ``request``
(:class:`Requester`), which is how tests/test_gui_history.py drives it
against a real server with no window.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from chatclient.gui.model import ChatModel, Conversation
from chatclient.gui.rules import Problem
from chatserver.wire.names import room_stream

#: Events per page when scrolling back.
HISTORY_PAGE = 50
#: Events per request when filling a gap.
GAP_PAGE = 200


class Requester(Protocol):
    """What the loader needs of :class:`~chatclient.gui.bridge.ClientBridge`."""

    @property
    def online(self) -> bool: ...

    def request(
        self,
        request: dict[str, Any],
        answered: Callable[[dict[str, Any]], Any] | None = None,
        failed: Callable[[Problem], Any] | None = None,
    ) -> None: ...

    def has_seen(self, stream: str) -> bool: ...

    def note_seen(self, stream: str, last_id: int) -> None: ...


class HistoryView(Protocol):
    """What the loader tells whoever draws the conversations."""

    def page_loaded(
        self, conversation: Conversation, prepended: list[dict[str, Any]] | None, first_page: bool
    ) -> None:
        """A page of ``conversation`` (the one on screen) arrived.
        ``prepended``: the events it added, all older than anything shown,
        so they can be laid out above it alone; None: draw it all again.
        ``first_page``: the conversation's first (its latest events)."""

    def gap_filled(self, conversation: Conversation) -> None:
        """Events went in between others (``conversation`` is on screen)."""

    def topics_loaded(self) -> None: ...

    def report(self, problem: Problem, what: str) -> None:
        """A request failed (``what``: its type)."""


class HistoryLoader:
    def __init__(self, requester: Requester, model: ChatModel, view: HistoryView) -> None:
        self.requester = requester
        self.model = model
        self.view = view
        #: Streams with a page on its way (one at a time per stream).
        self.loading: set[str] = set()

    def _report(self, what: str) -> Callable[[Problem], None]:
        return lambda problem: self.view.report(problem, what)

    def load_older(self, conversation: Conversation | None) -> None:
        """The page before the oldest event loaded, if there is one and we
        are online (else it is asked for once back online)."""
        if conversation is None or not conversation.more_before or not self.requester.online:
            return
        self.load_page(conversation)

    def load_page(self, conversation: Conversation) -> None:
        stream = conversation.stream
        if stream in self.loading:
            return
        request: dict[str, Any] = {"type": "history", "stream": stream, "limit": HISTORY_PAGE}
        if conversation.oldest_id is not None:
            request["before"] = conversation.oldest_id
        self.loading.add(stream)

        def loaded(page: dict[str, Any]) -> None:
            self.loading.discard(stream)
            first_page = not conversation.loaded
            oldest = conversation.oldest_id
            self.model.add_history(stream, page["events"], page["more"], older=True)
            if first_page and page["events"]:
                self.requester.note_seen(stream, page["events"][-1]["id"])
            if stream != self.model.current:
                return
            older = [e for e in conversation.events if oldest is not None and e["id"] < oldest]
            # Scrolling back: only the new page needs laying out, not
            # everything loaded so far (a full re-render costs ~0.1 ms per
            # event), if all it brought is older than what is shown.
            prepended = older if older and not first_page and len(older) == len(page["events"]) else None
            self.view.page_loaded(conversation, prepended, first_page)

        def failed(problem: Problem) -> None:
            self.loading.discard(stream)
            if problem.dropped:
                return  # loaded when back online
            conversation.loaded = True
            conversation.more_before = False  # refused: asking again will not help
            self.view.report(problem, "history")

        self.requester.request(request, loaded, failed)

    def fill_gap(self, conversation: Conversation, after: int, before: int) -> None:
        """The events between ids ``after`` and ``before`` (both exclusive),
        page by page: what was said while the user was out of a room."""
        if before - after <= 1:
            return

        def got(page: dict[str, Any]) -> None:
            if self.model.add_history(conversation.stream, page["events"], page["more"], older=False):
                if conversation.stream == self.model.current:
                    self.view.gap_filled(conversation)
            if page["more"] and page["events"]:
                self.fill_gap(conversation, page["events"][-1]["id"], before)

        request = {
            "type": "history",
            "stream": conversation.stream,
            "after": after,
            "before": before,
            "limit": GAP_PAGE,
        }
        self.requester.request(request, got, self._report("history"))

    def seed_catch_up(self) -> None:
        """Give the client a place to catch up from for rooms it has seen
        no event of yet, so what they miss while disconnected counts as
        unread.  From a history page, not from the welcome: an event being
        committed at the welcome is counted there but arrives live later,
        and must not be taken as seen.  (Direct messages need none of
        this: the server sends the ones a user missed after each login.)"""
        for conversation in self.model.rooms():
            stream = conversation.stream
            if self.requester.has_seen(stream) or stream == self.model.current:
                continue

            def got(page: dict[str, Any], stream: str = stream) -> None:
                if page["events"]:
                    self.requester.note_seen(stream, page["events"][-1]["id"])

            self.requester.request({"type": "history", "stream": stream, "limit": 1}, got)

    def refresh_topics(self) -> None:
        """Topics set at creation have no ``topic`` event: read them all."""

        def got(answer: dict[str, Any]) -> None:
            for room in answer.get("rooms", []):
                conversation = self.model.conversations.get(room_stream(room.get("room", "")))
                if conversation is not None and not any(
                    e.get("type") == "topic" for e in conversation.events
                ):
                    conversation.topic = room.get("topic", "")
            self.view.topics_loaded()

        self.requester.request({"type": "rooms"}, got, self._report("rooms"))
