"""The ``Hub`` over Redis pub/sub, for several processes and nodes.

txredisapi (native Twisted, what Synapse uses) on two links to one Redis:
one for commands (``PUBLISH``, presence), one subscribed.  What goes over
them (``PREFIX`` before every name, so that one Redis can serve several
deployments, one per database number or prefix):

- ``s:<stream>``: the committed events of the stream, each as
  ``<id>:<JSON>``, one or more in id order per message, joined by
  ``\\n`` (compact JSON never holds a raw newline).  A process
  subscribes to the streams its sessions follow.
- ``u:<user>``: the direct messages to or from the user, each as
  ``<stream>\\n<id>:<JSON>``, one or more per message, joined by ``\\n``.
  A process subscribes to the channels of the users online on it, so a
  DM reaches its recipient wherever they are.

  What one reactor turn publishes to a channel (a group commit's events)
  goes out as one message, up to ``BATCH_BYTES``: a publication costs the
  publisher, Redis and every subscriber about the same whatever it holds,
  and one per event was a third of a process's CPU per message.
- ``ctl``: room invalidations (``r <process> <room>``), closings of a
  user's sessions (``c <process> <code> <user> <device or *>``), presence
  changes (``p <process> <seq> <count> <user>``) and goodbyes (``bye
  <process>``).
- ``presence:<process>``: a hash of the process's users and how many
  sessions each has there (and ``\\0seq``, the number of its last change);
  ``alive:<process>`` and ``procs`` (a set of names).  Both keys expire
  unless the process refreshes them (the heartbeat), so a process that dies
  takes its users offline by itself within ``PRESENCE_TTL``.

Redis pub/sub is at most once: a message published while a subscriber's
link is down is gone.  So nothing relies on it alone:

- Every event is committed before it is published, and each stream's ids
  have no gaps.  ``InOrder`` (ordering.py) drops duplicates and holds an
  early event until the gap before it has arrived, or, if it is still
  open after ``GAP_GRACE``, has been read from storage.
- On every (re)connection the subscriber first subscribes, then replays
  from storage everything after the last id delivered of each stream it
  follows: what was published while it was away arrives late, never not
  at all, and in order.
- A stream newly followed here is held until its position has been read
  from storage (after the subscription is live): ``follow`` fires with it,
  and delivery goes on from exactly there, with no gap and no overlap.
- Publications made while the command link is down are not queued: the
  last one of each stream is published again once it is back, and each
  receiver fills the rest from storage.
- A link that stops answering (a paused Redis, a dead network) is noticed
  by a ping every heartbeat and dropped, so that it reconnects.
"""

from __future__ import annotations

import collections
import json
import urllib.parse
from typing import Any, Sequence

from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatserver.hub.counters import RedisCounters
from chatserver.hub.interface import Receiver
from chatserver.hub.ordering import Fetch, InOrder
from chatserver.storage.interface import StoreClosed

log = Logger(namespace="chatserver.hub")

#: A channel's batch is published once it holds this much, without
#: waiting for the end of the reactor turn.
BATCH_BYTES = 256 * 1024

PREFIX = "chat:"
#: Seconds between heartbeats (presence refreshed, links pinged).
HEARTBEAT = 2.0
#: Seconds after its last heartbeat that a process counts as dead.
PRESENCE_TTL = 3 * HEARTBEAT
#: Events read from storage per page when catching up after a reconnection.
REPLAY_PAGE = 500
#: Seconds the start waits for Redis before the server goes on without it
#: (delivery across processes then waits for the links, which keep trying).
START_WAIT = 10.0
#: Channels per SUBSCRIBE command.
SUBSCRIBE_CHUNK = 1000
_SEQ = "\0seq"

#: One presence change, atomically: the count, the change's number, the
#: key's expiry and the announcement.  KEYS: the process's hash, the
#: control channel; ARGV: user, new count, ttl in ms, process name.
_PRESENCE_SCRIPT = """
local n = tonumber(ARGV[2])
if n > 0 then redis.call('HSET', KEYS[1], ARGV[1], n) else redis.call('HDEL', KEYS[1], ARGV[1]) end
local seq = redis.call('HINCRBY', KEYS[1], ARGV[5], 1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', KEYS[2], 'p ' .. ARGV[4] .. ' ' .. seq .. ' ' .. n .. ' ' .. ARGV[1])
return seq
"""


def parse_url(url: str) -> tuple[str, Any, int]:
    """``redis://HOST[:PORT][/DB]`` or ``unix:///PATH[?db=N]`` ->
    (kind, address, db).  ValueError with the reason otherwise."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is not None:
        raise ValueError("must not hold a password")
    if parts.scheme == "redis":
        if not parts.hostname:
            raise ValueError("redis://HOST[:PORT][/DB] needs a host")
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError("the database after the host must be a number")
        return "tcp", (parts.hostname, parts.port or 6379), int(path or 0)
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("unix:///PATH needs the socket's path")
        db = urllib.parse.parse_qs(parts.query).get("db", ["0"])[0]
        if not db.isdigit():
            raise ValueError("db= must be a number")
        return "unix", parts.path, int(db)
    raise ValueError("must be redis://HOST:PORT/DB or unix:///PATH")


def _command_bytes(*args: bytes | str) -> bytes:
    """One command in RESP (the Redis protocol)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _factories() -> tuple[type, type]:
    import txredisapi

    if txredisapi.hiredis is None:
        # It still works, at about half the deliveries per CPU-second of
        # several processes (txredisapi's own parser waits a reactor turn
        # for every bulk string of every message).
        log.warn(
            "hiredis is not installed: Redis replies are parsed slowly (pip install 'chatserver[scale]')"
        )

    class Subscriber(txredisapi.SubscriberProtocol):
        """The subscribed link.  Every reply on it is an array: a
        message, a (un)subscription's confirmation or a pong.  txredisapi
        would hand the second confirmation of a multi-channel SUBSCRIBE to
        whatever command waits next, so this link keeps its own books:
        each channel's confirmations go to its SUBSCRIBE callers in turn,
        pongs to the pings in turn."""

        def connectionMade(self) -> Any:
            self._confirm: dict[bytes, collections.deque[Deferred[None]]] = {}
            self._pongs: collections.deque[Deferred[None]] = collections.deque()
            return super().connectionMade()

        def replyReceived(self, reply: Any) -> None:
            if not isinstance(reply, list) or not reply:
                return super().replyReceived(reply)
            kind = reply[0]
            if kind == b"message" and len(reply) == 3:
                self.factory.hub._received(reply[1], reply[2])
            elif kind == b"subscribe" and len(reply) == 3:
                waiters = self._confirm.get(reply[1])
                if waiters:
                    waiters.popleft().callback(None)
                    if not waiters:
                        del self._confirm[reply[1]]
            elif kind == b"pong" and self._pongs:
                self._pongs.popleft().callback(None)
            # unsubscribe confirmations: nothing waits for them

        def subscribe_all(self, channels: list[bytes]) -> Deferred[Any]:
            waiting = []
            for n in range(0, len(channels), SUBSCRIBE_CHUNK):
                chunk = channels[n : n + SUBSCRIBE_CHUNK]
                for channel in chunk:
                    d: Deferred[None] = Deferred()
                    self._confirm.setdefault(channel, collections.deque()).append(d)
                    waiting.append(d)
                self.transport.write(_command_bytes(b"SUBSCRIBE", *chunk))
            return defer.gatherResults(waiting)

        def unsubscribe_all(self, channels: list[bytes]) -> None:
            self.transport.write(_command_bytes(b"UNSUBSCRIBE", *channels))

        def ping_link(self) -> Deferred[None]:
            d: Deferred[None] = Deferred()
            self._pongs.append(d)
            self.transport.write(_command_bytes(b"PING"))
            return d

    class Factory(txredisapi.RedisFactory):
        hub: RedisHub
        kind = "commands"
        # Reconnect soon, and keep trying (txredisapi's backoff).
        initialDelay = 0.1
        maxDelay = 2.0

        def addConnection(self, conn: Any) -> None:
            super().addConnection(conn)
            if conn in self.pool:
                self.hub._link_up(self.kind, conn)
                conn.whenDisconnected().addCallback(lambda _: self.hub._link_down(self.kind, conn))

    class SubscriberFactory(Factory):
        protocol = Subscriber
        kind = "subscriber"

    return Factory, SubscriberFactory


class RedisHub:
    shared = True

    def __init__(
        self,
        url: str,
        fetch: Fetch,
        name: str,
        *,
        reactor: Any,
        prefix: str = PREFIX,
        heartbeat: float = HEARTBEAT,
    ) -> None:
        """``fetch`` reads a gap's events from storage (``Storage.history``);
        ``name``: this process's, unique among all that share the Redis."""
        self.url = url
        self.kind, self.address, self.db = parse_url(url)
        self.name = name
        self._fetch = fetch
        self.reactor = reactor
        self.prefix = prefix
        self.channels = f"{prefix}{self.db}:"
        self.heartbeat = heartbeat
        self.ttl_ms = int(heartbeat * 3 * 1000)
        self._receiver: Receiver | None = None
        self._order: InOrder | None = None
        #: stream -> sessions here that follow it
        self._followed: collections.Counter[str] = collections.Counter()
        #: Streams whose position is being read (after their subscription
        #: is live): their events wait here, and so do their follow() callers.
        self._pending: dict[str, list[tuple[int, bytes]]] = {}
        self._pending_waiters: dict[str, list[Deferred[int | None]]] = {}
        #: user -> sessions of theirs here
        self._here: collections.Counter[str] = collections.Counter()
        self._arrival_waiters: dict[str, list[Deferred[None]]] = {}
        #: What the others have: process -> (last change number, user -> sessions).
        self._others: dict[str, tuple[int, dict[str, int]]] = {}
        #: The last unpublished event of each stream, while the command link is down.
        #: The last publication per channel (and invalidation per room) that
        #: Redis has not yet been seen to take: sent since the last
        #: heartbeat, the one before, or while the link was down.  Published
        #: again when the link comes back, for a receiver whose link stayed
        #: up and so does not replay (it fills the rest from storage).
        self._unconfirmed: dict[bytes, bytes] = {}
        self._confirming: dict[bytes, bytes] = {}
        #: channel -> (its publications of this reactor turn, their bytes),
        #: in the order the channels were first published to.
        self._batches: dict[bytes, tuple[list[bytes], int]] = {}
        self._flush_call: Any = None
        self._commands: Any = None
        self._subscriber: Any = None
        self._factories: list[Any] = []
        self._beat: task.LoopingCall | None = None
        self._stopping = False
        self._down_since: dict[str, float] = {}
        self._ping_pending = False
        self._beating = False
        #: For the metrics and the tests.
        self.stats = {"reconnects": 0, "replayed": 0, "outage_seconds": 0.0, "publications": 0}
        #: Rate limits and login throttles shared with the other processes.
        self.counters = RedisCounters(self._command, prefix)
        self._started: Deferred[None] | None = None

    @property
    def connected(self) -> bool:
        """Both links up and answering (for the metrics)."""
        return self._commands is not None and self._subscriber is not None and not self._down_since

    # --- names -------------------------------------------------------------

    # Keys live in the database number; channels are the server's
    # whole, so they carry the number too.

    def _stream_channel(self, stream: str) -> bytes:
        return f"{self.channels}s:{stream}".encode()

    def _user_channel(self, user: str) -> bytes:
        return f"{self.channels}u:{user}".encode()

    @property
    def _ctl(self) -> bytes:
        return f"{self.channels}ctl".encode()

    # --- start and stop -------------------------------------------------------

    def start(self, receiver: Receiver, positions: dict[str, int]) -> Deferred[None]:
        """Connect both links; fires once they are up and subscribed (the
        first time; later reconnections happen by themselves)."""
        Factory, SubscriberFactory = _factories()
        self._receiver = receiver
        # Positions are known only for streams followed here; the others
        # are read when they are followed (see follow).
        # Other processes' publications overtake each other: a gap is
        # read from storage only if it stays open (ordering.GAP_GRACE).
        self._order = InOrder(receiver, self._fetch, {}, clock=self.reactor)
        self._started = Deferred()
        for factory_class in (Factory, SubscriberFactory):
            factory = factory_class(
                self.url,
                self.db or None,
                1,
                isLazy=True,
                charset=None if factory_class is SubscriberFactory else "utf-8",
                replyTimeout=None,
                convertNumbers=False,
            )
            factory.hub = self
            factory.startConnecting(self._endpoint())
            self._factories.append(factory)
        self._beat = task.LoopingCall(self._tick)
        self._beat.clock = self.reactor
        self._beat.start(self.heartbeat, now=False)
        started = self._started

        def too_slow() -> None:
            if self._started is started:
                self._started = None
                log.warn(
                    "redis at {where} is not reachable yet; starting without it (still trying)",
                    where=self._where(),
                )
                started.callback(None)

        timer = self.reactor.callLater(START_WAIT, too_slow)
        started.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])
        return started

    def _endpoint(self) -> Any:
        if self.kind == "unix":
            return UNIXClientEndpoint(self.reactor, self.address, timeout=5)
        host, port = self.address
        return TCP4ClientEndpoint(self.reactor, host, port, timeout=5)

    @defer.inlineCallbacks
    def stop(self) -> Any:
        self._stopping = True
        if self._beat is not None and self._beat.running:
            self._beat.stop()
        if self._order is not None:
            self._order.stop()
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
            self._flush()  # what was committed goes out before the goodbye
        if self._commands is not None:
            try:
                yield self._command("DEL", self._presence_key(self.name), self._alive_key(self.name))
                yield self._command("SREM", self._procs_key(), self.name)
                yield self._command("PUBLISH", self._ctl, f"bye {self.name}")
            except Exception:
                pass  # Redis is away: the keys expire by themselves
        for factory in self._factories:
            yield factory.disconnect()
        self._factories = []
        self._commands = self._subscriber = None
        for waiters in list(self._pending_waiters.values()) + list(self._arrival_waiters.values()):
            for d in waiters:
                if not d.called:
                    d.callback(None)
        self._pending_waiters.clear()
        self._arrival_waiters.clear()

    # --- links -------------------------------------------------------------------

    def _command(self, *args: Any) -> Deferred[Any]:
        conn = self._commands
        if conn is None:
            return defer.fail(ConnectionError("redis command link is down"))
        return conn.execute_command(*args)

    def _link_up(self, kind: str, conn: Any) -> None:
        if self._stopping:
            conn.transport.loseConnection()
            return
        again = kind in self._down_since
        if kind == "commands":
            self._commands = conn
            self._announce_presence()
            unsent = {**self._confirming, **self._unconfirmed}
            self._confirming, self._unconfirmed = {}, {}
            for key, message in unsent.items():
                # (an invalidation is kept per room: ctl \0 room)
                self._command("PUBLISH", key.split(b"\0", 1)[0], message).addErrback(lambda _: None)
        else:
            self._subscriber = conn
            self._ping_pending = False
            self._resubscribe(conn, again=again).addErrback(
                lambda f: log.failure("redis resubscription failed", f)
            )
        self._maybe_started()

    def _back(self, kind: str) -> None:
        """A link answers again (its first reply after a loss): the outage
        ends here, not at the reconnection, which a paused Redis accepts."""
        down = self._down_since.pop(kind, None)
        if down is None:
            return
        outage = self.reactor.seconds() - down
        self.stats["reconnects"] += 1
        self.stats["outage_seconds"] += outage
        log.warn(
            "redis {kind} link to {where} back after {seconds:.1f} s",
            kind=kind,
            where=self._where(),
            seconds=outage,
        )

    def _link_down(self, kind: str, conn: Any) -> None:
        if kind == "commands" and self._commands is conn:
            self._commands = None
        elif kind == "subscriber" and self._subscriber is conn:
            self._subscriber = None
        else:
            return
        if self._stopping:
            return
        self._down_since.setdefault(kind, self.reactor.seconds())
        log.warn("redis {kind} link to {where} lost; reconnecting", kind=kind, where=self._where())

    def _where(self) -> str:
        return str(self.address) if self.kind == "unix" else f"{self.address[0]}:{self.address[1]}"

    def _maybe_started(self) -> None:
        if self._started is not None and self._commands is not None and self._subscriber is not None:
            d, self._started = self._started, None
            # After the first heartbeat's view of the others.
            self._heartbeat().addBoth(lambda _: d.callback(None))

    @defer.inlineCallbacks
    def _resubscribe(self, conn: Any, again: bool) -> Any:
        """Subscribe first, then catch up from storage: whatever was
        published while the link was down is read back, in order."""
        channels = [self._ctl]
        channels += [self._stream_channel(s) for s in self._followed]
        channels += [self._user_channel(u) for u in self._here]
        yield conn.subscribe_all(channels)
        if conn is not self._subscriber:
            return
        self._back("subscriber")
        for user in list(self._here):
            self._arrived_live(user)
        # Invalidations sent while the link was down are gone: the rooms
        # that matter here (followed) are read again.
        if again and self._receiver is not None:
            for stream in [s for s in self._followed if s.startswith("room:")]:
                self._receiver.room_changed(stream[5:])
            # So are closings (a disabled account, a removed device).
            self._receiver.recheck_sessions()
        assert self._order is not None
        positions = dict(self._order.positions)
        for stream in list(self._followed):
            if stream in self._pending or stream not in positions:
                self._establish(stream)
            else:
                self._replay(stream, positions[stream])
        # DM streams seen here for the users online here.
        for stream, position in positions.items():
            if stream.startswith("dm:") and stream not in self._followed:
                _, a, b = stream.split(":", 2)
                if a in self._here or b in self._here:
                    self._replay(stream, position)

    @defer.inlineCallbacks
    def _replay(self, stream: str, after: int) -> Any:
        while True:
            try:
                texts = yield self._fetch(stream, after, None, REPLAY_PAGE)  # type: ignore[arg-type]
            except StoreClosed:
                return  # shutting down
            except Exception:
                log.failure("replaying {stream} after {after} failed", Failure(), stream=stream, after=after)
                return
            for text in texts:
                event_id = json.loads(text)["id"]
                self.stats["replayed"] += 1
                self._offer(stream, event_id, text.encode("utf-8"))
                after = event_id
            if len(texts) < REPLAY_PAGE:
                return

    # --- what arrives ---------------------------------------------------------------

    def _received(self, channel: bytes, message: bytes) -> None:
        prefix = self.channels.encode()
        if not channel.startswith(prefix):
            return
        name = channel[len(prefix) :]
        try:
            if name.startswith(b"s:"):
                stream = name[2:].decode()
                for item in message.split(b"\n"):
                    head, _, encoded = item.partition(b":")
                    self._offer(stream, int(head), encoded)
            elif name.startswith(b"u:"):
                lines = message.split(b"\n")
                for stream_line, item in zip(lines[::2], lines[1::2], strict=True):
                    head, _, encoded = item.partition(b":")
                    self._offer(stream_line.decode(), int(head), encoded)
            elif name == b"ctl":
                self._control(message.decode())
        except (ValueError, UnicodeDecodeError):
            log.warn("redis: a malformed message on {channel}", channel=channel[:80])

    def _offer(self, stream: str, event_id: int, encoded: bytes) -> None:
        pending = self._pending.get(stream)
        if pending is not None:
            pending.append((event_id, encoded))
        elif self._order is not None:
            self._order.offer(stream, event_id, encoded)

    def _control(self, text: str) -> None:
        kind, _, rest = text.partition(" ")
        if kind == "r":
            process, _, room = rest.partition(" ")
            if process != self.name and self._receiver is not None:
                self._receiver.room_changed(room)
        elif kind == "c":
            process, code, user, device = rest.split(" ", 3)
            if process != self.name and self._receiver is not None:
                self._receiver.close_sessions(user, None if device == "*" else device, code)
        elif kind == "p":
            process, seq, count, user = rest.split(" ", 3)
            if process != self.name:
                self._presence_change(process, int(seq), user, int(count))
        elif kind == "bye":
            self._others.pop(rest, None)

    def _presence_change(self, process: str, seq: int, user: str, count: int) -> None:
        known_seq, users = self._others.get(process, (0, {}))
        if seq <= known_seq:
            return  # older than what a snapshot already told
        if count > 0:
            users[user] = count
        else:
            users.pop(user, None)
        self._others[process] = (seq, users)

    # --- following ----------------------------------------------------------------

    def follow(self, stream: str) -> Deferred[int | None]:
        """Fires with the stream's last id once its events after it will be
        delivered here (immediately if it was followed here already)."""
        self._followed[stream] += 1
        if self._followed[stream] > 1 and stream not in self._pending:
            assert self._order is not None
            return defer.succeed(self._order.positions.get(stream))
        d: Deferred[int | None] = Deferred()
        self._pending_waiters.setdefault(stream, []).append(d)
        if self._followed[stream] == 1:
            self._pending[stream] = []
            conn = self._subscriber
            if conn is not None:
                conn.subscribe_all([self._stream_channel(stream)]).addCallback(
                    lambda _: self._establish(stream)
                )
            # else: the reconnection subscribes and establishes it
        return d

    def _establish(self, stream: str) -> None:
        """The subscription is live: read where the stream is, and deliver
        from there on."""
        if stream not in self._followed:
            return
        self._pending.setdefault(stream, [])
        d = self._fetch(stream, None, None, 1)  # type: ignore[arg-type]

        def found(texts: list[str]) -> None:
            held = self._pending.pop(stream, None)
            if held is None or stream not in self._followed:
                return
            position = json.loads(texts[-1])["id"] if texts else 0
            assert self._order is not None
            self._order.forget(stream)
            # What came while the position was read is delivered even if
            # the position counts it already (as the in-process hub does
            # with what comes between a follow and a welcome: a client
            # keeps each id once): a session's own first events (its
            # "joined") must reach it live.
            start = min([position] + [event_id - 1 for event_id, _ in held])
            self._order.positions[stream] = start
            for event_id, encoded in sorted(held):
                self._order.offer(stream, event_id, encoded)
            for waiter in self._pending_waiters.pop(stream, []):
                waiter.callback(position)

        def failed(failure: Failure) -> None:
            if self._stopping or failure.check(StoreClosed):
                return  # shutting down
            log.failure("reading the position of {stream} failed; trying again", failure, stream=stream)
            self.reactor.callLater(self.heartbeat, self._establish, stream)

        d.addCallbacks(found, failed)

    def unfollow(self, stream: str) -> None:
        count = self._followed[stream] - 1
        if count > 0:
            self._followed[stream] = count
            return
        del self._followed[stream]
        self._pending.pop(stream, None)
        for waiter in self._pending_waiters.pop(stream, []):
            waiter.callback(None)
        if self._order is not None:
            self._order.forget(stream)  # the next follow reads it afresh
        conn = self._subscriber
        if conn is not None:
            conn.unsubscribe_all([self._stream_channel(stream)])

    # --- publishing -----------------------------------------------------------------

    def publish(self, stream: str, event_id: int, encoded: bytes, users: Sequence[str] = ()) -> None:
        self._offer(stream, event_id, encoded)
        item = b"%d:" % event_id + encoded
        self._batch(self._stream_channel(stream), item)
        for user in users:
            self._batch(self._user_channel(user), stream.encode() + b"\n" + item)

    def _batch(self, key: bytes, item: bytes) -> None:
        items, size = self._batches.get(key) or ([], 0)
        items.append(item)
        size += len(item) + 1
        if size >= BATCH_BYTES:
            self._batches.pop(key, None)
            self._send(key, b"\n".join(items))
            return
        self._batches[key] = (items, size)
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        batches, self._batches = self._batches, {}
        for key, (items, _) in batches.items():
            self._send(key, b"\n".join(items))

    def _send(self, key: bytes, message: bytes) -> None:
        self.stats["publications"] += 1
        self._unconfirmed[key] = message
        if self._commands is None:
            return
        self._command("PUBLISH", key.split(b"\0", 1)[0], message).addErrback(lambda _: None)

    def invalidate(self, room: str) -> None:
        self._send(self._ctl + b"\0" + room.encode(), f"r {self.name} {room}".encode())

    def close_sessions(self, user: str, device: str | None, code: str) -> None:
        # Kept until confirmed, like an invalidation: a closing lost while
        # the link is down would leave a disabled account chatting.
        # "*" (all devices) is no device id.
        key = f"\0c\0{user}\0{device or '*'}".encode()
        self._send(self._ctl + key, f"c {self.name} {code} {user} {device or '*'}".encode())

    # --- presence ---------------------------------------------------------------------

    def _presence_key(self, process: str) -> str:
        return f"{self.prefix}presence:{process}"

    def _alive_key(self, process: str) -> str:
        return f"{self.prefix}alive:{process}"

    def _procs_key(self) -> str:
        return f"{self.prefix}procs"

    def arrived(self, user: str) -> Deferred[None]:
        """Fires once the user's direct messages will be delivered here."""
        self._here[user] += 1
        self._write_presence(user)
        if self._here[user] > 1 and user not in self._arrival_waiters:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        first = user not in self._arrival_waiters
        self._arrival_waiters.setdefault(user, []).append(d)
        conn = self._subscriber
        if first and conn is not None:
            conn.subscribe_all([self._user_channel(user)]).addCallback(lambda _: self._arrived_live(user))
        return d

    def _arrived_live(self, user: str) -> None:
        for waiter in self._arrival_waiters.pop(user, []):
            waiter.callback(None)

    def left(self, user: str) -> None:
        if not self._here[user]:
            self._here.pop(user, None)
            return
        self._here[user] -= 1
        self._write_presence(user)
        if self._here[user]:
            return
        del self._here[user]
        self._arrived_live(user)  # nobody waits any more
        conn = self._subscriber
        if conn is not None:
            conn.unsubscribe_all([self._user_channel(user)])
        if self._order is not None:
            # Its DM streams: read afresh if the user comes back (unless
            # the other user of one is still here, or a session follows it).
            for stream in [s for s in self._order.positions if s.startswith("dm:")]:
                _, a, b = stream.split(":", 2)
                if user in (a, b) and a not in self._here and b not in self._here:
                    self._order.forget(stream)

    def _write_presence(self, user: str) -> None:
        if self._commands is None:
            return  # written whole when the link is back (_announce_presence)
        self._command(
            "EVAL",
            _PRESENCE_SCRIPT,
            2,
            self._presence_key(self.name),
            self._ctl,
            user,
            self._here.get(user, 0),
            self.ttl_ms,
            self.name,
            _SEQ,
        ).addErrback(lambda f: log.warn("redis presence write failed: {why}", why=f.value))

    def _announce_presence(self) -> None:
        """The whole of this process's presence, after (re)connecting."""
        key = self._presence_key(self.name)
        self._command("DEL", key).addErrback(lambda _: None)
        for user in list(self._here):
            self._write_presence(user)
        self._command("SET", self._alive_key(self.name), "1", "PX", self.ttl_ms).addErrback(lambda _: None)
        self._command("SADD", self._procs_key(), self.name).addErrback(lambda _: None)

    def _tick(self) -> None:
        """Every heartbeat.  Never waits for Redis (the loop must go on
        when Redis does not answer): a link whose last ping, or last
        heartbeat's commands, are still unanswered is dropped."""
        self._ping_subscriber()
        if self._beating:
            conn = self._commands
            if conn is not None:
                log.warn("redis command link to {where} does not answer; reconnecting", where=self._where())
                conn.transport.abortConnection()
            return
        self._heartbeat()

    @defer.inlineCallbacks
    def _heartbeat(self) -> Any:
        """Refresh this process's keys and learn who else is alive (and
        what they have)."""
        if self._commands is None or self._beating:
            return
        self._beating = True
        try:
            yield self._beat_once()
        finally:
            self._beating = False

    @defer.inlineCallbacks
    def _beat_once(self) -> Any:
        try:
            # Redis carries out one link's commands in order: once this is
            # answered, every publication sent before it has been taken.
            self._confirming, self._unconfirmed = {**self._confirming, **self._unconfirmed}, {}
            yield self._command("SET", self._alive_key(self.name), "1", "PX", self.ttl_ms)
            self._confirming = {}
            self._back("commands")
            yield self._command("PEXPIRE", self._presence_key(self.name), self.ttl_ms)
            yield self._command("SADD", self._procs_key(), self.name)
            names = sorted(
                n if isinstance(n, str) else n.decode()
                for n in (yield self._command("SMEMBERS", self._procs_key()))
            )
            others = [n for n in names if n != self.name]
            alive = (yield self._command("MGET", *[self._alive_key(n) for n in others])) if others else []
            for process, flag in zip(others, alive, strict=True):
                if flag is None:
                    self._others.pop(process, None)
                    yield self._command("SREM", self._procs_key(), process)
                    continue
                snapshot = yield self._command("HGETALL", self._presence_key(process))
                self._apply_snapshot(process, snapshot)
            for process in [p for p in self._others if p not in others]:
                del self._others[process]
        except Exception as e:
            log.warn("redis heartbeat failed: {why}", why=e)

    def _apply_snapshot(self, process: str, snapshot: Any) -> None:
        if isinstance(snapshot, dict):
            items = list(snapshot.items())
        else:
            items = list(zip(snapshot[::2], snapshot[1::2], strict=True))
        fields = {(k if isinstance(k, str) else k.decode()): int(v) for k, v in items}
        seq = fields.pop(_SEQ, 0)
        known_seq, _ = self._others.get(process, (-1, {}))
        if seq >= known_seq:
            self._others[process] = (seq, {u: n for u, n in fields.items() if n > 0})

    def _ping_subscriber(self) -> None:
        conn = self._subscriber
        if conn is None:
            return
        if self._ping_pending:
            # No answer for a whole heartbeat: a paused Redis, a dead
            # network.  Drop the link; the reconnection replays.
            log.warn("redis subscriber link to {where} does not answer; reconnecting", where=self._where())
            self._ping_pending = False
            conn.transport.abortConnection()
            return
        self._ping_pending = True

        def answered(_: Any) -> None:
            self._ping_pending = False

        conn.ping_link().addCallbacks(answered, lambda _: None)

    def is_online(self, user: str) -> bool:
        if self._here.get(user):
            return True
        return any(user in users for _, users in self._others.values())

    def online_count(self) -> int:
        users = set(self._here)
        for _, theirs in self._others.values():
            users.update(theirs)
        return len(users)

    def where(self, user: str) -> set[str]:
        places = {p for p, (_, users) in self._others.items() if user in users}
        if self._here.get(user):
            places.add(self.name)
        return places
