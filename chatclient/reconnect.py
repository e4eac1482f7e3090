"""A session that survives disconnects: reconnect, log in again, catch up.

``ReconnectingClient`` keeps one logical session over many connections.
Twisted's ``ClientService`` reconnects with exponential backoff and jitter.
Each new connection runs the handshake, logs in (with the session token
from the previous welcome, so the slow password hash runs once), and is
back in its rooms, because the server keeps memberships.  Then it *catches
up*: for every stream the client has seen before, it fetches the history
after the last id it saw, page by page, up to the id the welcome reports.
Live events that arrive meanwhile are held back and released after the
history.  Every event is handed to the listeners exactly once and
in id order per stream, whatever the timing of the disconnects.
"""

from __future__ import annotations

import random
import secrets
import sys
from typing import TYPE_CHECKING, Any, Callable

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chatclient.session import (
    TLS_CERTIFICATE,
    ChatSession,
    ClientProtocol,
    ConnectionClosed,
    Proven,
    ServerError,
    Verifier,
)
from chatserver.wire import channel
from chatserver.wire.safetext import log_text

if TYPE_CHECKING:
    from chatclient.e2e.client import EndToEnd

log = Logger(namespace="chatclient.reconnect")

HISTORY_PAGE = 200
#: Requests that publish a message: sent exactly once (``send_once``).
SENT_ONCE = frozenset({"say", "dm"})
#: Sends of one message before the client gives up on it (each after a
#: lost connection or an ``unavailable``; a stopped client gives up at once).
RESEND_ATTEMPTS = 20


class ReconnectingClient:
    """Listeners get events; state listeners get ``(state, detail)`` with
    state one of ``connecting``, ``online``, ``reconnecting``, ``stopped``,
    ``failed`` (login refused, or the server's key or TLS certificate:
    no more retries)."""

    #: Seconds a new connection has to get from TCP to online.
    setup_timeout = 60.0
    #: Server answers to a login that retrying cannot fix.
    FATAL = frozenset(
        {
            "auth_failed",
            "account_disabled",
            "bad_username",
            "bad_password",
            "registration_closed",
            "invite_required",
            "invite_invalid",
        }
    )

    def __init__(
        self,
        reactor: Any,
        endpoint: Any,
        verify: Verifier,
        user: str,
        password: str | None = None,
        register: bool = False,
        token: str | None = None,
        invite: str | None = None,
        initial_delay: float = 0.5,
        max_delay: float = 30.0,
        connect_attempts: int | None = None,
        proven: Proven | None = None,
    ) -> None:
        """``connect_attempts``: give up (state ``failed``) after this many
        failed attempts if none has succeeded yet; None: never give up.
        Once online, the client reconnects for as long as it runs.
        ``invite``: the invite code to register with (a server in invite
        mode asks for one).
        ``verify`` and ``proven``: see ``chatclient.session``."""
        self._proven = proven
        self._reactor = reactor
        self._connect_attempts = connect_attempts
        #: Failed connection attempts and session setups since last online:
        #: the backoff, and the give-up count at start-up.
        self._failed_attempts = 0
        #: Why the client can never succeed (a refused server key).
        self._fatal: Failure | None = None
        self.user = user
        self._password = password
        self._register = register
        self._invite = invite
        self.token = token
        #: The resumption ticket for the next connection (single-use: each
        #: connection takes it, and its login brings the next one).
        self.ticket: channel.Ticket | None = None
        self.role: str | None = None
        self.last_ids: dict[str, int] = {}
        #: The rooms we are in, as of the last welcome and our own events.
        self.rooms: set[str] = set()
        self.session: ChatSession | None = None
        self._stopping: Deferred[None] | None = None
        #: End-to-end encryption for this device (``chatclient.e2e``), if on.
        self.e2e: EndToEnd | None = None
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._state_listeners: list[Callable[[str, Any], None]] = []
        self._online_waiters: list[Deferred[ChatSession]] = []
        self.connections = 0
        self.state = "stopped"
        self.welcome: dict[str, Any] | None = None
        #: When the next connection attempt is due (reactor time), while
        #: waiting to reconnect: what a countdown shows.
        self.retry_at: float | None = None
        backoff = backoffPolicy(initialDelay=initial_delay, maxDelay=max_delay, jitter=random.random)
        # Why no ``prepareConnection``: ClientService counts a connection as
        # made when TCP is up, and if the connection drops while a prepare
        # step is still running (the server restarting mid-handshake, the
        # usual case here) its state machine has no transition for that and
        # logs an error.  So setup runs after "connected"; a setup that fails
        # closes the connection (an ordinary disconnect for ClientService),
        # and the retry policy below keeps backing off across such failures,
        # since ClientService's own attempt counter restarts at every TCP
        # connection.
        self._service = ClientService(
            _WatchedEndpoint(endpoint, self._attempt_failed),
            Factory.forProtocol(lambda: self._new_protocol(self._checked(verify))),
            retryPolicy=lambda attempt: self._retry_delay(backoff(max(attempt, self._failed_attempts))),
            clock=reactor,
        )

    # --- listeners ------------------------------------------------------------

    def add_listener(self, listener: Callable[[dict[str, Any]], None]) -> None:
        self._listeners.append(listener)

    def add_state_listener(self, listener: Callable[[str, Any], None]) -> None:
        self._state_listeners.append(listener)

    def _retry_delay(self, delay: float) -> float:
        self.retry_at = self._reactor.seconds() + delay
        return delay

    def note_seen(self, stream: str, last_id: int) -> None:
        """The front end has shown ``stream`` up to ``last_id`` (a history
        page it loaded itself): catch up from there after a reconnect, and
        drop live events up to it as duplicates."""
        if last_id > self.last_ids.get(stream, 0):
            self.last_ids[stream] = last_id

    def _set_state(self, state: str, detail: Any = None) -> None:
        if state == self.state and detail is None:
            return
        self.state = state
        for listener in list(self._state_listeners):
            try:
                listener(state, detail)
            except Exception:
                log.failure("state listener failed")

    def _emit(self, event: dict[str, Any]) -> None:
        """Deliver an event once: stream events only if newer than seen."""
        stream = event.get("stream")
        event_id = event.get("id")
        if isinstance(stream, str) and isinstance(event_id, int):
            if event_id <= self.last_ids.get(stream, 0):
                return  # seen already (catch-up overlap, offline push)
            self.last_ids[stream] = event_id
        if self.e2e is not None:
            shown = self.e2e.incoming(event)
            if shown is None:
                return  # its own business (a room key ...)
            event = shown
        self._track_rooms(event)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.failure("event listener failed")

    def _track_rooms(self, event: dict[str, Any]) -> None:
        """Our own joins, parts, kicks and bans change the rooms to rejoin."""
        kind = event.get("type")
        room = event.get("room")
        if not isinstance(room, str):
            return
        if kind == "joined" and event.get("user") == self.user:
            self.rooms.add(room)
        elif (kind in ("left", "kicked", "banned") and event.get("user") == self.user) or kind == "deleted":
            self.rooms.discard(room)
            # Out of it: no more catch-up of its stream after a reconnect.
            self.last_ids.pop(str(event.get("stream")), None)

    # --- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        self._stopping = None
        self._set_state("connecting")
        self._service.startService()

    def stop(self) -> Deferred[None]:
        if self._stopping is not None:
            return self._stopping  # stopped before (again at a test's cleanup is fine)
        if self.e2e is not None:
            self.e2e.stop()
        session = self.session
        if session is not None and not session.closed.called:
            session.close()
        d = self._stopping = self._service.stopService()
        self._set_state("stopped")
        for waiter in self._online_waiters:
            waiter.errback(ConnectionClosed(True, "stopped", "client stopped"))
        self._online_waiters = []
        return d

    def when_online(self) -> Deferred[ChatSession]:
        if self.state == "online" and self.session is not None:
            return defer.succeed(self.session)
        if self.state in ("stopped", "failed"):
            return defer.fail(ConnectionClosed(True, self.state, f"client {self.state}"))
        d: Deferred[ChatSession] = Deferred()
        self._online_waiters.append(d)
        return d

    def _checked(self, verify: Verifier) -> Verifier:
        """The verifier, noting a refusal: retrying cannot change the
        server's key, so a refused key ends the client."""

        def checked(fingerprint: str) -> Deferred[bool]:
            d = defer.maybeDeferred(verify, fingerprint)

            def accepted(ok: bool) -> bool:
                if not ok:
                    self._fatal = Failure(ConnectionClosed(False, "untrusted", "server key not accepted"))
                return ok

            def refused(failure: Failure) -> Failure:
                self._fatal = failure
                return failure

            return d.addCallbacks(accepted, refused)

        return checked

    def _attempt_failed(self, failure: Failure) -> None:
        """A connection attempt or a session setup failed."""
        if self.state in ("stopped", "failed"):
            return
        self._failed_attempts += 1
        if self._fatal is not None:
            self._reactor.callLater(0, self._give_up, self._fatal)
        elif (
            self.connections == 0
            and self._connect_attempts is not None
            and self._failed_attempts >= self._connect_attempts
        ):
            self._reactor.callLater(0, self._give_up, failure)

    def _give_up(self, failure: Failure) -> None:
        """Stop for good; whoever waits to be online gets ``failure``."""
        if self.state in ("stopped", "failed"):
            return
        self._set_state("failed", failure.value)
        self._service.stopService()
        waiters, self._online_waiters = self._online_waiters, []
        for waiter in waiters:
            waiter.errback(failure)

    def _new_protocol(self, verify: Verifier) -> ClientProtocol:
        ticket, self.ticket = self.ticket, None
        protocol = ClientProtocol(
            verify, proven=self._proven, ticket=ticket, on_ticket=self._got_ticket, clock=self._reactor
        )
        setup = self._setup(protocol)
        setup.addTimeout(self.setup_timeout, self._reactor)
        setup.addErrback(self._setup_failed, protocol)
        return protocol

    def _got_ticket(self, ticket: channel.Ticket) -> None:
        self.ticket = ticket

    def _setup_failed(self, failure: Failure, protocol: ClientProtocol) -> None:
        error = failure.value
        if (isinstance(error, ServerError) and error.code in self.FATAL) or (
            # A refused certificate is refused again at every attempt: say
            # so once (an unknown CA, another host's name) rather than retry
            # in silence, as for a refused server key.
            isinstance(error, ConnectionClosed) and error.code == TLS_CERTIFICATE
        ):
            self._give_up(failure)
        else:
            if not failure.check(ConnectionClosed) and self._fatal is None:
                log.info("session setup failed: {why}", why=log_text(failure.getErrorMessage()))
            self._attempt_failed(failure)
        if protocol.session is not None:
            protocol.session.close()
        elif protocol.transport is not None:
            protocol.transport.abortConnection()

    @inlineCallbacks
    def _setup(self, protocol: ClientProtocol) -> Any:
        """Handshake, login, rejoin, catch up: every new connection."""
        self._set_state("connecting")
        yield protocol.secure
        session = ChatSession(protocol, clock=self._reactor)
        held: dict[str, list[dict[str, Any]]] = {}
        catching_up: set[str] = set()

        def live(event: dict[str, Any]) -> None:
            stream = event.get("stream")
            if stream in catching_up:
                held.setdefault(stream, []).append(event)
            else:
                self._emit(event)

        session.add_listener(live)
        welcome = yield self._login(session)
        self.welcome = welcome
        self.role = welcome.get("role")
        self.token = welcome.get("token", self.token)
        streams: dict[str, int] = dict(welcome.get("streams", {}))
        if self.e2e is not None:
            # This device first (its inbox's room keys come next), then
            # the catch-up, whose messages may need them.
            yield self.e2e.setup(session, welcome)
        # The server keeps memberships, so the welcome's rooms are the rooms
        # we are back in.  A room we knew that it no longer lists (kicked or
        # banned while away) gets one catch-up attempt below, so the event
        # that removed us is seen; if the room refuses us that, so be it.
        gone = {s for s in self.last_ids if s.startswith("room:") and s not in streams}
        behind = {s: last for s, last in streams.items() if s in self.last_ids and self.last_ids[s] < last}
        behind.update((s, sys.maxsize) for s in gone)
        catching_up.update(behind)
        for stream, last in sorted(behind.items()):
            # (A stream we turn out to have left drops out of last_ids.)
            while stream in self.last_ids and self.last_ids[stream] < last:
                try:
                    page = yield session.request(
                        {
                            "type": "history",
                            "stream": stream,
                            "after": self.last_ids[stream],
                            "limit": HISTORY_PAGE,
                        }
                    )
                except ServerError as e:
                    if stream not in gone:
                        raise
                    log.info(
                        "no catch-up for {stream}: {code}", stream=log_text(stream), code=log_text(e.code)
                    )
                    break
                for event in page["events"]:
                    if stream not in self.last_ids:
                        break  # the event that removed us: the rest is not ours
                    self._emit(event)
                if not page["more"] or not page["events"]:
                    break
            catching_up.discard(stream)
            for event in sorted(held.pop(stream, []), key=lambda e: e["id"]):
                self._emit(event)
            if stream in gone:
                # Seen how we left it (the event that removed us); from now
                # on it is not ours to follow.
                self.last_ids.pop(stream, None)
        self.rooms = set(welcome.get("rooms", []))
        self.session = session
        self.connections += 1
        self._failed_attempts = 0
        self.retry_at = None
        session.closed.addCallback(self._lost)
        self._set_state("online", welcome)
        waiters, self._online_waiters = self._online_waiters, []
        for waiter in waiters:
            waiter.callback(session)

    def _login(self, session: ChatSession) -> Deferred[dict[str, Any]]:
        if self.token is not None:
            d = session.request({"type": "login", "user": self.user, "token": self.token})

            def fall_back(failure: Any) -> Any:
                # An expired or revoked token: the password, if we have it.
                if failure.check(ServerError) and failure.value.code == "auth_failed" and self._password:
                    self.token = None
                    return session.login(self.user, self._password)
                return failure

            return d.addCallback(session._logged_in).addErrback(fall_back)
        password = self._password
        assert password is not None, "no token and no password"
        if self._register:
            d = session.register(self.user, password, self._invite)

            def registered_before(failure: Any) -> Any:
                if failure.check(ServerError) and failure.value.code == "username_taken":
                    return session.login(self.user, password)
                return failure

            def registered(welcome: Any) -> Any:
                self._register = False  # the account exists now: log in next time
                return welcome

            d.addErrback(registered_before)
            d.addCallback(registered)
            return d
        return session.login(self.user, password)

    def _lost(self, info: ConnectionClosed) -> ConnectionClosed:
        self.session = None
        if self.state != "stopped" and self.state != "failed":
            self._set_state("reconnecting", info)
        return info

    # --- requests -------------------------------------------------------------------

    def request(self, event: dict[str, Any]) -> Deferred[dict[str, Any]]:
        """Send when online (waiting for the connection if need be).  A
        message (``say``, ``dm``) is sent exactly once: see ``send_once``;
        with a device (``e2e``), a direct message, and a message to an
        encrypted room, is encrypted first."""
        kind = event.get("type")
        e2e = self.e2e
        if e2e is not None and isinstance(event.get("body"), str):
            if kind == "dm":
                sent: Deferred[dict[str, Any]] = e2e.send_dm(event["to"], event["body"])
                return sent
            if kind == "say" and e2e.is_encrypted(str(event.get("room"))):
                said: Deferred[dict[str, Any]] = e2e.send_say(event["room"], event["body"])
                return said
        if kind in SENT_ONCE:
            return self.send_once(event)
        if kind == "logout" and e2e is not None:
            # The server removes the device with the session: so does this side.
            device = e2e

            def forgotten(answer: dict[str, Any]) -> dict[str, Any]:
                device.forget()
                return answer

            return (
                self.when_online().addCallback(lambda session: session.request(event)).addCallback(forgotten)
            )
        d = self.when_online().addCallback(lambda session: session.request(event))
        if kind == "history" and e2e is not None:
            d.addCallback(self._decrypted_page)
        elif kind in ("create", "join") and e2e is not None:
            room = str(event.get("room"))
            device = e2e

            def entered(answer: dict[str, Any]) -> dict[str, Any]:
                # Known before the next message, whichever comes first of
                # this answer and the room's joined event.
                if answer.get("encrypted") or (kind == "create" and event.get("encrypted")):
                    device.mark_encrypted(room)
                return answer

            d.addCallback(entered)
        return d

    def _decrypted_page(self, page: dict[str, Any]) -> dict[str, Any]:
        e2e = self.e2e
        assert e2e is not None
        events = []
        for event in page.get("events", []):
            shown = e2e.incoming(event) if isinstance(event, dict) else event
            if shown is not None:
                events.append(shown)
        return dict(page, events=events)

    def send_once(self, event: dict[str, Any]) -> Deferred[dict[str, Any]]:
        """Send a message with an id of its own (``txn_id``), and if the
        connection is lost before its ``ack`` (or the server answers
        ``unavailable``), send it again with ``resend`` once connected
        again: the server stores it once and answers with the first
        event's ``ack`` (docs/protocol.rst, "Sending exactly once").
        Fails only with the server's refusal, or once the client stops or
        ``RESEND_ATTEMPTS`` sends went unanswered."""
        first = dict(event)
        first.setdefault("txn_id", secrets.token_urlsafe(16))
        answer: Deferred[dict[str, Any]] = Deferred()

        def send(attempt: int) -> None:
            request = first if attempt == 0 else dict(first, resend=True)
            d = self.when_online().addCallback(lambda session: session.request(request))
            d.addCallbacks(answer.callback, lambda failure: again(failure, attempt))

        def again(failure: Failure, attempt: int) -> None:
            if self.state in ("stopped", "failed") or attempt + 1 >= RESEND_ATTEMPTS:
                answer.errback(failure)
            elif failure.check(ConnectionClosed):
                send(attempt + 1)  # when_online waits for the next connection
            elif isinstance(failure.value, ServerError) and failure.value.code == "unavailable":
                wait = float(failure.value.event.get("retry_after", 1))
                self._reactor.callLater(min(wait, 30.0), send, attempt + 1)
            else:
                answer.errback(failure)

        send(0)
        return answer

    def say(self, room: str, body: str) -> Deferred[dict[str, Any]]:
        return self.request({"type": "say", "room": room, "body": body})

    def dm(self, to: str, body: str) -> Deferred[dict[str, Any]]:
        """End to end encrypted if this client has a device (``e2e``)."""
        return self.request({"type": "dm", "to": to, "body": body})


@implementer(IStreamClientEndpoint)
class _WatchedEndpoint:
    """An endpoint that reports failed connection attempts (ClientService
    retries them without telling anyone)."""

    def __init__(self, endpoint: Any, on_failure: Callable[[Failure], None]) -> None:
        self._endpoint = endpoint
        self._on_failure = on_failure

    def connect(self, factory: Any) -> Deferred[Any]:
        def failed(failure: Failure) -> Failure:
            self._on_failure(failure)
            return failure

        return self._endpoint.connect(factory).addErrback(failed)
