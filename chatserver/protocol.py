"""The server's connection: lines in, frames out, requests to the services.

``ChatProtocol`` is a thin shell.  The handshake and the record layer live in
``channel``; rooms in ``chat``; accounts in ``accounts``.  This module only
moves bytes between them, keeps per-connection state (handshake, login,
timeouts, back-pressure) and turns failures into alerts, error events or a
closed connection, always with a log line that says why.
"""

from __future__ import annotations

import collections
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from chatserver import __version__, channel
from chatserver.accounts import Account, Accounts, AuthError
from chatserver.channel import ChannelError, HandshakeState, PeerClosed
from chatserver.chat import ChatService, NotAMember
from chatserver.config import Settings
from chatserver.identity import Identity
from chatserver.validation import PRE_LOGIN, Limits, RequestError, validate
from chatserver.workers import Busy, CryptoPool

log = Logger(namespace="chatserver.protocol")
connections_log = Logger(namespace="chatserver.connections")


@implementer(IPushProducer)
class _OutputPressure:
    """Told by the transport when its write buffer is full or drained.

    A separate object because ``LineReceiver`` already uses the producer
    methods for pausing *reads*.
    """

    __slots__ = ("protocol",)

    def __init__(self, protocol: "ChatProtocol") -> None:
        self.protocol = protocol

    def pauseProducing(self) -> None:
        self.protocol.output_blocked()

    def resumeProducing(self) -> None:
        self.protocol.output_drained()

    def stopProducing(self) -> None:
        pass


class ChatProtocol(LineReceiver, TimeoutMixin):
    delimiter = b"\n"

    def __init__(self, factory: "ChatFactory") -> None:
        self.factory = factory
        self.MAX_LENGTH = factory.settings.max_line_length
        self.callLater = factory.clock.callLater  # TimeoutMixin, on the injected clock
        self.peer = "?"
        self.user: str | None = None
        self.account: Account | None = None
        self.handshake: channel.ServerHandshake | None = None
        self.channel: channel.SecureChannel | None = None
        self._inbox: collections.deque[dict[str, Any]] = collections.deque()
        self._waiting = False
        self._blocked_since: float | None = None
        self._blocked_bytes = 0
        self._slow_check: Any = None
        self.admitted = False
        self.ending = False
        self.close_reason = "connection lost"

    # --- connection lifetime --------------------------------------------

    def connectionMade(self) -> None:
        self.peer = getattr(self.transport.getPeer(), "host", "?")
        refusal = self.factory.admit(self)
        if refusal is not None:
            connections_log.warn("refused {peer}: {reason}", peer=self.peer, reason=refusal)
            self.transport.write(channel.encode_line(channel.alert_record(channel.ALERT_BUSY, refusal)))
            self.transport.loseConnection()
            return
        self.admitted = True
        connections_log.info("connect {peer}", peer=self.peer)
        self.handshake = channel.ServerHandshake(
            self.factory.identity.key,
            self.factory.identity.public_der,
            rekey_after=self.factory.rekey_after,
        )
        self.transport.registerProducer(_OutputPressure(self), True)
        # One deadline for handshake *and* login; it is not reset by
        # traffic, so trickling bytes (slowloris) does not extend it.
        self.setTimeout(self.factory.settings.handshake_timeout)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.setTimeout(None)
        if self._slow_check is not None and self._slow_check.active():
            self._slow_check.cancel()
        if not self.admitted:
            return
        self.factory.chat.leave_all(self)
        self.factory.release(self)
        connections_log.info(
            "disconnect {peer} user={user}: {reason}",
            peer=self.peer,
            user=self.user or "-",
            reason=self.close_reason,
        )

    def timeoutConnection(self) -> None:
        if self.account is None:
            self._drop("handshake or login not finished in time", channel.ALERT_TIMEOUT)
        else:
            self.close("idle_timeout", "no traffic for too long")

    def lineLengthExceeded(self, line: bytes) -> None:
        # The default waits to flush; an oversized line is hostile or broken,
        # so drop the connection at once.
        self._drop(f"line longer than {self.MAX_LENGTH} bytes", channel.ALERT_DECODE_ERROR)

    def _end(self, reason: str, abort: bool) -> bool:
        """The one way out.  The first reason wins and is the one logged;
        nothing more is read or written after it.  False if already ending."""
        if self.ending:
            return False
        self.ending = True
        self.close_reason = reason
        self.setTimeout(None)
        # While the transport has our output producer paused it would, once
        # drained, resume the producer instead of closing: unregister first.
        self.transport.unregisterProducer()
        if abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()
        return True

    def _drop(self, reason: str, alert: int = channel.ALERT_HANDSHAKE_FAILURE) -> None:
        """End the connection because of ``reason`` (safe to log)."""
        if self.ending:
            return
        log.warn(
            "{peer} user={user}: {reason}; disconnecting",
            peer=self.peer,
            user=self.user or "-",
            reason=reason,
        )
        if self.channel is None and self.handshake is not None:
            self.transport.write(channel.encode_line(channel.alert_record(alert, reason)))
            self._end(reason, abort=False)
        else:
            # After the handshake nothing from this peer can be trusted any
            # more; don't wait for it to read a goodbye.
            self._end(reason, abort=True)
        self.handshake = None

    def close(self, code: str, message: str) -> None:
        """Say a sealed goodbye and close after it is written."""
        if self.ending:
            return
        if self.channel is not None and not self.channel.closed:
            self.transport.write(self.channel.seal_close(code, message))
        self._end(f"{code}: {message}", abort=False)

    # --- output back-pressure -------------------------------------------

    def output_blocked(self) -> None:
        if self._blocked_since is None:
            self._blocked_since = self.factory.clock.seconds()
            self._blocked_bytes = 0
            self._slow_check = self.callLater(self.factory.settings.slow_client_timeout, self._check_slow)

    def output_drained(self) -> None:
        self._blocked_since = None
        if self._slow_check is not None and self._slow_check.active():
            self._slow_check.cancel()
        self._slow_check = None

    def _check_slow(self) -> None:
        self._slow_check = None
        if self._blocked_since is not None:
            self._drop("slow consumer: output blocked for too long")

    def _write(self, data: bytes) -> None:
        if self.ending:
            return
        if self._blocked_since is not None:
            self._blocked_bytes += len(data)
            if self._blocked_bytes > self.factory.settings.max_output_buffer:
                self._drop("slow consumer: output buffer limit reached")
                return
        self.transport.write(data)

    # --- input -----------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        if self.ending:
            return  # the rest of a read that held a fatal line
        try:
            if self.channel is None:
                self._handshake_line(line)
            else:
                self._data_line(line)
        except ChannelError as e:
            self._drop(e.reason, e.alert)

    def _handshake_line(self, line: bytes) -> None:
        handshake = self.handshake
        if handshake is None:
            return  # already failed; the connection is closing
        record = channel.decode_line(line)
        state = handshake.state
        if state is HandshakeState.AWAIT_HELLO:
            self.transport.write(channel.encode_line(handshake.receive_client_hello(record)))
        elif state is HandshakeState.AWAIT_KEY_EXCHANGE:
            handshake.receive_key_exchange(record)
            try:
                d = self.factory.pool.run(handshake.derive)
            except Busy:
                raise ChannelError("server busy", channel.ALERT_BUSY) from None
            # Hold further lines (the client's FINISHED is likely already
            # here) until the keys exist.
            self.pauseProducing()
            d.addCallbacks(self._derived, self._derive_failed)
        elif state is HandshakeState.AWAIT_FINISHED:
            finished, self.channel = handshake.receive_finished(record)
            self.handshake = None
            self.transport.write(channel.encode_line(finished))
            connections_log.info("secure channel with {peer}", peer=self.peer)
        else:
            raise ChannelError(f"unexpected record in state {state.value}")

    def _derived(self, _: Any) -> None:
        if self.connected and self.handshake is not None:
            self.resumeProducing()

    def _derive_failed(self, failure: Failure) -> None:
        if failure.check(ChannelError):
            error = failure.value
            self._drop(error.reason, error.alert)
        else:
            log.failure("key derivation crashed for {peer}", failure, peer=self.peer)
            self._drop("internal error", channel.ALERT_INTERNAL_ERROR)

    def _data_line(self, line: bytes) -> None:
        assert self.channel is not None
        try:
            events = self.channel.open(line)
        except PeerClosed as e:
            self._end(f"closed by peer ({e.code})", abort=False)
            return
        if events is None:
            return  # KEY_UPDATE
        if self.account is not None:
            self.resetTimeout()
        self._inbox.extend(events)
        self._drain()

    def _drain(self) -> None:
        """Handle queued events in order, stopping at one that must wait."""
        while self._inbox and not self._waiting and not self.ending and self.connected:
            self._dispatch(self._inbox.popleft())

    def _wait_for(self, d: Any) -> None:
        """Hold all further input until ``d`` has fired (keeps order)."""
        self._waiting = True
        self.pauseProducing()

        def done(result: Any) -> Any:
            self._waiting = False
            if self.connected:
                self._drain()
                if not self._waiting:
                    self.resumeProducing()
            return result

        d.addBoth(done)

    # --- requests --------------------------------------------------------

    def _dispatch(self, event: dict[str, Any]) -> None:
        try:
            request = validate(event, self.factory.limits)
        except RequestError as e:
            ref = event.get("ref")
            self.send_error(
                e.code,
                e.message,
                request=event["type"][:40],
                field=e.field,
                ref=ref if isinstance(ref, (str, int)) and not isinstance(ref, bool) else None,
            )
            return
        kind = request["type"]
        if self.account is None and kind not in PRE_LOGIN:
            self.send_error("not_authenticated", "log in first", request=kind, ref=request.get("ref"))
            return
        getattr(self, "_on_" + kind)(request)

    def _on_ping(self, request: dict[str, Any]) -> None:
        self.send(self._reply({"type": "pong"}, request))

    def _on_login(self, request: dict[str, Any]) -> None:
        self._authenticate(request, self.factory.accounts.login)

    def _on_register(self, request: dict[str, Any]) -> None:
        self._authenticate(request, self.factory.accounts.register)

    def _authenticate(self, request: dict[str, Any], method: Any) -> None:
        if self.account is not None:
            self.send_error(
                "already_authenticated", "already logged in", request=request["type"], ref=request.get("ref")
            )
            return
        try:
            d = method(request["user"], request["password"], self.peer)
        except AuthError as e:  # throttled before any work
            self._auth_failed(e, request)
            return
        d.addCallbacks(
            self._authenticated, self._auth_errback, callbackArgs=(request,), errbackArgs=(request,)
        )
        self._wait_for(d)

    def _auth_errback(self, failure: Failure, request: dict[str, Any]) -> None:
        if failure.check(AuthError):
            self._auth_failed(failure.value, request)
        elif failure.check(Busy):
            self.send_error(
                "busy",
                "server busy; try again",
                request=request["type"],
                ref=request.get("ref"),
                retry_after=1,
            )
        else:
            log.failure("{kind} crashed for {peer}", failure, kind=request["type"], peer=self.peer)
            self.send_error(
                "internal_error", "internal error", request=request["type"], ref=request.get("ref")
            )

    def _auth_failed(self, error: AuthError, request: dict[str, Any]) -> None:
        if not self.connected:
            return
        extra = {"retry_after": round(error.retry_after, 1)} if error.retry_after else {}
        self.send_error(error.code, error.message, request=request["type"], ref=request.get("ref"), **extra)

    def _authenticated(self, account: Account, request: dict[str, Any]) -> None:
        if not self.connected:
            return
        self.account = account
        self.user = account.name
        self.setTimeout(self.factory.settings.idle_timeout)
        connections_log.info("{peer} logged in as {user}", peer=self.peer, user=account.name)
        self.send(
            self._reply(
                {
                    "type": "welcome",
                    "user": account.name,
                    "role": account.role,
                    "server": f"chatserver/{__version__}",
                    "rooms": [self.factory.settings.default_room],
                    # Clients keep the connection alive within this.
                    "idle_timeout": self.factory.settings.idle_timeout,
                },
                request,
            )
        )
        self.factory.chat.join(self, self.factory.settings.default_room)

    def _on_say(self, request: dict[str, Any]) -> None:
        try:
            event = self.factory.chat.say(self, request["room"], request["body"])
        except NotAMember:
            self.send_error(
                "not_member", "you are not in that room", request="say", field="room", ref=request.get("ref")
            )
            return
        self.send(
            self._reply({"type": "ack", "room": event["room"], "id": event["id"], "ts": event["ts"]}, request)
        )

    def _on_who(self, request: dict[str, Any]) -> None:
        try:
            users = self.factory.chat.who(self, request["room"])
        except NotAMember:
            self.send_error(
                "not_member", "you are not in that room", request="who", field="room", ref=request.get("ref")
            )
            return
        self.send(self._reply({"type": "who", "room": request["room"], "users": users}, request))

    # --- output ----------------------------------------------------------

    @staticmethod
    def _reply(event: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
        if "ref" in request:
            event["ref"] = request["ref"]
        return event

    def send(self, event: dict[str, Any]) -> None:
        if self.channel is not None and not self.ending and self.connected:
            self._write(self.channel.seal_events([event]))

    def send_error(self, code: str, message: str, **fields: Any) -> None:
        event = {"type": "error", "code": code, "message": message}
        event.update((k, v) for k, v in fields.items() if v is not None)
        self.send(event)

    def deliver(self, plaintext: bytes) -> None:
        """A broadcast event list, already encoded once for all members."""
        if self.channel is not None and not self.ending and self.connected:
            self._write(self.channel.seal_plaintext(plaintext))


class ChatFactory(ServerFactory):
    """Shared state of all connections, and admission control."""

    def __init__(
        self,
        settings: Settings,
        identity: Identity,
        chat: ChatService,
        accounts: Accounts,
        pool: CryptoPool,
        clock: Any,
        rekey_after: int = channel.REKEY_AFTER_RECORDS,
    ) -> None:
        self.settings = settings
        self.identity = identity
        self.chat = chat
        self.accounts = accounts
        self.pool = pool
        self.clock = clock
        self.rekey_after = rekey_after
        self.limits = Limits(settings.max_body_length)
        self.connections: set[ChatProtocol] = set()
        self.per_address: collections.Counter[str] = collections.Counter()

    def buildProtocol(self, addr: Any) -> ChatProtocol:
        return ChatProtocol(self)

    def admit(self, protocol: ChatProtocol) -> str | None:
        """None if the connection may stay, else the reason it may not."""
        if len(self.connections) >= self.settings.max_connections:
            return "server full"
        if self.per_address[protocol.peer] >= self.settings.max_connections_per_address:
            return "too many connections from your address"
        self.connections.add(protocol)
        self.per_address[protocol.peer] += 1
        return None

    def release(self, protocol: ChatProtocol) -> None:
        self.connections.discard(protocol)
        self.per_address[protocol.peer] -= 1
        if self.per_address[protocol.peer] <= 0:
            del self.per_address[protocol.peer]
