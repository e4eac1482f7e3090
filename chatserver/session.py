"""One client's conversation once its channel is up, with no transport.

``ChatProtocol`` turns lines into records and hands the records' events to
its ``Session``; the session holds the authentication state, dispatches
each request to its handler (chatserver/handlers/, one explicit table),
keeps the answers in arrival order, applies the rate limits and abuse
strikes, and coalesces everything one reactor turn sends into one outbox.
What it needs of the connection is the small ``Link`` below: reads held or
released, a record written, a goodbye, a login noted.  So a session (and
every handler) can be driven in a unit test with ``task.Clock`` and a test
link, with no socket.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Protocol

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatserver import __version__
from chatserver.accounts import Account, Accounts, AuthError
from chatserver.chat import ANSWER_OVERHEAD, ChatError, ChatService
from chatserver.config import Settings
from chatserver.metrics import Metrics
from chatserver.ratelimit import Limits as RateLimits
from chatserver.ratelimit import network_prefix
from chatserver.storage.interface import DatabaseLost, DatabaseUnreachable, StoreClosed
from chatserver.tickets import Tickets
from chatserver.wire import channel, safetext
from chatserver.wire import e2e as e2e_wire
from chatserver.wire.errors import Refused
from chatserver.wire.validation import PRE_LOGIN, Limits, validate
from chatserver.workers import Busy

log = Logger(namespace="chatserver.protocol")
connections_log = Logger(namespace="chatserver.connections")

#: request type -> the rate-limit bucket it draws from
RATE_LIMITED = {
    "say": "messages",
    "dm": "messages",
    "to_device": "messages",
    "claim": "lookups",
    "keys": "lookups",
    "join": "joins",
    "create": "rooms",
    "login": "logins",
    "register": "logins",
}

#: The buckets an account's connections share (and every process, when
#: several serve the community: read at login, see ratelimit.py).
ACCOUNT_BUCKETS = ("messages", "joins", "rooms", "lookups")

#: Failures that are no fault of the request: the client may try again.
_TRY_AGAIN = {
    Busy: ("busy", "server busy; try again"),
    # Before StoreClosed, which they are kinds of: the first match wins.
    DatabaseLost: ("unavailable", "database unavailable; try again later"),
    DatabaseUnreachable: ("unavailable", "database unreachable; try again"),
    StoreClosed: ("unavailable", "server shutting down; try again"),
}

#: What a handler returns: the answer, a Deferred of it, or None (no answer).
Answer = dict[str, Any] | Deferred[dict[str, Any]] | None
Handler = Callable[["Session", dict[str, Any]], Answer]


class Link(Protocol):
    """What a session needs of its connection."""

    #: The client's address, for logs and per-address limits.
    peer: str
    #: Bytes of JSON one sealed record may carry.
    max_plaintext: int
    #: The secure channel (a resumption ticket is bound to it), if any.
    channel: Any

    def hold(self, reason: str) -> None:
        """Stop reading this client's input until ``release(reason)``."""
        ...

    def release(self, reason: str) -> None: ...

    def write_plaintext(self, plaintext: bytes) -> None:
        """Seal and send one DATA record."""
        ...

    def close(self, code: str, message: str) -> None:
        """Say a sealed goodbye (after what is queued) and close."""
        ...

    def logged_in(self) -> None:
        """The session has an account now (idle deadline, connection slot)."""
        ...


class Services(Protocol):
    """What sessions and handlers share (the server's ChatFactory; a test's
    may be another)."""

    settings: Settings
    limits: Limits
    rate_limits: RateLimits
    metrics: Metrics
    chat: ChatService
    accounts: Accounts
    tickets: Tickets | None
    clock: Any
    #: Runs "next turn" calls (callLater(0, ...)).
    reactor: Any
    #: Request type -> handler (chatserver.handlers.table).
    handlers: dict[str, Handler]
    #: Sessions with output queued this turn, and whether a flush is due.
    to_flush: list["Session"]
    flush_scheduled: bool
    #: Admins' sessions that get a stats frame every interval.
    stats_subscribers: dict["Session", None]
    #: The monitor child's samples, if it runs.
    monitoring: Any

    def schedule_flush(self) -> None: ...

    def stats_frame(self) -> dict[str, Any]: ...

    def sessions(self) -> list["Session"]: ...


def _ack(event: dict[str, Any]) -> dict[str, Any]:
    """The acknowledgement of a published event: where it is in history
    (and, for a ``joined`` in an encrypted room, that it is one: the
    client must know before its next message, whichever comes first of
    this answer and the event itself)."""
    ack = {"type": "ack", "stream": event["stream"], "id": event["id"], "ts": event["ts"]}
    if event.get("encrypted"):
        ack["encrypted"] = True
    return ack


class _Slot:
    """The place of one request's answer in the reply order."""

    __slots__ = ("ref", "answer", "ready")

    def __init__(self, ref: Any) -> None:
        self.ref = ref
        self.answer: dict[str, Any] | None = None
        self.ready = False


class Session:
    #: Requests a session may have unanswered (say: waiting for their
    #: commit; history: waiting for the database).  Beyond this its input
    #: is not read, so one client cannot queue thousands of database jobs
    #: in front of everyone else's messages.  Pipelining clients just wait.
    MAX_UNANSWERED = 32

    __slots__ = (
        "factory",
        "link",
        "user",
        "device",
        "device_challenge",
        "account",
        "role",
        "token",
        "resumed_as",
        "closed",
        "_held",
        "_outbox",
        "_outbox_bytes",
        "_max_plaintext",
        "_replies",
        "_strikes",
        "_inbox",
        "_waiting",
        "_unanswered",
    )

    def __init__(self, factory: Services, link: Link) -> None:
        self.factory = factory
        self.link = link
        self.user: str | None = None
        #: The device this connection declared with ``keys``, if any.
        self.device: str | None = None
        #: What a device declared on this connection signs (the welcome's
        #: device_challenge): holding its key, not knowing its id, binds it.
        self.device_challenge = ""
        self.account: Account | None = None
        self.role = "user"
        self.token: str | None = None
        #: (token hash, account record, when) read when the connection
        #: resumed: its first token login needs no second database trip.
        self.resumed_as: tuple[str, Any, float] | None = None
        #: Set by the connection when it ends: nothing more is sent.
        self.closed = False
        #: Broadcasts that came between login and welcome (welcome first).
        self._held: list[bytes] | None = []
        #: Encoded events waiting for the end of the reactor turn, and the
        #: size of the array they will make ("[" plus each event and comma).
        self._outbox: list[bytes] = []
        self._outbox_bytes = 1
        self._max_plaintext = link.max_plaintext
        # Lists, not deques: they stay short (at most MAX_UNANSWERED slots,
        # abuse_strikes strikes, one record's requests), and an empty deque
        # costs 600 bytes against a list's 56, times every idle connection.
        self._replies: list[_Slot] = []
        self._strikes: list[float] = []
        self._inbox: list[dict[str, Any]] = []
        self._waiting = False
        self._unanswered = False

    @property
    def peer(self) -> str:
        return self.link.peer

    # --- input -----------------------------------------------------------

    def receive(self, events: list[dict[str, Any]]) -> None:
        """The requests of one record, handled in order."""
        self._inbox.extend(events)
        self._drain()

    def _drain(self) -> None:
        """Handle queued events in order, stopping at one that must wait."""
        inbox = self._inbox
        while inbox and not self._waiting and not self.closed:
            if len(self._replies) >= self.MAX_UNANSWERED:
                self._unanswered = True
                self.link.hold("unanswered")
                return
            self._dispatch(inbox.pop(0))

    def wait_for(self, d: Deferred[Any]) -> None:
        """Hold all further input until ``d`` has fired (keeps order)."""
        self._waiting = True
        self.link.hold("waiting")

        def done(result: Any) -> Any:
            self._waiting = False
            if not self.closed:
                self._drain()
                if not self._waiting:
                    self.link.release("waiting")
            return result

        d.addBoth(done)

    # --- requests --------------------------------------------------------
    #
    # Every request gets a slot in ``_replies`` when it arrives; its answer
    # (or error) fills the slot, and answers leave strictly in arrival
    # order, although a later request (an error, a ping) may be done before
    # an earlier one (a message waiting for its commit).

    def _dispatch(self, event: dict[str, Any]) -> None:
        ref = event.get("ref")
        slot = _Slot(ref if isinstance(ref, (str, int)) and not isinstance(ref, bool) else None)
        self._replies.append(slot)
        kind = str(event.get("type"))[:40]
        try:
            request = validate(event, self.factory.limits)
            slot.ref = request.get("ref")
            if self.account is None and request["type"] not in PRE_LOGIN:
                raise ChatError("not_authenticated", "log in first")
            self._rate_limit(request["type"], request)
            # validate() admits only known types, and the handler table
            # has one entry for each (checked where it is built).
            result = self.factory.handlers[request["type"]](self, request)
        except Refused as e:
            self._fill(slot, e.event(kind))
            return
        except Exception:
            # A bug must cost this one request, not the connection's order
            # of answers (an unfilled slot would hold back all later ones).
            self._fill(slot, self._failure_event(Failure(), kind))
            return
        if isinstance(result, Deferred):
            result.addCallbacks(
                lambda answer: self._fill(slot, answer),
                lambda failure: self._fill(slot, self._failure_event(failure, kind)),
            )
        else:
            self._fill(slot, result)

    def _fill(self, slot: _Slot, answer: dict[str, Any] | None) -> None:
        slot.answer = answer
        slot.ready = True
        replies = self._replies
        while replies and replies[0].ready:
            done = replies.pop(0)
            if done.answer is not None:
                self._count_answer(done.answer)
                if done.ref is not None:
                    done.answer["ref"] = done.ref
                self.send(done.answer)
                if done.answer["type"] == "welcome":
                    self._release_held()
                    # In the same turn: the ticket leaves in the welcome's
                    # record (one seal, one write), not in a record of its own.
                    self._after_welcome()
                elif done.answer["type"] == "logged_out":
                    self.factory.reactor.callLater(0, self.close, "logout", "logged out")
        if self._unanswered and len(replies) < self.MAX_UNANSWERED:
            self._unanswered = False
            self._drain()  # events left over from a record that held several
            if not self._unanswered:
                self.link.release("unanswered")

    def _count_answer(self, answer: dict[str, Any]) -> None:
        metrics = self.factory.metrics
        metrics.count("requests")
        kind = answer["type"]
        if kind == "welcome":
            metrics.count("logins")
        elif kind == "error":
            code = answer.get("code")
            if code == "auth_failed":
                metrics.count("failed_logins")
            elif code == "rate_limited":
                metrics.count("rate_limited")

    def _failure_event(self, failure: Failure, kind: str) -> dict[str, Any]:
        if isinstance(failure.value, Refused):
            return failure.value.event(kind)
        for error, (code, message) in _TRY_AGAIN.items():
            if failure.check(error):
                # The storage may know better when to come back (a
                # database server restarting); one second otherwise.
                wait = getattr(failure.value, "retry_after", 1)
                return {
                    "type": "error",
                    "code": code,
                    "message": message,
                    "request": kind,
                    "retry_after": wait,
                }
        log.failure("{kind} failed for {peer}", failure, kind=safetext.log_text(kind), peer=self.peer)
        return {"type": "error", "code": "internal_error", "message": "internal error", "request": kind}

    def _rate_limit(self, kind: str, request: dict[str, Any]) -> None:
        action = RATE_LIMITED.get(kind)
        limits = self.factory.rate_limits
        wait = 0.0
        if action is not None:
            wait = limits.check(action, self)
            if not wait and action != "logins" and self.user is not None:
                # All of the account's connections together, so reconnecting
                # does not refill a bucket.  (Logins are per connection, and
                # failed ones also per account and address: accounts.py.)
                wait = limits.check(action, ("user", self.user))
        if not wait and kind == "register" and self.account is None:
            # One host, or one network, may not make accounts by the
            # thousand (and fill the default room with them).
            action = "registrations"
            wait = limits.check(action, ("address", self.peer)) or limits.check(
                "registrations_prefix", ("prefix", network_prefix(self.peer))
            )
        if not wait and self.user is not None and self._looks_up_a_user(kind, request):
            # Whether a name exists is what an enumeration wants to learn:
            # per account and per address, whatever the connection.
            action = "lookups"
            wait = limits.check(action, ("user", self.user)) or limits.check(action, ("address", self.peer))
        if wait:
            now = self.factory.clock.seconds()
            strikes = self._strikes
            strikes.append(now)
            while strikes and strikes[0] < now - 60:
                strikes.pop(0)
            if len(strikes) >= self.factory.settings.abuse_strikes:
                log.warn("{peer} user={user}: flooding; disconnecting", peer=self.peer, user=self.user or "-")
                self.close("flooding", "too many requests over the rate limit")
            raise AuthError("rate_limited", f"too many {action}; slow down", retry_after=wait)

    def _looks_up_a_user(self, kind: str, request: dict[str, Any]) -> bool:
        """Whether the request asks the database whether someone exists."""
        if kind == "invite":
            return True
        if kind == "dm":
            return not self.factory.chat.knows_peer(self.user or "", request["to"])
        return False

    def answer_budget(self) -> int:
        """Bytes of JSON a page may fill: the answer, alone in a record,
        must fit in one line (the limit every client is written to)."""
        return self._max_plaintext - ANSWER_OVERHEAD

    # --- authentication --------------------------------------------------

    def authenticate(self, d: Deferred[Account], token: str | None = None) -> Deferred[dict[str, Any]]:
        """The welcome (or the refusal) once ``d`` has the account."""
        welcome: Deferred[dict[str, Any]] = d.addCallback(self._authenticated, token)
        self.wait_for(welcome)  # nothing else is read until this is settled
        return welcome

    @inlineCallbacks
    def _authenticated(self, account: Account, token: str | None) -> Any:
        if self.closed:
            return None
        factory = self.factory
        if token is None:
            token = yield factory.accounts.issue_token(account.name)
            if self.closed:
                return None  # gone meanwhile (deadline, peer): no ghost login
        self.token = token
        self.account = account
        self.user = account.name
        self.role = account.role
        self.link.logged_in()
        connections_log.info("{peer} logged in as {user}", peer=self.peer, user=account.name)
        # What the account took on other processes counts here too (read
        # while connect() waits for its own round trips).
        limits = factory.rate_limits.load([(bucket, ("user", account.name)) for bucket in ACCOUNT_BUCKETS])
        snapshot = yield factory.chat.connect(self)
        if not limits.called:
            yield limits
        if self.closed:
            # Lost while connect() waited: the connection's disconnect ran
            # before connect() finished putting us in our rooms.
            factory.chat.disconnect(self)
            return None
        self.device_challenge = e2e_wire.b64encode(os.urandom(32))
        # A resumption ticket and offline direct messages follow the
        # welcome: _fill sends them right after it (see _after_welcome).
        return {
            "type": "welcome",
            "user": account.name,
            "role": account.role,
            "server": f"chatserver/{__version__}",
            "rooms": snapshot["rooms"],
            "streams": snapshot["streams"],
            "encrypted_rooms": snapshot["encrypted_rooms"],
            "device_challenge": self.device_challenge,
            "token": token,
            # Clients keep the connection alive within this.
            "idle_timeout": factory.settings.idle_timeout,
        }

    def _after_welcome(self) -> None:
        if self.closed:
            return
        tickets = self.factory.tickets
        secure = self.link.channel
        if tickets is not None and secure is not None and self.token is not None:
            ticket = tickets.issue(secure, self.token)
            if ticket is not None:
                self.send(ticket)
        self.factory.chat.push_undelivered(self).addErrback(self._push_failed)

    def _push_failed(self, failure: Failure) -> None:
        if failure.check(StoreClosed):
            # Shutting down: what was not pushed stays undelivered (the
            # marks only follow deliveries) and comes at the next login.
            return
        log.failure("offline delivery failed for {user}", failure, user=self.user)

    def forget_resumed(self, user: str) -> None:
        """``user`` was disabled: a resumption read before must not log in."""
        if self.resumed_as is not None and self.resumed_as[1].name == user:
            self.resumed_as = None

    # --- output ----------------------------------------------------------

    def send(self, event: dict[str, Any]) -> None:
        """An event for this session only (an answer, a notice)."""
        self._queue(channel.encode_event(event))

    def _release_held(self) -> None:
        held, self._held = self._held, None
        for encoded in held or ():
            self.deliver(encoded)

    def deliver(self, encoded: bytes) -> None:
        """A broadcast event, encoded once for all its recipients."""
        if self._held is not None:
            # Logged in but not yet welcomed: the welcome comes first.
            self._held.append(encoded)
            return
        self._queue(encoded)

    def _queue(self, encoded: bytes) -> None:
        """Coalesced sealing: everything sent to a session in one reactor
        turn leaves as one DATA record (see ChatFactory.flush), so under
        load the per-record cost (seal, base64, write) is paid once per
        turn instead of once per event.  Order is kept: answers and
        notifications share the queue.  (This runs once per delivery:
        keep it lean.)"""
        outbox = self._outbox
        if outbox:
            size = self._outbox_bytes + len(encoded) + 1
            if size <= self._max_plaintext:
                outbox.append(encoded)
                self._outbox_bytes = size
                return
            self.flush()  # a record is full: seal it now, start the next
        if self.closed:
            return
        factory = self.factory
        factory.to_flush.append(self)
        if not factory.flush_scheduled:
            factory.schedule_flush()
        outbox.append(encoded)
        self._outbox_bytes = len(encoded) + 2

    def flush(self) -> None:
        """Hand what is queued to the connection as one record."""
        outbox = self._outbox
        if not outbox:
            return
        plaintext = b"[" + b",".join(outbox) + b"]"
        outbox.clear()
        self._outbox_bytes = 1
        if not self.closed:
            self.link.write_plaintext(plaintext)

    def close(self, code: str, message: str) -> None:
        """Say a sealed goodbye and close (chat's Member interface)."""
        self.link.close(code, message)

    # --- for the handlers ------------------------------------------------

    ack = staticmethod(_ack)
