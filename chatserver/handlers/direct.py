"""Direct messages between two users."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from chatserver.chat import ChatService, sent_once
from chatserver.session import Handler, Session


class DirectHandlers:
    def __init__(self, chat: ChatService) -> None:
        self.chat = chat
        self.requests: dict[str, Handler] = {"dm": self.dm}

    def dm(self, session: Session, request: dict[str, Any]) -> Deferred[dict[str, Any]]:
        txn_id, resend = sent_once(request)
        return self.chat.direct(session, request["to"], request["body"], txn_id, resend).addCallback(
            session.ack
        )
