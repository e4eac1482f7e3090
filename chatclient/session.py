"""The client library: a secure session with Deferred-based requests.

``connect()`` opens a TCP (or TLS) connection, runs the handshake from
``chatserver.wire.channel`` and fires with a :class:`ChatSession` once the
server has proven it holds the pinned key.  Requests carry a ``ref`` and
their Deferred fires with the server's answer, or fails with
:class:`ServerError` for an ``error`` event.  Everything else the server
sends goes to the listeners.  The terminal client and the GUI both sit on
this module; neither speaks the protocol itself.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import defer, endpoints, task
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from chatserver.wire import channel
from chatserver.wire.channel import ChannelError, HandshakeState, PeerClosed

log = Logger(namespace="chatclient.session")

#: verify(fingerprint) -> bool | Deferred[bool]; raising refuses too.
#: Called when the key arrives, before the server has proven it holds it:
#: check a pin here, but do not write one.
Verifier = Callable[[str], Any]
#: proven(fingerprint): the server's FINISHED verified, so it holds the
#: key: the moment to pin a new one.  Raising ends the connection.
Proven = Callable[[str], None]


_PAD_LIMIT = channel.max_plaintext(65536)

#: Requests whose answers are paged: type -> (list member, cursor member).
PAGED = {"who": ("members", "user"), "rooms": ("rooms", "room")}
#: The most pages one paged request is read for.
MAX_PAGES = 1000


class ServerError(Exception):
    """The server answered a request with an ``error`` event."""

    def __init__(self, event: dict[str, Any]) -> None:
        super().__init__(f"{event.get('code')}: {event.get('message')}")
        self.event = event
        self.code = event.get("code")
        self.message = event.get("message")


class ConnectionClosed(Exception):
    """The connection ended; ``clean`` tells a goodbye from a cut."""

    def __init__(self, clean: bool, code: str, message: str) -> None:
        super().__init__(f"{'closed' if clean else 'lost'}: {code}: {message}")
        self.clean = clean
        self.code = code
        self.message = message


#: ``ConnectionClosed.code`` of a server certificate that TLS refused (an
#: unknown CA, another host's name, expired): retrying cannot fix it.
TLS_CERTIFICATE = "tls_certificate"


def tls_problem(reason: Failure | None) -> ConnectionClosed | None:
    """Why TLS ended the connection, in words for the user (code
    :data:`TLS_CERTIFICATE`, or ``tls`` for other handshake failures);
    None if the loss was not TLS's doing."""
    error = reason.value if reason is not None else None
    if isinstance(error, VerificationError):
        names = []
        for mismatch in error.errors:
            wanted = getattr(mismatch, "mismatched_id", None)
            name = getattr(wanted, "hostname", None) or getattr(wanted, "ip", None) or wanted
            names.append(name.decode("ascii", "replace") if isinstance(name, bytes) else str(name))
        return ConnectionClosed(
            False,
            TLS_CERTIFICATE,
            f"TLS: the server's certificate is not valid for {', '.join(names) or 'this host'}",
        )
    if not isinstance(error, SSL.Error):
        return None
    # pyOpenSSL: [(library, function, reason), ...]
    queue = error.args[0] if error.args and isinstance(error.args[0], list) else []
    reasons = [str(part[-1]) for part in queue if isinstance(part, tuple) and part]
    text = "; ".join(r for r in reasons if r) or str(error)
    if "certificate verify failed" in reasons:
        return ConnectionClosed(
            False,
            TLS_CERTIFICATE,
            "TLS: the server's certificate is not signed by a certificate authority "
            "this client trusts (certificate verify failed)",
        )
    if "wrong version number" in reasons:
        text += " (is the server on this port using TLS?)"
    return ConnectionClosed(False, "tls", f"TLS error: {text}")


class ClientProtocol(LineReceiver, TimeoutMixin):
    """Runs the client side of the handshake, then hands events up."""

    delimiter = b"\n"
    MAX_LENGTH = 16 * 1024 * 1024
    #: TCP, TLS or a test's (abortConnection too): wider than the
    #: ITransport that LineReceiver declares.
    transport: Any
    #: Seconds the server has to answer each handshake step.
    handshake_timeout = 30.0

    def __init__(
        self,
        verify: Verifier,
        handshake: channel.ClientHandshake | None = None,
        proven: Proven | None = None,
        ticket: channel.Ticket | None = None,
        on_ticket: Callable[[channel.Ticket], None] | None = None,
        *,
        clock: Any,
    ) -> None:
        """``ticket``: resume with it (used up whatever the server says);
        ``on_ticket(ticket)``: called with each ticket the server issues,
        for the next connection; ``clock``: the reactor (or a test's
        clock) that times the handshake."""
        self._clock = clock
        self._verify = verify
        self._proven = proven
        self._ended = False
        if handshake is None:
            if ticket is not None and ticket.expires_at <= clock.seconds():
                ticket = None  # the server would only decline it
            handshake = channel.ClientHandshake(ticket=ticket)
        self._ticket_fingerprint = ticket.server_fingerprint if ticket is not None else None
        self._on_ticket = on_ticket
        self.handshake = handshake
        self.channel: channel.SecureChannel | None = None
        self.secure: Deferred[ClientProtocol] = Deferred()
        self.session: ChatSession | None = None
        self.fingerprint: str | None = None
        self._close_info: ConnectionClosed | None = None

    def callLater(self, delay: float, call: Any, *args: Any) -> Any:
        """TimeoutMixin's timer, on the injected clock."""
        return self._clock.callLater(delay, call, *args)

    def connectionMade(self) -> None:
        channel.send_without_delay(self.transport)
        self.setTimeout(self.handshake_timeout)
        self.transport.write(channel.encode_line(self.handshake.hello()))

    def timeoutConnection(self) -> None:
        self._fail(ConnectionClosed(False, "timeout", "the server did not finish the handshake in time"))

    def lineReceived(self, line: bytes) -> None:
        if self._ended:
            return  # the rest of a read that held a fatal or final line
        try:
            if self.channel is None:
                self._handshake_line(line)
            else:
                self._data_line(line)
        except ChannelError as e:
            self._fail(ConnectionClosed(False, "protocol_error", e.reason))
        except PeerClosed as e:
            self._ended = True
            self._close_info = ConnectionClosed(True, e.code, e.message)
            self.transport.loseConnection()

    def _handshake_line(self, line: bytes) -> None:
        record = channel.decode_line(line)
        handshake = self.handshake
        state = handshake.state
        if state is HandshakeState.AWAIT_KEY_EXCHANGE and record[0] == channel.COOKIE:
            # The server is under load: its cookie back, and our hello again.
            self.transport.write(b"".join(channel.encode_line(r) for r in handshake.receive_cookie(record)))
        elif state is HandshakeState.AWAIT_KEY_EXCHANGE and record[0] == channel.SERVER_RESUME:
            handshake.receive_server_resume(record)
        elif state is HandshakeState.AWAIT_KEY_EXCHANGE:
            self.fingerprint = handshake.receive_server_hello(record)
            # Nothing that depends on the server's identity is sent before
            # the verifier (pin check, or a person in the GUI) agrees, and
            # a person may take their time.
            self.setTimeout(None)
            self.pauseProducing()
            d = defer.maybeDeferred(self._verify, self.fingerprint)
            d.addCallbacks(self._verified, self._fail)
        elif state is HandshakeState.AWAIT_FINISHED:
            if handshake.resumed:
                # The ticket came from the server we pinned, and only it
                # could take it back: the same identity, without RSA.
                finished, secure_channel = handshake.receive_resumed_finished(record)
                self.transport.write(channel.encode_line(finished))
                self.fingerprint = self._ticket_fingerprint
            else:
                secure_channel = handshake.receive_finished(record)
            self.setTimeout(None)
            if self._proven is not None and self.fingerprint is not None:
                try:
                    self._proven(self.fingerprint)
                except Exception:
                    self._fail(Failure())
                    return
            self.channel = secure_channel
            self.secure.callback(self)
        else:
            raise ChannelError(f"unexpected record in state {state.value}")

    def _verified(self, accepted: bool) -> None:
        if not self.connected or self._ended:
            return
        if not accepted:
            self._fail(ConnectionClosed(False, "untrusted", "server key not accepted"))
            return
        self.transport.write(b"".join(channel.encode_line(r) for r in self.handshake.key_exchange()))
        self.setTimeout(self.handshake_timeout)
        self.resumeProducing()

    def _data_line(self, line: bytes) -> None:
        assert self.channel is not None
        events = self.channel.open(line)
        if events is None:
            return
        for event in events:
            if event.get("type") == "ticket" and "ref" not in event:
                self._ticket(event)
            elif self.session is not None:
                self.session._received(event)

    def _ticket(self, event: dict[str, Any]) -> None:
        """A resumption ticket: the channel's business, not the session's."""
        assert self.channel is not None
        ticket = channel.Ticket.from_event(event, self.channel, self._clock.seconds(), self.fingerprint)
        if self._on_ticket is not None:
            self._on_ticket(ticket)

    def _fail(self, reason: Any) -> None:
        """End the connection; the first reason is the one reported."""
        if self._ended:
            return
        self._ended = True
        self.setTimeout(None)
        error = reason.value if isinstance(reason, Failure) else reason
        if not isinstance(error, ConnectionClosed):
            self._close_info = None
        else:
            self._close_info = error
        if not self.secure.called:
            self.secure.errback(reason if isinstance(reason, Failure) else Failure(error))
        if self.transport is not None:
            self.transport.abortConnection()

    def send_events(self, events: list[dict[str, Any]]) -> None:
        """Seal and send; after the end, requests fail when the loss is
        reported instead."""
        assert self.channel is not None
        if self._ended:
            return
        # Padded as the server pads, never past what fits in a line under
        # the spec's default limit.
        plaintext = channel.pad(channel.encode_events(events), channel.PAD_BLOCK, _PAD_LIMIT)
        self.transport.write(self.channel.seal(channel.DATA, plaintext))

    def close(self, code: str = "bye", message: str = "goodbye") -> None:
        if self._ended:
            return
        self._ended = True
        if self.channel is not None:
            self.transport.write(self.channel.seal_close(code, message))
            self._close_info = ConnectionClosed(True, code, "closed by us")
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.setTimeout(None)
        self._ended = True
        info = self._close_info
        if info is None:
            info = tls_problem(reason) or ConnectionClosed(False, "lost", "connection lost without a goodbye")
        if not self.secure.called:
            self.secure.errback(Failure(info))
        if self.session is not None:
            self.session._lost(info)


class ChatSession:
    """Requests and events over one secure connection."""

    def __init__(self, protocol: ClientProtocol, clock: Any) -> None:
        self._clock = clock
        self._keepalive: task.LoopingCall | None = None
        self.protocol = protocol
        protocol.session = self
        self.fingerprint = protocol.fingerprint
        self.user: str | None = None
        self.role: str | None = None
        self.device_challenge = ""
        self._refs = itertools.count(1)
        self._pending: dict[int, Deferred[dict[str, Any]]] = {}
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self.closed: Deferred[ConnectionClosed] = Deferred()

    # --- events ------------------------------------------------------------

    def add_listener(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Call ``listener(event)`` for every event that answers no request."""
        self._listeners.append(listener)

    def _received(self, event: dict[str, Any]) -> None:
        ref = event.get("ref")
        d = self._pending.pop(ref, None) if isinstance(ref, int) else None
        if d is not None:
            if event["type"] == "error":
                d.errback(ServerError(event))
            else:
                d.callback(event)
            return
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.failure("event listener failed")

    def _lost(self, info: ConnectionClosed) -> None:
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        # ``closed`` fires before the pending requests fail: whoever retries
        # a failed request from its errback must already see this session
        # as closed, or the retry would go into the dead connection and
        # never be answered.
        if not self.closed.called:
            self.closed.callback(info)
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(info)

    # --- requests ----------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._pending)

    def request(self, event: dict[str, Any]) -> Deferred[dict[str, Any]]:
        """Send ``event`` with a fresh ref; fires with the answer.  A paged
        request (``who``, ``rooms``) without ``after`` fires with every
        page's entries in one answer (see :meth:`all_pages`)."""
        paged = PAGED.get(event.get("type", ""))
        if paged is not None and "after" not in event:
            return self.all_pages(event, *paged)
        return self.send_request(event)

    def send_request(self, event: dict[str, Any]) -> Deferred[dict[str, Any]]:
        """Send ``event`` as it is, with a fresh ref; fires with the answer."""
        if self.closed.called:
            return defer.fail(ConnectionClosed(False, "closed", "session is closed"))
        ref = next(self._refs)
        d: Deferred[dict[str, Any]] = Deferred()
        self._pending[ref] = d
        self.protocol.send_events([dict(event, ref=ref)])
        return d

    def _logged_in(self, welcome: dict[str, Any]) -> dict[str, Any]:
        self.user = welcome["user"]
        self.role = welcome["role"]
        #: What this connection's device signs when it declares itself.
        self.device_challenge = str(welcome.get("device_challenge", ""))
        idle = welcome.get("idle_timeout")
        if isinstance(idle, (int, float)) and idle > 0 and not self.closed.called:
            # The server closes idle connections; a ping at a third of its
            # limit keeps a quiet session open with room for a lost one.
            self._keepalive = task.LoopingCall(self._ping_quietly)
            self._keepalive.clock = self._clock
            self._keepalive.start(idle / 3, now=False)
        return welcome

    def _ping_quietly(self) -> None:
        self.ping().addErrback(lambda _: None)

    def login(self, user: str, password: str) -> Deferred[dict[str, Any]]:
        return self.request({"type": "login", "user": user, "password": password}).addCallback(
            self._logged_in
        )

    def register(self, user: str, password: str, invite: str | None = None) -> Deferred[dict[str, Any]]:
        """``invite``: the invite code a server in invite mode asks for."""
        request = {"type": "register", "user": user, "password": password}
        if invite is not None:
            request["invite"] = invite
        return self.request(request).addCallback(self._logged_in)

    def say(self, room: str, body: str) -> Deferred[dict[str, Any]]:
        """Fires with the ack: ``{"type": "ack", "room", "id", "ts"}``."""
        return self.request({"type": "say", "room": room, "body": body})

    def all_pages(self, request: dict[str, Any], items: str, cursor: str) -> Deferred[dict[str, Any]]:
        """Send a paged request (``who``, ``rooms``) again with ``after``
        while the answer says ``more``; fires with the last answer, its
        ``items`` list holding those of every page in order.  ``cursor``
        names the member of an item that the next page starts after."""
        collected: list[Any] = []
        pages = [0]

        def page(answer: dict[str, Any]) -> Any:
            collected.extend(answer[items])
            pages[0] += 1
            # Bounded, whatever a server says: 1,000 pages of 200 entries.
            if answer.get("more") and answer[items] and pages[0] < MAX_PAGES:
                after = answer[items][-1][cursor]
                return self.send_request(dict(request, after=after)).addCallback(page)
            whole = dict(answer, **{items: collected})
            if "users" in answer:  # who: the names again
                whole["users"] = [entry["user"] for entry in collected]
            whole["more"] = False
            return whole

        return self.send_request(dict(request)).addCallback(page)

    def who(self, room: str) -> Deferred[list[str]]:
        """The names of every member of ``room``, all pages."""
        d = self.all_pages({"type": "who", "room": room}, "members", "user")
        return d.addCallback(lambda answer: [m["user"] for m in answer["members"]])

    def ping(self) -> Deferred[dict[str, Any]]:
        return self.request({"type": "ping"})

    def close(self) -> Deferred[ConnectionClosed]:
        """Say goodbye; fires when the connection has ended."""
        if not self.closed.called:
            self.protocol.close()
        return self.closed


def connect(
    reactor: Any,
    endpoint_description: str,
    verify: Verifier,
    handshake: channel.ClientHandshake | None = None,
    proven: Proven | None = None,
    ticket: channel.Ticket | None = None,
    on_ticket: Callable[[channel.Ticket], None] | None = None,
) -> Deferred[ChatSession]:
    """Connect to a client endpoint string (``tcp:host=H:port=P``,
    ``tls:H:P`` ...) and fire with a session once the channel is secure.
    ``ticket`` and ``on_ticket``: see :class:`ClientProtocol`."""
    endpoint = endpoints.clientFromString(reactor, endpoint_description)
    return connect_endpoint(endpoint, verify, handshake, proven, ticket, on_ticket, clock=reactor)


def connect_endpoint(
    endpoint: Any,
    verify: Verifier,
    handshake: channel.ClientHandshake | None = None,
    proven: Proven | None = None,
    ticket: channel.Ticket | None = None,
    on_ticket: Callable[[channel.Ticket], None] | None = None,
    *,
    clock: Any,
) -> Deferred[ChatSession]:
    """As :func:`connect`, over an endpoint; ``clock`` times the
    handshake and the session's keepalive (the reactor, or a test's)."""
    protocol = ClientProtocol(verify, handshake, proven, ticket, on_ticket, clock=clock)
    connecting = endpoints.connectProtocol(endpoint, protocol)

    def cancel(_: Deferred[ChatSession]) -> None:
        # Cancelling after the TCP connection is up must not leave it open
        # until the server's handshake deadline.
        connecting.cancel()
        if protocol.transport is not None:
            protocol.transport.abortConnection()

    result: Deferred[ChatSession] = Deferred(cancel)

    def forward(session: ChatSession) -> None:
        if not result.called:
            result.callback(session)

    def forward_error(failure: Failure) -> None:
        if not result.called:  # after a cancel the outcome is moot
            result.errback(failure)

    connecting.addCallback(lambda _: protocol.secure)
    connecting.addCallback(ChatSession, clock)
    connecting.addCallbacks(forward, forward_error)
    return result
