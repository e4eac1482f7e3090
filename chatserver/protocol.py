"""The server's connection: the transport under a session.

``ChatProtocol`` runs one TCP (or TLS) connection: the handshake (its state
machine is in ``wire.channel``), lines into records and records into calls
on its transport-free ``Session`` (session.py), read holds and socket
pauses, output back-pressure, timeouts, and sealing what the session
sends.  Failures become an ALERT, a sealed goodbye or a closed connection,
always with a log line that says why.  ``ChatFactory`` is what every
connection shares (the services a session uses, the per-turn flush) and
the connection slots: admission, per-address and per-network limits,
eviction of connections that have not logged in.
"""

from __future__ import annotations

import collections
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from chatserver import handlers, twisted_internals
from chatserver.accounts import Account, Accounts
from chatserver.blocks import Blocks
from chatserver.chat import ChatService
from chatserver.config import Settings
from chatserver.cookies import Cookies
from chatserver.identity import Identity
from chatserver.lowpriority import LowPriority
from chatserver.metrics import Metrics
from chatserver.monitoring import health_of
from chatserver.ratelimit import Limits as RateLimits
from chatserver.ratelimit import network_prefix
from chatserver.session import Session
from chatserver.storage.interface import DatabaseLost, StoreClosed
from chatserver.tickets import Tickets
from chatserver.wire import channel, safetext
from chatserver.wire.channel import AlertReceived, ChannelError, HandshakeState, PeerClosed
from chatserver.wire.validation import Limits
from chatserver.workers import Busy, CryptoPool

log = Logger(namespace="chatserver.protocol")
connections_log = Logger(namespace="chatserver.connections")


#: Characters of a disconnect reason a log line keeps: room for an
#: ALERT's 200 bytes of text after its prefix.
REASON_LOG_LIMIT = 300


def rate_rules(settings: Settings) -> dict[str, tuple[float, float]]:
    """The token-bucket rules (rate per second, burst) from the settings."""
    return {
        "messages": (settings.messages_rate, settings.messages_burst),
        "joins": (settings.joins_rate, settings.joins_burst),
        "rooms": (settings.rooms_rate, settings.rooms_burst),
        "logins": (settings.logins_rate, settings.logins_burst),
        "lookups": (settings.lookups_rate, settings.lookups_burst),
        "registrations": (settings.registrations_rate, settings.registrations_burst),
        "registrations_prefix": (settings.registrations_prefix_rate, settings.registrations_prefix_burst),
        "handshakes": (settings.handshakes_rate, settings.handshakes_burst),
        "handshakes_prefix": (settings.handshakes_prefix_rate, settings.handshakes_prefix_burst),
    }


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


#: The ALERT busy of a blocked connection, where it cannot be closed unread.
BLOCKED_TEXT = "too many refused connections from your address or network; try again later"


class ChatProtocol(LineReceiver, TimeoutMixin):
    delimiter = b"\n"
    #: Lines handled for one connection before the reactor serves the
    #: others: one read can hold hundreds of frames, and a flooder's read
    #: must not keep everyone else waiting for milliseconds.
    LINES_PER_TURN = 32
    # Our own attributes in slots, not in the instance dict (which still
    # holds the base classes' few): about 1.5 KiB less per connection.
    __slots__ = (
        "factory",
        "peer",
        "session",
        "handshake",
        "channel",
        "max_plaintext",
        "_direct",
        "_deriving",
        "_holds",
        "_resume_call",
        "_turn_call",
        "_turn_lines",
        "_blocked_since",
        "_blocked_bytes",
        "_slow_check",
        "_held_input",
        "_line_timer",
        "admitted",
        "lost",
        "ending",
        "close_reason",
    )

    #: TCP, TLS (its producer and abort too) or a test's: wider than
    #: ITransport, which LineReceiver declares.
    transport: Any

    def __init__(self, factory: "ChatFactory") -> None:
        self.factory = factory
        self.MAX_LENGTH = factory.settings.max_line_length
        self.peer = "?"
        self.handshake: channel.ServerHandshake | None = None
        self.channel: channel.SecureChannel | None = None
        #: Bytes of JSON one sealed record may carry (the Link's).
        self.max_plaintext = channel.max_plaintext(self.MAX_LENGTH)
        #: Everything after the handshake: login, requests, output.
        self.session = Session(factory, self)
        #: The direct send to the socket (see twisted_internals), or None.
        self._direct: Any = None
        self._deriving: Deferred[Any] | None = None
        #: Why input is not being read (empty: it is).
        self._holds: set[str] = set()
        #: Whether the socket is paused too (see hold).
        self._socket_paused = False
        self._resume_call: Any = None
        self._turn_call: Any = None
        self._turn_lines = 0
        self._blocked_since: float | None = None
        self._blocked_bytes = 0
        self._slow_check: Any = None
        #: Bytes of input this connection holds (LineReceiver's buffer),
        #: as last counted in the factory's total.
        self._held_input = 0
        self._line_timer: Any = None
        self.admitted = False
        #: Fires when the connection is gone (whatever ended it).
        self.lost: Deferred[None] = Deferred()
        self.ending = False
        self.close_reason = "connection lost"

    @property
    def user(self) -> str | None:
        return self.session.user

    @property
    def account(self) -> Account | None:
        return self.session.account

    def callLater(self, delay: float, call: Any, *args: Any) -> Any:
        """TimeoutMixin's and our timers, on the factory's injected clock."""
        return self.factory.clock.callLater(delay, call, *args)

    # --- connection lifetime --------------------------------------------

    def connectionMade(self) -> None:
        self.peer = getattr(self.transport.getPeer(), "host", "?")
        refusal = self.factory.admit(self)
        if refusal is not None:
            if self.factory.may_log(self.peer):
                connections_log.warn("refused {peer}: {reason}", peer=self.peer, reason=refusal)
            self.transport.write(channel.encode_line(channel.alert_record(channel.ALERT_BUSY, refusal)))
            self.transport.loseConnection()
            return
        self.admitted = True
        # A plain TCP transport can be written to directly (see _write); a
        # TLS one, or a test's, goes through its own write.
        self._direct = twisted_internals.direct_sender(self.transport)
        channel.send_without_delay(self.transport)
        self.factory.metrics.count("connections")
        if self.factory.may_log(self.peer):
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
        # Whatever is still buffered is not handled (nor scheduled) now.
        # ``ending`` is also what tells later callbacks (a login finishing,
        # a commit) that the connection is gone: Twisted never resets a
        # protocol's ``connected`` to 0, so that flag cannot.
        self.ending = True
        self.session.closed = True
        for call in (self._slow_check, self._turn_call, self._resume_call, self._line_timer):
            if call is not None and call.active():
                call.cancel()
        deriving, self._deriving = self._deriving, None
        if deriving is not None and not deriving.called:
            deriving.cancel()  # a decryption nobody will use: withdrawn if it has not started
        if self._held_input:
            self.factory.held_input -= self._held_input
            self._held_input = 0
        try:
            self._forget()
        finally:
            self.lost.callback(None)

    def _forget(self) -> None:
        """The bookkeeping of a connection that is gone."""
        if not self.admitted:
            return
        self.factory.chat.disconnect(self.session)
        self.factory.rate_limits.forget(self.session)
        self.factory.stats_subscribers.pop(self.session, None)
        self.factory.release(self)
        if self.account is not None or self.factory.may_log(self.peer):
            connections_log.info(
                "disconnect {peer} user={user}: {reason}",
                peer=self.peer,
                user=self.user or "-",
                reason=safetext.log_text(self.close_reason, REASON_LOG_LIMIT),
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
        self.session.closed = True
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

    def _drop(self, reason: str, alert: int | None = channel.ALERT_HANDSHAKE_FAILURE) -> None:
        """End the connection because of ``reason``: with an ALERT of code
        ``alert`` during the handshake (None: without one)."""
        if self.ending:
            return
        if self.account is not None or self.factory.may_log(self.peer):
            log.warn(
                "{peer} user={user}: {reason}; disconnecting",
                peer=self.peer,
                user=self.user or "-",
                reason=safetext.log_text(reason, REASON_LOG_LIMIT),
            )
        if self.channel is None and self.handshake is not None:
            if alert is not None:
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
            self.session.flush()  # what was queued goes before the goodbye
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
        self.factory.metrics.counters["bytes_out"] += len(data)
        if self._direct is not None:
            # Sent now if nothing waits before it (see twisted_internals);
            # what the socket does not take goes the usual way.
            rest = self._direct(data)
            if not rest:
                return  # all sent, or lost (the reactor reports that as usual)
            data = rest
        self.transport.write(data)

    # --- input -----------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        if self.ending:
            return  # the rest of a read that held a fatal line
        self._turn_lines += 1
        if self._turn_lines >= self.LINES_PER_TURN and "turn" not in self._holds:
            # This line is handled; the rest of the read waits a turn.
            self.hold("turn")
            self._turn_call = self.factory.reactor.callLater(0, self._end_of_turn)
        try:
            if self.channel is None:
                self._handshake_line(line)
            else:
                self._data_line(line)
        except AlertReceived as e:
            # The peer gave up and closes; an ALERT is never answered.
            self._drop(e.reason, None)
        except ChannelError as e:
            self._drop(e.reason, e.alert)

    def _handshake_line(self, line: bytes) -> None:
        handshake = self.handshake
        if handshake is None:
            return  # already failed; the connection is closing
        if self._closed_as_blocked():
            return
        record = channel.decode_line(line)
        state = handshake.state
        if state is HandshakeState.AWAIT_HELLO:
            if record[0] == channel.COOKIE:
                handshake.receive_cookie(record)  # the hello follows
                return
            hello = handshake.read_hello(record)
            if hello.ticket is None or not self._try_ticket(handshake, hello):
                self._queue_full_hello(handshake)
        elif state is HandshakeState.AWAIT_KEY_EXCHANGE:
            handshake.receive_key_exchange(record)
            try:
                d = self.factory.pool.run(handshake.derive, key=network_prefix(self.peer))
            except Busy:
                raise ChannelError("server busy", channel.ALERT_BUSY) from None
            # Hold further lines (the client's FINISHED is likely already
            # here) until the keys exist.
            self.hold("derive")
            self._deriving = d
            d.addCallbacks(self._derived, self._derive_failed)
        elif state is HandshakeState.AWAIT_FINISHED:
            finished, self.channel = handshake.receive_finished(record)
            self.handshake = None
            self.factory.metrics.count("resumptions" if self.channel.resumed else "handshakes")
            if finished is not None:
                self.transport.write(channel.encode_line(finished))
        else:
            raise ChannelError(f"unexpected record in state {state.value}")

    def _closed_as_blocked(self) -> bool:
        """Close the connection if its address or network has been blocked
        since it connected (a flood opens hundreds of connections at once,
        before its first refusals, and the block at accept stops only the
        ones after); True if it was."""
        factory = self.factory
        if not factory.blocks.blocked(self.peer):
            return False
        factory.metrics.count("blocked")
        if factory.close_blocked_at_accept:
            self._end("blocked", abort=True)
        else:
            self._drop(BLOCKED_TEXT, channel.ALERT_BUSY)
        return True

    def _try_ticket(self, handshake: channel.ServerHandshake, hello: channel.Hello) -> bool:
        """Start redeeming a RESUME_HELLO's ticket; False if it cannot be
        (then the hello gets a full handshake, as the spec says)."""
        tickets = self.factory.tickets
        assert hello.ticket is not None
        opened = tickets.open(hello.ticket) if tickets is not None else None
        if opened is None or not handshake.binder_valid(opened.psk):
            return False
        assert tickets is not None
        # Nothing more is read until the database has said whether the
        # ticket is still unused.
        self.hold("resume")
        d = tickets.redeem(opened)
        d.addCallbacks(
            self._redeemed, self._redeem_failed, callbackArgs=(handshake, opened.psk, opened.token_hash)
        )
        return True

    def _redeemed(
        self, account: Any, handshake: channel.ServerHandshake, psk: bytes, token_hash: str
    ) -> None:
        if self.ending or self.handshake is not handshake:
            return
        try:
            if account is not None:
                # The token login that usually follows needs no other trip.
                self.session.resumed_as = (token_hash, account, self.factory.clock.seconds())
                self.transport.write(b"".join(channel.encode_line(r) for r in handshake.resume(psk)))
            else:
                # Replayed, or its session ended: a full handshake.
                self._queue_full_hello(handshake)
        except ChannelError as e:
            self._drop(e.reason, e.alert)
            return
        self.release("resume")

    def _redeem_failed(self, failure: Failure) -> None:
        handshake = self.handshake
        if self.ending or handshake is None:
            return
        if not failure.check(DatabaseLost, StoreClosed):
            log.failure("redeeming a ticket failed for {peer}", failure, peer=self.peer)
        self._redeemed(None, handshake, b"", "")

    def _queue_full_hello(self, handshake: channel.ServerHandshake) -> None:
        """Answer the hello with a full handshake, after the event loop's
        other work of this turn (see lowpriority.py); nothing more is read
        from this connection until then."""
        self.hold("full_hello")
        self.factory.full_hellos.add(lambda: self._serve_full_hello(handshake))

    def _serve_full_hello(self, handshake: channel.ServerHandshake) -> None:
        if self.ending or self.handshake is not handshake or self._closed_as_blocked():
            return
        try:
            self._full_hello(handshake)
        except ChannelError as e:
            self._drop(e.reason, e.alert)
            return
        except Exception:
            # Not a line's error but ours: the connection must not stay
            # paused until its handshake deadline.
            log.failure("answering a hello crashed for {peer}", peer=self.peer)
            self._drop("internal error", channel.ALERT_INTERNAL_ERROR)
            return
        self.release("full_hello")

    def _full_hello(self, handshake: channel.ServerHandshake) -> None:
        """Answer the hello with a full handshake's SERVER_HELLO, which
        costs us an RSA decryption: under load only for a client that
        echoed our cookie, and within its address's and network's budget."""
        factory = self.factory
        record = handshake.hello_record()
        if factory.cookies.required(factory.pool) and not factory.cookies.valid(
            handshake.cookie, self.peer, record
        ):
            if handshake.cookie is not None:
                raise ChannelError("cookie is wrong or too old")
            self.transport.write(
                channel.encode_line(channel.cookie_record(factory.cookies.make(self.peer, record)))
            )
            handshake.retry_with_cookie()
            factory.metrics.count("cookies")
            factory.blocks.refused(self.peer)
            return
        limits = factory.rate_limits
        if limits.check("handshakes", ("address", self.peer)):
            factory.metrics.count("handshakes_refused")
            factory.blocks.refused(self.peer)
            raise ChannelError("too many handshakes from your address; try again later", channel.ALERT_BUSY)
        if limits.check("handshakes_prefix", ("prefix", network_prefix(self.peer))):
            factory.metrics.count("handshakes_refused")
            factory.blocks.refused(self.peer, network=True)
            raise ChannelError("too many handshakes from your network; try again later", channel.ALERT_BUSY)
        self.transport.write(channel.encode_line(handshake.server_hello()))

    def _derived(self, _: Any) -> None:
        self._deriving = None
        if not self.ending and self.handshake is not None:
            self.release("derive")

    def _derive_failed(self, failure: Failure) -> None:
        if self.ending:
            return  # gone (its job withdrawn, or the pool stopping)
        error = failure.value
        if isinstance(error, ChannelError):
            self._drop(error.reason, error.alert)
        else:
            log.failure("key derivation crashed for {peer}", failure, peer=self.peer)
            self._drop("internal error", channel.ALERT_INTERNAL_ERROR)

    def _data_line(self, line: bytes) -> None:
        assert self.channel is not None
        try:
            events = self.channel.open(line)
        except PeerClosed as e:
            self._end(f"closed by peer ({e.code[:40]})", abort=False)
            return
        if events is None:
            return  # KEY_UPDATE
        if self.session.account is not None:
            self.resetTimeout()
        self.session.receive(events)

    # --- read flow control ----------------------------------------------
    #
    # Several things stop reading for a while: key derivation, a login in
    # progress, too many unanswered requests, the per-turn line budget.
    # Reading resumes when none of them holds any more, always from a
    # fresh reactor turn, so a release inside a handler never re-enters
    # the line loop.

    def dataReceived(self, data: bytes) -> None:
        if self.paused and data and not self._socket_paused:
            # Held, and the client sent more: now the socket stops too, so
            # the kernel (not our buffer) holds the rest.
            self._socket_paused = True
            self.transport.pauseProducing()
        self._turn_lines = 0
        self.factory.metrics.counters["bytes_in"] += len(data)
        super().dataReceived(data)
        if self._held_input or self._buffer:
            self._count_held_input()

    def _count_held_input(self) -> None:
        """Keep the factory's total of held input bytes (one budget for all
        connections) and this connection's unfinished-line deadline."""
        if self.ending:
            return
        held = len(self._buffer)
        if held != self._held_input:
            grew = held > self._held_input
            self.factory.held_input += held - self._held_input
            self._held_input = held
            if grew and self.factory.held_input > self.factory.settings.max_input_buffers:
                self.factory.shed_input()
        unfinished = bool(held) and not self.paused and b"\n" not in self._buffer
        if unfinished and self.account is not None:
            if self._line_timer is None:
                self._line_timer = self.callLater(self.factory.settings.partial_line_timeout, self._line_late)
        elif self._line_timer is not None:
            if self._line_timer.active():
                self._line_timer.cancel()
            self._line_timer = None

    def _line_late(self) -> None:
        self._line_timer = None
        if self._buffer and b"\n" not in self._buffer:
            self._drop(f"line unfinished for {self.factory.settings.partial_line_timeout:g} s")

    # Before login, a hold stops the line loop at once but the socket only
    # once more data arrives while it lasts (dataReceived): a handshake's
    # holds (a ticket's check, a key derivation, the login itself) end
    # before the client sends anything, since it waits for the answer, and
    # pausing and resuming the socket is a pair of epoll_ctl calls each.
    # A logged-in client's holds are flow control against a client that
    # keeps sending: there the socket stops at once, so the kernel holds
    # the rest, not our buffer.

    def hold(self, reason: str) -> None:
        if not self._holds:
            self.paused = True
            if self.account is not None and not self._socket_paused:
                self._socket_paused = True
                self.transport.pauseProducing()
        self._holds.add(reason)

    def release(self, reason: str) -> None:
        self._holds.discard(reason)
        if self._holds or not self.paused or self._resume_call is not None or self.ending:
            return
        if not self._buffer and not self._socket_paused:
            self.paused = False  # nothing is waiting to be read: no turn needed
            return
        self._resume_call = self.factory.reactor.callLater(0, self._resume)

    def _resume(self) -> None:
        self._resume_call = None
        if not self._holds and self.paused and not self.ending:
            self.paused = False
            if self._socket_paused:
                self._socket_paused = False
                self.transport.resumeProducing()
            self.dataReceived(b"")  # the lines read while held

    def _end_of_turn(self) -> None:
        self._turn_call = None
        self.release("turn")

    # --- the session's link ------------------------------------------------

    def write_plaintext(self, plaintext: bytes) -> None:
        """Seal and write one DATA record of the session's output."""
        if self.channel is not None and not self.ending:
            block = self.factory.settings.pad_block
            if block > 1:
                plaintext = channel.pad(plaintext, block, self.max_plaintext)
            self._write(self.channel.seal_plaintext(plaintext))

    def logged_in(self) -> None:
        """The session has an account: it holds a slot no newcomer takes,
        and from now on the idle deadline applies."""
        self.factory.authenticated(self)
        self.setTimeout(self.factory.settings.idle_timeout)

    # --- output ----------------------------------------------------------


class ChatFactory(ServerFactory):
    """Shared state of all connections, and admission control."""

    #: Every this many seconds, each channel direction that carried no
    #: record since the previous sweep gives back its AES-GCM context
    #: (about 2.6 KiB of OpenSSL state, two per connection: most of what
    #: an idle connection costs); its next record makes a new one in under
    #: a microsecond.  Most chat connections are idle most of the time.
    CONTEXT_SWEEP_SECONDS = 2.0
    #: Per address: log lines about connections that have not logged in
    #: (connects, refusals, failed handshakes, their disconnects).
    LOG_LINES_RATE = 1.0
    LOG_LINES_BURST = 30
    #: Time per turn of the event loop for answering full handshakes'
    #: hellos while there are more (a SERVER_HELLO costs about 0.1 ms):
    #: the longest a resumption or a logged-in client's record waits
    #: behind them in one turn.
    FULL_HELLO_SECONDS_PER_TURN = 0.003

    def __init__(
        self,
        settings: Settings,
        identity: Identity,
        chat: ChatService,
        accounts: Accounts,
        pool: CryptoPool,
        clock: Any,
        reactor: Any,
        rekey_after: int = channel.REKEY_AFTER_RECORDS,
        metrics: Metrics | None = None,
        tickets: Tickets | None = None,
    ) -> None:
        """``clock`` tells the time (timeouts, rate limits; tests pass a
        fake one); ``reactor`` runs "next turn" calls, which must happen
        whatever the clock says; without ``tickets``, no resumption."""
        self.settings = settings
        self.identity = identity
        self.chat = chat
        self.accounts = accounts
        self.pool = pool
        self.clock = clock
        self.reactor = reactor
        self.rekey_after = rekey_after
        self.tickets = tickets
        self.cookies = Cookies(clock, settings.cookie_threshold)
        #: Full handshakes' hellos wait here for their answer.
        self.full_hellos = LowPriority(reactor, self.FULL_HELLO_SECONDS_PER_TURN)
        self.blocks = Blocks(
            clock, settings.block_after_refusals, settings.block_after_refusals_prefix, settings.block_seconds
        )
        #: Whether a blocked connection is closed in buildProtocol, before
        #: a transport exists (a plain TCP port); a wrapping factory (TLS)
        #: cannot take None, and its connections are refused in admit.
        self.close_blocked_at_accept = True
        self.limits = Limits(settings.max_body_length)
        self.rate_limits = RateLimits(clock, rate_rules(settings))
        self.connections: set[ChatProtocol] = set()
        self.per_address: collections.Counter[str] = collections.Counter()
        self.per_prefix: collections.Counter[str] = collections.Counter()
        #: Connections not logged in yet, per network prefix, oldest
        #: first.  OrderedDicts: taking the oldest of a plain dict whose
        #: first entries were deleted scans the holes they leave.
        self.unauthenticated: dict[str, collections.OrderedDict[ChatProtocol, None]] = {}
        self.unauthenticated_count = 0
        #: Prefixes by how many unauthenticated connections they hold (in
        #: the order they got to that many), and the highest such number:
        #: the prefix to evict from is found without a scan.
        self._prefixes_holding: dict[int, dict[str, None]] = {}
        self._most_held = 0
        #: Evicted connections still closing: they keep their place in
        #: ``connections`` until really gone, not their slot.
        self._evicted: set[ChatProtocol] = set()
        self.metrics = metrics if metrics is not None else Metrics(reactor)
        chat.metrics = self.metrics
        #: Set by the server when the monitor child runs (a worker: its
        #: main process's monitor, seen through the worker link).
        self.monitoring: Any = None
        #: A worker's link to its main process (worker_reports.py): its
        #: stats frames cover every worker.
        self.worker_link: Any = None
        #: Admins' sessions that get a stats frame every interval.
        self.stats_subscribers: dict[Session, None] = {}
        #: Sessions with queued output, flushed once per reactor turn.
        self.to_flush: list[Session] = []
        self.flush_scheduled = False
        #: Log lines about connections that are not logged in, per
        #: address: a peer that fails handshakes in a loop must not be
        #: able to fill the disk or rotate the logs away.
        self._log_budget = RateLimits(clock, {"log": (self.LOG_LINES_RATE, self.LOG_LINES_BURST)})
        self._suppressed: collections.Counter[str] = collections.Counter()
        #: Bytes of unfinished input all connections hold (see shed_input).
        self.held_input = 0
        self._sweep = task.LoopingCall(self.drop_idle_contexts)
        self._sweep.clock = clock
        self.contexts_dropped = 0
        #: Request type -> its handler (chatserver/handlers/).
        self.handlers = handlers.table(self)

    def sessions(self) -> list[Session]:
        """The session of every connection."""
        return [conn.session for conn in self.connections]

    def startFactory(self) -> None:
        # Twisted calls this when the first port starts listening.
        if not self._sweep.running:
            self._sweep.start(self.CONTEXT_SWEEP_SECONDS, now=False)

    def stopFactory(self) -> None:
        if self._sweep.running:
            self._sweep.stop()
        self.full_hellos.stop()

    def shed_input(self) -> None:
        """Over the input budget: drop the connections that hold the most
        unfinished input until the rest fit (a thousand half-sent 64 KB
        lines must not double the server's memory)."""
        budget = self.settings.max_input_buffers
        total = self.held_input
        for conn in sorted(self.connections, key=lambda c: c._held_input, reverse=True):
            if total <= budget or not conn._held_input:
                break
            if conn.ending:
                continue
            total -= conn._held_input
            conn._drop(f"input memory budget: holding {conn._held_input} bytes of unfinished input")

    def may_log(self, peer: str) -> bool:
        """Whether a line about an unauthenticated connection from ``peer``
        may be logged now; the first allowed after some were not says how
        many were left out."""
        if self._log_budget.check("log", peer):
            if len(self._suppressed) >= 100_000:
                self._suppressed.clear()  # bounded; the counts are a courtesy
            self._suppressed[peer] += 1
            return False
        left_out = self._suppressed.pop(peer, 0)
        if left_out:
            log.warn(
                "{peer}: {count} log lines about its unauthenticated connections left out",
                peer=peer,
                count=left_out,
            )
        return True

    def drop_idle_contexts(self) -> None:
        dropped = 0
        for conn in self.connections:
            if conn.channel is not None:
                dropped += conn.channel.drop_idle_contexts()
        self.contexts_dropped += dropped

    def schedule_flush(self) -> None:
        # One call for all connections: the next reactor iteration, so a
        # lone event waits for no timer, while a burst handled in this
        # turn (many lines, one commit's fan-out) is sealed once per
        # connection.
        self.flush_scheduled = True
        self.reactor.callLater(0, self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        sessions, self.to_flush = self.to_flush, []
        for session in sessions:
            session.flush()

    def stats_frame(self) -> dict[str, Any]:
        if self.worker_link is not None:
            return self.worker_link.frame()
        monitoring = self.monitoring
        gauges = {
            "connections": len(self.connections),
            "authenticated": sum(1 for c in self.connections if c.account is not None),
            "users_online": self.chat.hub.online_count(),
            "rooms": len(self.chat.rooms),
            "crypto_queue": self.pool.pending,
        }
        return {
            "type": "stats",
            "app": self.metrics.snapshot(gauges),
            "sample": monitoring.latest if monitoring is not None else None,
            "monitor": health_of(monitoring),
        }

    def push_stats(self) -> None:
        """One stats frame to every subscribed admin."""
        if not self.stats_subscribers:
            return
        frame = self.stats_frame()
        for session in list(self.stats_subscribers):
            if session.closed:
                del self.stats_subscribers[session]
            else:
                session.send(frame)

    def buildProtocol(self, addr: Any) -> ChatProtocol | None:
        # A blocked address's connection is closed here, unread: no
        # transport, no protocol, no reply (see blocks.py).
        if self.close_blocked_at_accept and self.blocks.blocked(getattr(addr, "host", "?")):
            self.metrics.count("blocked")
            return None
        return ChatProtocol(self)

    def close_all(self, code: str, message: str, grace: float) -> Deferred[None]:
        """Say a sealed goodbye to every connection; fires when all are
        gone.  Whoever has not gone after ``grace`` seconds (a client that
        stopped reading) is cut off."""
        connections = list(self.connections)
        for conn in connections:
            conn.close(code, message)

        def cut_off() -> None:
            for conn in connections:
                if not conn.lost.called:
                    conn.transport.abortConnection()

        deadline = self.reactor.callLater(grace, cut_off)
        d = gatherResults([conn.lost for conn in connections])

        def done(result: Any) -> None:
            if deadline.active():
                deadline.cancel()

        return d.addCallback(done)

    # --- connection slots --------------------------------------------------
    #
    # Every connection counts against max_connections, its address's
    # max_connections_per_address and its network's (/24, /64)
    # max_connections_per_prefix; one that has not logged in also against
    # the unauthenticated share (Settings.unauthenticated_slots).  When the
    # share or the whole server is full, a newcomer takes the slot of a
    # connection that has not logged in; logged-in ones are never evicted.
    #
    # Which one: the oldest of the network that holds the most connections
    # not logged in, counted before the newcomer.  If the newcomer's own
    # network holds that many, its own (the newcomer makes it the most);
    # among several others that hold that many, the one that got there
    # first.  So a flood from a few networks evicts only its own
    # connections, however old a real client's handshake from another
    # network is, where the globally oldest would hand the flooder every
    # real client that started before its latest burst.

    def admit(self, protocol: ChatProtocol) -> str | None:
        """None if the connection may stay (having made room for it if
        needed), else the reason it may not."""
        settings = self.settings
        peer = protocol.peer
        if not self.close_blocked_at_accept and self.blocks.blocked(peer):
            self.metrics.count("blocked")
            return BLOCKED_TEXT
        if self.per_address[peer] >= settings.max_connections_per_address:
            self.blocks.refused(peer)
            return "too many connections from your address"
        prefix = network_prefix(peer)
        if self.per_prefix[prefix] >= settings.max_connections_per_prefix:
            self.blocks.refused(peer, network=True)
            return "too many connections from your network"
        if (
            len(self.connections) - len(self._evicted) >= settings.max_connections
            or self.unauthenticated_count >= settings.unauthenticated_slots
        ):
            if not self.unauthenticated_count:
                return "server full"  # every slot is held by a logged-in client
            self._evict(prefix)
        self.connections.add(protocol)
        self.per_address[peer] += 1
        self.per_prefix[prefix] += 1
        self._add_unauthenticated(protocol, prefix)
        return None

    def _evict(self, newcomer_prefix: str) -> None:
        """End the connection not logged in whose slot the newcomer from
        ``newcomer_prefix`` takes (see above)."""
        own = self.unauthenticated.get(newcomer_prefix)
        if own is not None and len(own) == self._most_held:
            prefix = newcomer_prefix
        else:
            prefix = next(iter(self._prefixes_holding[self._most_held]))
        victim = next(iter(self.unauthenticated[prefix]))
        self._remove_unauthenticated(victim, prefix)
        self._evicted.add(victim)
        if victim.ending:
            return  # already closing (a failed handshake): just its slot
        self.metrics.count("evictions")
        reason = "server full: slot given to a newer connection"
        if victim.channel is None:
            victim._drop(reason, channel.ALERT_BUSY)  # logs, within the budget
        else:
            if self.may_log(victim.peer):
                log.warn("{peer} user=-: {reason}; disconnecting", peer=victim.peer, reason=reason)
            victim.close("busy", reason)

    def _add_unauthenticated(self, protocol: ChatProtocol, prefix: str) -> None:
        held = self.unauthenticated.setdefault(prefix, collections.OrderedDict())
        count = len(held)
        held[protocol] = None
        self.unauthenticated_count += 1
        self._move_prefix(prefix, count, count + 1)
        if count + 1 > self._most_held:
            self._most_held = count + 1

    def _remove_unauthenticated(self, protocol: ChatProtocol, prefix: str) -> None:
        held = self.unauthenticated.get(prefix)
        if held is None or protocol not in held:
            return
        count = len(held)
        del held[protocol]
        if not held:
            del self.unauthenticated[prefix]
        self.unauthenticated_count -= 1
        self._move_prefix(prefix, count, count - 1)
        if count == self._most_held and count not in self._prefixes_holding:
            self._most_held = count - 1  # counts move by one: count - 1 holds this prefix

    def _move_prefix(self, prefix: str, before: int, after: int) -> None:
        holding = self._prefixes_holding
        if before:
            same = holding[before]
            del same[prefix]
            if not same:
                del holding[before]
        if after:
            holding.setdefault(after, {})[prefix] = None

    def authenticated(self, protocol: ChatProtocol) -> None:
        """``protocol`` has logged in: it holds a slot no newcomer takes."""
        self._remove_unauthenticated(protocol, network_prefix(protocol.peer))

    def release(self, protocol: ChatProtocol) -> None:
        if protocol not in self.connections:
            return
        self.connections.discard(protocol)
        self._evicted.discard(protocol)
        peer = protocol.peer
        prefix = network_prefix(peer)
        self._remove_unauthenticated(protocol, prefix)
        self.per_address[peer] -= 1
        if self.per_address[peer] <= 0:
            del self.per_address[peer]
        self.per_prefix[prefix] -= 1
        if self.per_prefix[prefix] <= 0:
            del self.per_prefix[prefix]
