"""Rooms: talking, joining and leaving, creating, listing, topics,
invitations, and the history of a stream."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from chatserver.chat import LIST_PAGE_MAX, ChatService, content, sent_once
from chatserver.session import Handler, Session


class RoomHandlers:
    def __init__(self, chat: ChatService) -> None:
        self.chat = chat
        self.requests: dict[str, Handler] = {
            "say": self.say,
            "who": self.who,
            "create": self.create,
            "join": self.join,
            "part": self.part,
            "rooms": self.rooms,
            "topic": self.topic,
            "invite": self.invite,
            "history": self.history,
        }

    def say(self, session: Session, request: dict[str, Any]) -> Deferred[dict[str, Any]]:
        body, e2e = content(request)
        txn_id, resend = sent_once(request)
        return self.chat.say(session, request["room"], body, txn_id, resend, e2e).addCallback(session.ack)

    def who(self, session: Session, request: dict[str, Any]) -> dict[str, Any]:
        members, more = self.chat.who(
            session,
            request["room"],
            request.get("after"),
            request.get("limit", LIST_PAGE_MAX),
            session.answer_budget(),
        )
        return {
            "type": "who",
            "room": request["room"],
            "members": members,
            "users": [m["user"] for m in members],
            "more": more,
        }

    def create(self, session: Session, request: dict[str, Any]) -> Deferred[dict[str, Any]]:
        d = self.chat.create_room(
            session,
            request["room"],
            request.get("kind", "public"),
            request.get("topic", ""),
            request.get("encrypted", False),
        )
        return d.addCallback(session.ack)

    def join(self, session: Session, request: dict[str, Any]) -> Deferred[dict[str, Any]]:
        return self.chat.join(session, request["room"]).addCallback(session.ack)

    def part(self, session: Session, request: dict[str, Any]) -> Deferred[dict[str, Any]]:
        return self.chat.part(session, request["room"]).addCallback(session.ack)

    def rooms(self, session: Session, request: dict[str, Any]) -> dict[str, Any]:
        rooms, more = self.chat.list_rooms(
            session, request.get("after"), request.get("limit", LIST_PAGE_MAX), session.answer_budget()
        )
        return {"type": "rooms", "rooms": rooms, "more": more}

    def topic(self, session: Session, request: dict[str, Any]) -> Deferred[dict[str, Any]]:
        return self.chat.set_topic(session, request["room"], request["topic"]).addCallback(session.ack)

    def invite(self, session: Session, request: dict[str, Any]) -> Deferred[dict[str, Any]]:
        return self.chat.invite(session, request["room"], request["user"])

    def history(self, session: Session, request: dict[str, Any]) -> Deferred[dict[str, Any]]:
        return self.chat.history(
            session,
            request["stream"],
            request.get("after"),
            request.get("before"),
            request.get("limit", 50),
            session.answer_budget(),
        )
