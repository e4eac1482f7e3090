"""Direct messages between two users."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from chatserver.chat import ChatService, content, sent_once
from chatserver.session import Handler, Session


class DirectHandlers:
    def __init__(self, chat: ChatService) -> None:
        self.chat = chat
        self.requests: dict[str, Handler] = {"dm": self.dm}

    def dm(self, session: Session, request: dict[str, Any]) -> Deferred[dict[str, Any]]:
        body, e2e = content(request)
        txn_id, resend = sent_once(request)
        return self.chat.direct(session, request["to"], body, txn_id, resend, e2e).addCallback(session.ack)
