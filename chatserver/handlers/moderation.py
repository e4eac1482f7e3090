"""Moderation: kicks, bans, mutes and room roles, and (for admins)
disabling accounts."""

from __future__ import annotations

from typing import Any, Callable, Iterable

from twisted.internet.defer import Deferred

from chatserver.chat import ChatService
from chatserver.session import Handler, Session


class ModerationHandlers:
    def __init__(self, chat: ChatService, sessions: Callable[[], Iterable[Session]]) -> None:
        """``sessions()``: every session of this process, logged in or not."""
        self.chat = chat
        self.sessions = sessions
        self.requests: dict[str, Handler] = {
            "kick": self.kick,
            "ban": self.ban,
            "mute": self.mute,
            "unban": self.unban,
            "unmute": self.unmute,
            "op": self.op,
            "deop": self.deop,
            "disable": self.disable,
            "enable": self.enable,
        }

    def kick(self, session: Session, request: dict[str, Any]) -> Deferred[dict[str, Any]]:
        d = self.chat.kick(session, request["room"], request["user"], request.get("reason", ""))
        return d.addCallback(session.ack)

    def _sanction(self, session: Session, request: dict[str, Any], kind: str) -> Deferred[dict[str, Any]]:
        d = self.chat.sanction(
            session,
            request["room"],
            request["user"],
            kind,
            request.get("duration"),
            request.get("reason", ""),
        )
        return d.addCallback(session.ack)

    def ban(self, session: Session, request: dict[str, Any]) -> Deferred[dict[str, Any]]:
        return self._sanction(session, request, "ban")

    def mute(self, session: Session, request: dict[str, Any]) -> Deferred[dict[str, Any]]:
        return self._sanction(session, request, "mute")

    def unban(self, session: Session, request: dict[str, Any]) -> Deferred[dict[str, Any]]:
        return self.chat.lift(session, request["room"], request["user"], "ban").addCallback(session.ack)

    def unmute(self, session: Session, request: dict[str, Any]) -> Deferred[dict[str, Any]]:
        return self.chat.lift(session, request["room"], request["user"], "mute").addCallback(session.ack)

    def op(self, session: Session, request: dict[str, Any]) -> Deferred[dict[str, Any]]:
        d = self.chat.set_role(session, request["room"], request["user"], "moderator")
        return d.addCallback(session.ack)

    def deop(self, session: Session, request: dict[str, Any]) -> Deferred[dict[str, Any]]:
        return self.chat.set_role(session, request["room"], request["user"], "member").addCallback(
            session.ack
        )

    def disable(self, session: Session, request: dict[str, Any]) -> Deferred[dict[str, Any]]:
        target = request["user"]

        def forget_resumed(answer: dict[str, Any]) -> dict[str, Any]:
            # A connection that resumed as the user, and has not logged in
            # yet, must not log in on the account it read before this.
            for other in self.sessions():
                other.forget_resumed(target)
            return answer

        return self.chat.disable_account(session, target, True).addCallback(forget_resumed)

    def enable(self, session: Session, request: dict[str, Any]) -> Deferred[dict[str, Any]]:
        return self.chat.disable_account(session, request["user"], False)
