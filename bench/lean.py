"""The lean fan-out load generator: enough receivers and messages to
saturate the server's core from one generator core.

Accounts log in through the client library (the real handshake, the real
login).  Then each connection's reading is taken over:

* every receiver still decrypts and authenticates every record it gets
  (``SecureChannel.open_data``), and counts the ``msg`` events in it
  without parsing the JSON (the server's compact encoding writes
  ``"type":"msg"`` once per message event, and a body's quotes are
  escaped, so the pattern cannot come from inside a message);
* *sampled* receivers (``--sample`` of them) parse every event and check
  that each sender's messages arrive complete and in order, and time them
  (the body carries the send time), so the latency figures come from them;
* senders write ``say`` requests without refs, several per record, and
  only count what comes back (errors are counted too);
* the receivers that are not sampled, and the senders, are read off the
  event loop by a :class:`BulkReader`, as the peers' load generator does
  (one epoll over their sockets, polled every millisecond): the records
  are still all opened, but Twisted's dispatch per read, which was most
  of the generator's CPU at 100 receivers, is saved.  The sampled
  receivers stay on the reactor, so their timing is not rounded to the
  poll.

Every message goes to every receiver in the room's one stream order, so
the number of messages all receivers have is the smallest receiver count;
the closed loop keeps ``window`` messages outstanding above it.
"""

from __future__ import annotations

import json
import select
import time
from pathlib import Path
from typing import Any, Callable

from harness import (
    BODY_SIZE,
    PASSWORD,
    ROOM,
    SETUP_CONCURRENCY,
    Meter,
    bounded_pool,
    latency_ms,
    py_spy,
    rate_figures,
    sleep,
    within,
)
from scale_out import connections_by_worker, server_part
from twisted.internet import task
from twisted.internet.defer import Deferred

from chatclient.session import ChatSession

MSG = b'"type":"msg"'
ERROR = b'"type":"error"'
#: Bytes of requests the senders put in one record (the line limit
#: allows 49135 of plaintext), and about what one encrypted say takes.
RECORD_BYTES = 40000
SEALED_REQUEST_BYTES = 700


class _Reader:
    """Takes over a session's connection: lines in, records opened."""

    def __init__(self, loop: "LeanFanout", session: ChatSession, index: int, sampled: bool) -> None:
        self.loop = loop
        self.channel = session.protocol.channel
        self.index = index
        self.sampled = sampled
        protocol = session.protocol
        # Take over mid-stream: what the previous reader (the line receiver,
        # or an earlier _Reader) holds of a line not yet complete.
        previous = getattr(protocol.dataReceived, "__self__", None)
        if isinstance(previous, _Reader):
            self.partial = previous.partial
        else:
            self.partial, protocol._buffer = protocol._buffer, b""
        self.count = 0
        self.errors = 0
        self.transport = protocol.transport
        protocol.dataReceived = self.data  # type: ignore[method-assign]

    def data(self, data: bytes) -> None:
        *lines, self.partial = (self.partial + data).split(b"\n")
        loop = self.loop
        opened = self.channel.open_data
        got = 0
        for line in lines:
            plaintext = opened(line)
            if plaintext is None:
                continue  # KEY_UPDATE
            if self.sampled:
                got += loop.check(self, plaintext)
            else:
                got += plaintext.count(MSG)
            if ERROR in plaintext:
                self.errors += plaintext.count(ERROR)
                loop.error_examples.append(plaintext[:300].decode("utf-8", "replace"))
        if got and self.index >= 0:  # senders get the room's messages too: not deliveries
            self.count += got
            if loop.measuring:
                loop.deliveries += got
                loop.records += len(lines)
            loop.changed()


class BulkReader:
    """Reads some connections off the event loop: one epoll over their
    sockets, polled every ``interval`` seconds, one ``recv`` per ready
    socket, handed to its :class:`_Reader` (which opens every record).
    A closed or failed socket goes back to the reactor, which reports the
    loss as usual."""

    def __init__(self, reactor: Any, readers: list[_Reader], interval: float = 0.001) -> None:
        self.epoll = select.epoll()
        self.by_fd: dict[int, tuple[_Reader, Any]] = {}
        for reader in readers:
            transport = reader.transport
            transport.stopReading()
            fd = transport.fileno()
            self.by_fd[fd] = (reader, transport)
            self.epoll.register(fd, select.EPOLLIN)
        self.call = task.LoopingCall(self.poll)
        self.call.clock = reactor
        self.call.start(interval)

    def poll(self) -> None:
        for fd, _ in self.epoll.poll(0):
            reader, transport = self.by_fd[fd]
            try:
                data = transport.socket.recv(262144)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                reader.data(data)
            else:
                self._give_back(fd)

    def _give_back(self, fd: int) -> None:
        _, transport = self.by_fd.pop(fd)
        self.epoll.unregister(fd)
        transport.startReading()

    def stop(self) -> None:
        if self.call.running:
            self.call.stop()
        for fd in list(self.by_fd):
            self._give_back(fd)
        self.epoll.close()


class LeanFanout:
    def __init__(
        self,
        reactor: Any,
        receivers: list[ChatSession],
        senders: list[ChatSession],
        window: int,
        sample: int,
        room: str = ROOM,
        sealed: Any = None,
        body_size: int = BODY_SIZE,
    ) -> None:
        """``sealed``: for an end-to-end encrypted room, an object with
        ``request(sender index, room, body)`` (the say request, its body
        encrypted) and ``body(event)`` (what a sampled receiver reads)."""
        self.reactor = reactor
        self.room = room
        self.sealed = sealed
        self.window = window
        self.n_receivers = len(receivers)
        step = max(1, len(receivers) // max(1, sample))
        self.readers = [
            _Reader(self, session, i, sampled=i % step == 0 and i // step < sample)
            for i, session in enumerate(receivers)
        ]
        self.sender_readers = [_Reader(self, session, -1, sampled=False) for session in senders]
        self.bulk = BulkReader(reactor, [r for r in self.readers if not r.sampled] + self.sender_readers)
        self.senders = senders
        self.expected = {r.index: [0] * len(senders) for r in self.readers if r.sampled}
        self.next_seq = [0] * len(senders)
        self.sent_total = 0
        self.completed = 0
        self.measuring = False
        self.stopping = False
        self.deliveries = 0
        #: Records the receivers got (with messages) while measuring: the
        #: server's per-record costs (sealing, writing) are shared by the
        #: messages of a record.
        self.records = 0
        self.messages_completed = 0
        self.latencies: list[int] = []
        self.order_errors = 0
        self.unexpected = 0
        self.error_examples: list[str] = []
        self._pending_check = False
        self._next_sender = 0
        self.drained: Deferred | None = None
        self.body_size = body_size
        self.pad = "x" * body_size
        for session in receivers + senders:
            session.closed.addCallback(self._lost)
        self.lost_sessions = 0

    def _lost(self, info: Any) -> Any:
        if not self.stopping:
            self.lost_sessions += 1
            self.error_examples.append(f"session lost during the run: {info}")
        return info

    def check(self, reader: _Reader, plaintext: bytes) -> int:
        """A sampled receiver: every message parsed, in order per sender."""
        now = time.perf_counter_ns()
        expected = self.expected[reader.index]
        got = 0
        for event in json.loads(plaintext):
            if event.get("type") != "msg":
                continue
            got += 1
            try:
                text = self.sealed.body(event) if self.sealed is not None else event["body"]
                s_text, seq_text, sent_text, _ = text.split(" ", 3)
                s, seq, sent = int(s_text), int(seq_text), int(sent_text)
            except (KeyError, ValueError):
                self.unexpected += 1
                continue
            if seq != expected[s]:
                self.order_errors += 1
            expected[s] = seq + 1
            if self.measuring:
                self.latencies.append(now - sent)
        return got

    def changed(self) -> None:
        # Once per reactor turn: the smallest count, then refill the window.
        if not self._pending_check:
            self._pending_check = True
            self.reactor.callLater(0, self._refill)

    def _refill(self) -> None:
        self._pending_check = False
        done = min(r.count for r in self.readers)
        if self.measuring:
            self.messages_completed += done - self.completed
        self.completed = done
        if self.stopping:
            if done >= self.sent_total and self.drained is not None and not self.drained.called:
                self.drained.callback(None)
            return
        self.send(self.window - (self.sent_total - done))

    def send(self, count: int) -> None:
        """``count`` more messages, round robin over the senders, each
        sender's share in one record."""
        if count <= 0:
            return
        batches: list[list[dict[str, Any]]] = [[] for _ in self.senders]
        for _ in range(count):
            s = self._next_sender
            self._next_sender = (s + 1) % len(self.senders)
            seq = self.next_seq[s]
            self.next_seq[s] = seq + 1
            body = f"{s} {seq} {time.perf_counter_ns()} "
            body += self.pad[: self.body_size - len(body)]
            if self.sealed is not None:
                batches[s].append(self.sealed.request(s, self.room, body))
            else:
                batches[s].append({"type": "say", "room": self.room, "body": body})
        self.sent_total += count
        for session, batch in zip(self.senders, batches, strict=True):
            protocol = session.protocol
            # Records within the line limit (larger bodies, and encrypted
            # requests, take more records).
            each = SEALED_REQUEST_BYTES if self.sealed is not None else self.body_size + 60
            step = max(1, RECORD_BYTES // each)
            for start in range(0, len(batch), step):
                protocol.transport.write(protocol.channel.seal_events(batch[start : start + step]))

    def finish(self) -> None:
        """Back to the reactor's reading (the sessions outlive this loop)."""
        self.bulk.stop()

    def drain(self) -> Deferred:
        self.stopping = True
        self.drained = Deferred()
        if self.completed >= self.sent_total:
            self.drained.callback(None)
        return self.drained

    async def run(
        self, meter: Meter, warmup: float, duration: float, measuring: Callable[[float], Any] | None = None
    ) -> dict[str, Any]:
        """``measuring(duration)`` is called as the measured window opens
        (to start a profiler for it)."""
        reactor = self.reactor
        self.send(self.window)
        await sleep(reactor, warmup)
        meter.start()
        if measuring is not None:
            measuring(duration)
        self.measuring = True
        await sleep(reactor, duration)
        self.measuring = False
        figures = meter.stop()
        stuck = 0
        try:
            await within(reactor, self.drain(), 15.0, "draining outstanding messages")
        except TimeoutError:
            stuck = self.sent_total - self.completed
        self.finish()
        wall = figures["wall_s"]
        errors = sum(r.errors for r in self.readers + self.sender_readers)
        figures.update(
            receivers=self.n_receivers,
            sampled_receivers=len(self.expected),
            senders=len(self.senders),
            window=self.window,
            deliveries=self.deliveries,
            deliveries_per_s=self.deliveries / wall,
            deliveries_per_record=self.deliveries / self.records if self.records else None,
            deliveries_per_server_cpu_s=self.deliveries / figures["server_cpu_s"]
            if figures["server_cpu_s"] > 0
            else None,
            deliveries_per_all_cpu_s=self.deliveries / figures["all_cpu_s"]
            if figures.get("all_cpu_s")
            else None,
            messages_completed=self.messages_completed,
            messages_per_s=self.messages_completed / wall,
            latency=latency_ms(self.latencies),
            total_sent=self.sent_total,
            stuck_after_drain=stuck,
            order_errors=self.order_errors,
            unexpected_events=self.unexpected,
            lost_sessions=self.lost_sessions,
            errors=errors,
            error_examples=sorted(set(self.error_examples))[:5],
        )
        return figures


async def calibrate(
    reactor: Any, make: Any, meter: Meter, windows: list[int], seconds: float = 2.0
) -> tuple[int, list[dict[str, Any]]]:
    """Try each window for ``seconds`` on the same connections; the one
    with the most deliveries per second (as the peers' harness does)."""
    tried = []
    for window in windows:
        loop = make(window)
        figures = await loop.run(meter, 0.5, seconds)
        tried.append({"window": window, "deliveries_per_s": figures["deliveries_per_s"]})
    best = max(tried, key=lambda t: t["deliveries_per_s"])
    return best["window"], tried


#: Windows tried by the calibration, in messages outstanding in all.
CALIBRATION_WINDOWS = [25, 50, 100, 200, 400, 800, 1600]
#: case -> calibrated window, kept across the runs of one bench.
CALIBRATED: dict[str, int] = {}


async def _sessions(clients: Any, receivers: int, senders: int) -> tuple[list, list, float]:
    names = [f"recv-{i:04d}" for i in range(receivers)] + [f"send-{i:03d}" for i in range(senders)]
    t0 = time.perf_counter()
    sessions = await clients.register_all(names)
    setup_s = time.perf_counter() - t0
    # With workers, a process learns of members who joined on another
    # through the hub: asked at once, it may not list them yet.
    deadline = time.monotonic() + 10.0
    while True:
        members = await clients.wait(sessions[-1].who(ROOM), "who")
        if len(members) == len(names) or time.monotonic() > deadline:
            break
        await sleep(clients.reactor, 0.1)
    if len(members) != len(names):
        await clients.close_all(sessions)
        raise RuntimeError(f"expected {len(names)} lobby members, the server lists {len(members)}")
    return sessions[:receivers], sessions[receivers:], setup_s


async def scenario_fanout(
    reactor: Any,
    args: Any,
    clients: Any,
    meter: Meter,
    case: str,
    receivers: int,
    server: Any = None,
    encrypted: bool = False,
) -> dict[str, Any]:
    """``fanout_rN``: N receivers, ``args.senders`` senders, closed loop
    with a window calibrated once per case (first run).  With ``server``
    (a scale-out run): how the connections are spread over its processes,
    and with ``--profile-dir`` a py-spy profile of each serving process
    over the measured window."""
    recv, send, setup_s = await _sessions(clients, receivers, args.senders)
    room, sealed = ROOM, None
    if encrypted:
        # The same members in an end-to-end encrypted room, each with a
        # device; the senders send real Megolm ciphertext.
        import e2e_bench

        t0 = time.perf_counter()
        room = e2e_bench.ROOM
        sealed = await e2e_bench.Sealed.make(clients, recv, send, room)
        setup_s += time.perf_counter() - t0
    spread: dict[str, int] = {}
    measuring = None
    if server is not None:
        spread = connections_by_worker(server.proc, server.port)
        if args.profile_dir:
            measuring = lambda seconds: profile_serving(server, Path(args.profile_dir), case, seconds)  # noqa: E731
    try:
        calibration: list[dict[str, Any]] = []
        if case not in CALIBRATED:
            if args.window_total:
                CALIBRATED[case] = args.window_total
            else:
                CALIBRATED[case], calibration = await calibrate(
                    reactor,
                    lambda w: LeanFanout(reactor, recv, send, w, args.sample, room, sealed, args.body_size),
                    meter,
                    CALIBRATION_WINDOWS,
                )
        loop = LeanFanout(reactor, recv, send, CALIBRATED[case], args.sample, room, sealed, args.body_size)
        figures = await loop.run(meter, args.warmup, args.duration, measuring)
        figures.update(setup_s=setup_s, calibration=calibration)
        if spread:
            figures["connections_by_process"] = spread
        return figures
    finally:
        await clients.close_all(recv + send)


async def scenario_latency(
    reactor: Any, args: Any, clients: Any, meter: Meter, receivers: int, rate: float
) -> dict[str, Any]:
    """``latency_r100_1k``: an open loop of ``rate`` messages a second
    (one every 1/rate s, round robin over the senders) into a room of
    ``receivers``; latency measured on the sampled receivers."""
    recv, send, setup_s = await _sessions(clients, receivers, args.senders)
    try:
        loop = LeanFanout(reactor, recv, send, 0, max(args.sample, 10))
        start = time.perf_counter()
        sent = 0

        def tick() -> None:
            nonlocal sent
            due = int((time.perf_counter() - start) * rate)
            loop.send(due - sent)
            sent = max(sent, due)

        pacer = task.LoopingCall(tick)
        pacer.clock = reactor
        pacer.start(1 / rate)
        await sleep(reactor, args.warmup)
        meter.start()
        loop.measuring = True
        await sleep(reactor, args.duration)
        loop.measuring = False
        figures = meter.stop()
        pacer.stop()
        stuck = 0
        try:
            await within(reactor, loop.drain(), 15.0, "draining")
        except TimeoutError:
            stuck = loop.sent_total - loop.completed
        loop.finish()
        figures.update(
            setup_s=setup_s,
            offered_per_s=rate,
            messages_per_s=loop.messages_completed / figures["wall_s"],
            deliveries_per_s=loop.deliveries / figures["wall_s"],
            latency=latency_ms(loop.latencies),
            samples=len(loop.latencies),
            order_errors=loop.order_errors,
            stuck_after_drain=stuck,
            lost_sessions=loop.lost_sessions,
            errors=sum(r.errors for r in loop.readers + loop.sender_readers),
            error_examples=sorted(set(loop.error_examples))[:5],
        )
        return figures
    finally:
        await clients.close_all(recv + send)


async def register_with_tokens(
    clients: Any,
    names: list[str],
    tickets: dict[int, Any] | None = None,
    source: Any = None,
) -> dict[int, str]:
    """Register ``names`` (set-up, not measured); their session tokens by index.
    The connections are closed again, so only the accounts remain.

    ``tickets``: filled with each account's resumption ticket (the notice
    that follows the welcome; waited for before the connection closes).
    ``source(i)``: the local address account ``i`` registers from (None:
    the default)."""
    tokens: dict[int, str] = {}

    async def register(i: int) -> None:
        got: list[Any] = []
        session = await clients.connect(
            source=source(i) if source else None, on_ticket=got.append if tickets is not None else None
        )
        try:
            welcome = await clients.wait(session.register(names[i], PASSWORD), "register")
            tokens[i] = welcome["token"]
            if tickets is not None:
                waited = 0.0
                while not got:
                    if waited > 10.0:
                        raise TimeoutError(f"no ticket after the welcome of {names[i]}")
                    await sleep(clients.reactor, 0.005)
                    waited += 0.005
                tickets[i] = got[-1]
        finally:
            await clients.close(session)

    await bounded_pool(len(names), SETUP_CONCURRENCY, register)
    return tokens


async def token_login(
    clients: Any,
    name: str,
    token: str,
    source: str | None = None,
    ticket: Any = None,
    on_ticket: Any = None,
) -> ChatSession:
    """A new connection: the handshake (resumed with ``ticket`` if given),
    then a login with a session token."""
    session = await clients.connect(source=source, ticket=ticket, on_ticket=on_ticket)
    try:
        await clients.wait(session.request({"type": "login", "user": name, "token": token}), "login")
    except BaseException:
        await clients.close(session)
        raise
    return session


async def scenario_idle(reactor: Any, args: Any, clients: Any, server: Any, count: int) -> dict[str, Any]:
    """``idle_N``: N authenticated, idle connections; the server's RSS per
    connection.  The accounts are registered first and their connections
    closed, so the figure is the connections' own cost: RSS with all N
    logged in (token logins) and 5 s of settling, minus RSS with the same
    accounts and no connection, over N.  The cost including the accounts'
    in-memory state is reported too."""
    import psutil

    proc = psutil.Process(server.proc.pid)
    rss_start = proc.memory_info().rss
    names = [f"idle-{i:05d}" for i in range(count)]
    t0 = time.perf_counter()
    tokens = await register_with_tokens(clients, names)
    register_s = time.perf_counter() - t0
    await sleep(reactor, 5.0)
    rss_accounts = proc.memory_info().rss
    sessions: dict[int, ChatSession] = {}

    async def log_in(i: int) -> None:
        sessions[i] = await token_login(clients, names[i], tokens[i])

    t0 = time.perf_counter()
    try:
        await bounded_pool(count, SETUP_CONCURRENCY * 4, log_in)
        login_s = time.perf_counter() - t0
        await sleep(reactor, 5.0)
        rss_connected = proc.memory_info().rss
        still = sum(1 for s in sessions.values() if not s.closed.called)
        return {
            "connections": count,
            "still_connected": still,
            "rss_start_kib": rss_start / 1024,
            "rss_accounts_kib": rss_accounts / 1024,
            "rss_connected_kib": rss_connected / 1024,
            "kib_per_connection": (rss_connected - rss_accounts) / 1024 / count,
            "kib_per_connection_with_account": (rss_connected - rss_start) / 1024 / count,
            "register_s": register_s,
            "token_logins_per_s": count / login_s,
        }
    finally:
        await clients.close_all(list(sessions.values()))


async def scenario_connrate(
    reactor: Any,
    args: Any,
    clients: Any,
    meter: Meter,
    concurrency: int,
    count: int = 2000,
    max_seconds: float = 20.0,
    resumed: bool = False,
) -> dict[str, Any]:
    """``connrate_cN`` (the harness's parameters): up to ``count`` new
    connections, ``concurrency`` in flight, each doing the whole handshake
    (RSA-OAEP, X25519, key schedule, FINISHED) and then a login with a
    session token, the way a client comes back; none starts after
    ``max_seconds``, and all stay connected.  The accounts and their tokens
    are made beforehand (not measured).  The figure that matters is
    completed logins per server CPU-second.

    ``resumed`` (``connrate_cN_resumed``): each connection resumes instead,
    with the ticket its account got at registration (tickets are
    single-use: each is used once), so there is no RSA; a connection the
    server did not resume (a full handshake after all) counts as an error."""
    names = [f"conn-{i:04d}" for i in range(count)]
    tickets: dict[int, Any] | None = {} if resumed else None
    tokens = await register_with_tokens(clients, names, tickets)
    sessions: list[ChatSession] = []
    latencies: list[int] = []
    errors: list[str] = []
    deadline = [0.0]

    async def one(i: int) -> None:
        if time.perf_counter() >= deadline[0]:
            return
        t0 = time.perf_counter_ns()
        try:
            session = await token_login(clients, names[i], tokens[i], ticket=tickets[i] if tickets else None)
            sessions.append(session)
            if tickets is not None and not session.protocol.channel.resumed:
                errors.append("not resumed: the server made a full handshake")
                return
            latencies.append(time.perf_counter_ns() - t0)
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")

    spy = None
    if getattr(args, "profile_dir", None):
        from harness import py_spy

        server = clients.server
        spy = py_spy(server.proc.pid, Path(args.profile_dir) / f"{server.base.name}-server.spy", 8.0)
    try:
        meter.start()
        deadline[0] = time.perf_counter() + max_seconds
        await bounded_pool(count, concurrency, one)
        figures = rate_figures(meter.stop(), latencies, errors)
        if spy is not None:
            spy.wait(30)
        figures["attempts"] = len(latencies) + len(errors)
        figures["still_connected"] = sum(1 for s in sessions if not s.closed.called)
        figures["resumed"] = sum(1 for s in sessions if s.protocol.channel.resumed)
        return figures
    finally:
        await clients.close_all(sessions)


def profile_serving(server: Any, directory: Path, case: str, seconds: float) -> None:
    """py-spy on every serving process (the one, or each worker) for
    ``seconds``, into ``directory/<case>-<part>-<pid>.txt`` (collapsed stacks)."""
    directory.mkdir(parents=True, exist_ok=True)
    procs = [server.proc] if server.workers == 1 else server.proc.children()
    for proc in procs:
        part = server_part(proc, server.proc.pid)
        if part == "monitor":
            continue
        py_spy(proc.pid, directory / f"{case}-{part.replace(' ', '')}-{proc.pid}.txt", seconds)
