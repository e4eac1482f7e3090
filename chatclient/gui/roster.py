"""Who is in the conversation on screen, with no window.

:class:`Roster` asks the server for a room's members, or, for a direct
message, finds the other user's presence in the member list of a room
both share (the lobby first).  What it finds goes to ``show(members)``
only while that conversation is still the one on screen.  Like
:mod:`chatclient.gui.history` it needs neither Qt nor Twisted.
"""

from __future__ import annotations

from typing import Any, Callable

from chatclient.gui.history import Requester
from chatclient.gui.model import ChatModel, Conversation
from chatclient.gui.rules import Problem

Members = list[dict[str, Any]]


class Roster:
    def __init__(
        self,
        requester: Requester,
        model: ChatModel,
        show: Callable[[Members], Any],
        report: Callable[[Problem, str], Any],
    ) -> None:
        self.requester = requester
        self.model = model
        self.show = show
        self.report = report
        #: What was last shown.
        self.members: Members = []

    def _show(self, stream: str, members: Members) -> None:
        if self.model.current == stream:
            self.members = members
            self.show(members)

    def refresh(self, conversation: Conversation | None) -> None:
        """Ask again (after a membership event, on a timer, once back online)."""
        if conversation is None or not self.requester.online:
            return
        me = {"user": self.model.me, "role": "member", "online": True}
        if conversation.kind == "dm":
            self._dm(conversation, me)
        elif not conversation.joined:
            self._show(conversation.stream, [me])
        else:
            stream = conversation.stream
            self.requester.request(
                {"type": "who", "room": conversation.name},
                lambda answer: self._show(stream, answer.get("members", [])),
                lambda problem: self.report(problem, "who"),
            )

    def _dm(self, conversation: Conversation, me: dict[str, Any]) -> None:
        """Us and the other user; their presence unknown (and shown so)
        when no shared room lists them."""
        stream, other = conversation.stream, conversation.name
        rooms = sorted((c.name for c in self.model.rooms()), key=lambda r: (r != "lobby", r))

        def show(presence: bool | None) -> None:
            self._show(stream, [me, {"user": other, "role": "member", "online": presence}])

        def ask(remaining: list[str]) -> None:
            if not remaining:
                return show(None)

            def got(answer: dict[str, Any]) -> None:
                found = [m for m in answer.get("members", []) if m.get("user") == other]
                if found:
                    show(bool(found[0].get("online")))
                else:
                    ask(remaining[1:])

            def failed(problem: Problem) -> None:
                if not problem.dropped:
                    ask(remaining[1:])

            self.requester.request({"type": "who", "room": remaining[0]}, got, failed)

        if self.model.current == stream and [m.get("user") for m in self.members] != [me["user"], other]:
            show(None)  # until the server answers
        ask(rooms)
