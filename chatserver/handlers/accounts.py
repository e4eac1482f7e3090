"""Logging in, registering, logging out, and ping."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from chatserver.accounts import Accounts
from chatserver.chat import ChatError, ChatService
from chatserver.session import Handler, Session
from chatserver.wire.validation import RequestError


class AccountHandlers:
    def __init__(self, accounts: Accounts, chat: ChatService | None = None) -> None:
        self.accounts = accounts
        self.chat = chat
        self.requests: dict[str, Handler] = {
            "ping": self.ping,
            "login": self.login,
            "register": self.register,
            "logout": self.logout,
        }

    def ping(self, session: Session, request: dict[str, Any]) -> dict[str, Any]:
        return {"type": "pong"}

    def login(self, session: Session, request: dict[str, Any]) -> Deferred[dict[str, Any]]:
        if session.account is not None:
            # Checked before any account work: a second login must not
            # count as a failure or cost a password hash.
            raise ChatError("already_authenticated", "already logged in")
        if ("password" in request) == ("token" in request):
            raise RequestError("missing_field", "login needs a password or a token (not both)", "password")
        if "token" in request:
            known, session.resumed_as = session.resumed_as, None  # for the first login only
            return session.authenticate(
                self.accounts.login_token(request["user"], request["token"], session.peer, known),
                token=request["token"],
            )
        return session.authenticate(self.accounts.login(request["user"], request["password"], session.peer))

    def register(self, session: Session, request: dict[str, Any]) -> Deferred[dict[str, Any]]:
        if session.account is not None:
            raise ChatError("already_authenticated", "already logged in")
        return session.authenticate(
            self.accounts.register(request["user"], request["password"], session.peer, request.get("invite"))
        )

    def logout(self, session: Session, request: dict[str, Any]) -> Deferred[dict[str, Any]]:
        # The CLOSE follows the answer, which follows every earlier answer
        # (see Session._fill): nothing asked before the logout goes unanswered.
        assert session.token is not None  # set with the account, before any request after login
        d: Deferred[Any] = self.accounts.revoke_token(session.token)
        if session.device is not None and self.chat is not None:
            # A device that logs out is gone: its keys go with it, and its
            # id cannot come back (docs/protocol.rst, "Devices").
            d.addCallback(lambda _: self._remove_device(session))
        return d.addCallback(lambda _: {"type": "logged_out"})

    def _remove_device(self, session: Session) -> Deferred[Any]:
        chat = self.chat
        assert chat is not None and session.user is not None and session.device is not None
        user, device = session.user, session.device
        audit = chat.audit_of(user, "device_remove", None, user, f"{device} (logout)")
        d = chat.devices.remove(user, device, audit.row())
        return d.addCallback(audit.logged).addCallback(
            lambda _: chat.device_removed(user, device, keep=session)
        )
