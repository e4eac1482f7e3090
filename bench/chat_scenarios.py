"""Scenarios for rooms, direct messages, durability and catch-up.

``dm``
    ``--dm-pairs`` pairs of users; in each pair one sends direct messages
    to the other with ``--window`` outstanding.  A message is complete when
    the recipient has it (stored first: DMs are durable like room messages).

``rooms``
    ``--rooms`` rooms of ``--room-members`` members each, one of whom
    sends (closed loop, ``--window`` outstanding); deliveries are counted
    at the other members.  All rooms run at once: the fan-out of many
    small rooms, against the one big room of ``fanout``.

``durable``
    ``--durable-senders`` users, each alone in a room of its own, each
    keeping ``--durable-window`` messages unacknowledged.  The figure is
    acknowledgements per second: every one is a message committed to
    SQLite (``synchronous = full``, the default) before its ack was sent.
    Group commit is what lets this exceed the disk's fsyncs per second.

``catchup``
    ``--catchup-clients`` reconnecting clients (``chatclient.reconnect``)
    are logged in, then go away; ``--catchup-missed`` messages are posted
    to the lobby meanwhile; the server is killed with SIGKILL and started
    again; then all the clients come back at once.  Measured from their
    start until every one is logged in (with its session token) and has
    every missed message, exactly once.

These scenarios register their accounts with ``--setup-hash-cost``
(default 10): registration is set-up, not what they measure, and at the
production cost 1,000 accounts would take minutes of one core.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from harness import (
    BODY_SIZE,
    OP_TIMEOUT,
    PASSWORD,
    ROOM,
    Clients,
    Fanout,
    Meter,
    ServerProcess,
    bounded_pool,
    latency_ms,
    run_loops,
    sleep,
    within,
)
from twisted.internet import defer, endpoints
from twisted.internet.defer import Deferred

from chatclient.reconnect import ReconnectingClient
from chatclient.session import ChatSession


class DirectLoop(Fanout):
    """The fan-out loop with one receiver, over direct messages."""

    def __init__(
        self, reactor: Any, sender: ChatSession, receiver: ChatSession, to: str, window: int
    ) -> None:
        self.to = to
        super().__init__(reactor, [receiver], [sender], window, room="")

    def _listener(self, r: int) -> Any:
        inner = super()._listener(r)

        def received(event: dict[str, Any]) -> None:
            if event.get("type") == "dm" and event.get("to") == self.to:
                inner(dict(event, type="msg", room=""))

        return received

    def send(self, s: int) -> None:
        seq = self.next_seq[s]
        self.next_seq[s] = seq + 1
        self.outstanding[(s, seq)] = 1
        self.sent_total += 1
        if self.measuring:
            self.messages_sent += 1
        body = f"{s} {seq} {time.perf_counter_ns()} "
        body += self.pad[: max(1, BODY_SIZE - len(body))]
        self.senders[s].request({"type": "dm", "to": self.to, "body": body}).addErrback(self._send_failed)


async def scenario_dm(
    reactor: Any, args: argparse.Namespace, clients: Clients, meter: Meter
) -> dict[str, Any]:
    pairs = args.dm_pairs
    names = [f"dm-a{i:03d}" for i in range(pairs)] + [f"dm-b{i:03d}" for i in range(pairs)]
    t0 = time.perf_counter()
    sessions = await clients.register_all(names)
    setup_s = time.perf_counter() - t0
    try:
        loops = [
            DirectLoop(reactor, sessions[i], sessions[pairs + i], names[pairs + i], args.window)
            for i in range(pairs)
        ]
        figures = await run_loops(reactor, loops, meter, args.warmup, args.duration)
        figures.update(setup_s=setup_s, pairs=pairs)
        return figures
    finally:
        await clients.close_all(sessions)


async def scenario_rooms(
    reactor: Any, args: argparse.Namespace, clients: Clients, meter: Meter
) -> dict[str, Any]:
    rooms, size = args.rooms, args.room_members
    names = [f"r{r:02d}-m{m:03d}" for r in range(rooms) for m in range(size)]
    t0 = time.perf_counter()
    sessions = await clients.register_all(names)
    try:
        groups = [sessions[r * size : (r + 1) * size] for r in range(rooms)]

        async def make_room(r: int) -> None:
            room = f"bench-{r:02d}"
            owner, *members = groups[r]
            await clients.wait(owner.request({"type": "create", "room": room}), "create")
            for member in members:
                await clients.wait(member.request({"type": "join", "room": room}), "join")

        await bounded_pool(rooms, 4, make_room)
        setup_s = time.perf_counter() - t0
        # Member 0 (the owner) sends; the others receive.
        loops = [
            Fanout(reactor, group[1:], group[:1], args.window, room=f"bench-{r:02d}")
            for r, group in enumerate(groups)
        ]
        figures = await run_loops(reactor, loops, meter, args.warmup, args.duration)
        figures.update(setup_s=setup_s, members_per_room=size)
        return figures
    finally:
        await clients.close_all(sessions)


class AckLoop:
    """Keep ``window`` messages unacknowledged per sender; count acks."""

    def __init__(self, sessions: list[ChatSession], rooms: list[str], window: int) -> None:
        self.sessions = sessions
        self.rooms = rooms
        self.window = window
        self.measuring = False
        self.stopping = False
        self.acks = 0
        self.latencies: list[int] = []
        self.errors: list[str] = []
        self.in_flight = 0
        self.idle: Deferred | None = None
        self.pad = "x" * BODY_SIZE
        self.last_ids: dict[str, int] = {}
        self.id_errors = 0

    def send(self, s: int) -> None:
        if self.stopping:
            return
        self.in_flight += 1
        sent = time.perf_counter_ns()
        d = self.sessions[s].say(self.rooms[s], self.pad)
        d.addCallbacks(self._acked, self._failed, callbackArgs=(s, sent))
        d.addBoth(self._settled)

    def _acked(self, ack: dict[str, Any], s: int, sent: int) -> None:
        # Ids per stream must increase: the ack is the server's promise.
        stream = ack["stream"]
        if ack["id"] <= self.last_ids.get(stream, 0):
            self.id_errors += 1
        self.last_ids[stream] = ack["id"]
        if self.measuring:
            self.acks += 1
            self.latencies.append(time.perf_counter_ns() - sent)
        self.send(s)

    def _failed(self, failure: Any) -> None:
        self.errors.append(failure.getErrorMessage())

    def _settled(self, _: Any) -> None:
        self.in_flight -= 1
        if self.stopping and self.in_flight == 0 and self.idle is not None and not self.idle.called:
            self.idle.callback(None)


async def scenario_durable(
    reactor: Any, args: argparse.Namespace, clients: Clients, meter: Meter
) -> dict[str, Any]:
    n = args.durable_senders
    names = [f"dur-{i:03d}" for i in range(n)]
    rooms = [f"durable-{i:03d}" for i in range(n)]
    sessions = await clients.register_all(names)
    try:
        for session, room in zip(sessions, rooms, strict=True):
            await clients.wait(session.request({"type": "create", "room": room}), "create")
        loop = AckLoop(sessions, rooms, args.durable_window)
        for s in range(n):
            for _ in range(args.durable_window):
                loop.send(s)
        await sleep(reactor, args.warmup)
        meter.start()
        loop.measuring = True
        await sleep(reactor, args.duration)
        loop.measuring = False
        figures = meter.stop()
        loop.stopping = True
        loop.idle = Deferred()
        if loop.in_flight == 0:
            loop.idle.callback(None)
        await within(reactor, loop.idle, OP_TIMEOUT, "the last acks")
        figures.update(
            senders=n,
            window_per_sender=args.durable_window,
            acks=loop.acks,
            acks_per_s=loop.acks / figures["wall_s"],
            acks_per_server_cpu_s=loop.acks / figures["server_cpu_s"]
            if figures["server_cpu_s"] > 0
            else None,
            latency=latency_ms(loop.latencies),
            id_errors=loop.id_errors,
            errors=len(loop.errors),
            error_examples=sorted(set(loop.errors))[:5],
        )
        return figures
    finally:
        await clients.close_all(sessions)


async def scenario_catchup(
    reactor: Any,
    args: argparse.Namespace,
    clients: Clients,
    meter: Meter,
    server: ServerProcess,
    n: int,
    missed: int,
) -> dict[str, Any]:
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", server.port)
    members = [
        ReconnectingClient(
            reactor,
            endpoint,
            clients.verify,
            f"cu-{i:04d}",
            PASSWORD,
            register=True,
            initial_delay=0.2,
            max_delay=2.0,
        )
        for i in range(n)
    ]
    got: list[list[int]] = [[] for _ in range(n)]
    done_at: list[int | None] = [None] * n
    wanted: set[int] = set()
    complete: Deferred = Deferred()
    remaining = [n]

    def listener(i: int) -> Any:
        def received(event: dict[str, Any]) -> None:
            if event.get("type") != "msg" or event.get("stream") != f"room:{ROOM}":
                return
            got[i].append(event["id"])
            if wanted and done_at[i] is None and wanted.issubset(got[i]):
                done_at[i] = time.perf_counter_ns()
                remaining[0] -= 1
                if remaining[0] == 0 and not complete.called:
                    complete.callback(None)

        return received

    # When each client's login (the welcome) came, before its history
    # requests, and whether its connection was resumed: the client
    # library's _login is wrapped to see it (instrumentation only).
    online_at: list[int | None] = [None] * n
    resumed = [False] * n
    measuring = [False]

    def timed_login(i: int, login: Any) -> Any:
        def wrapped(session: ChatSession) -> Deferred:
            def welcomed(welcome: Any) -> Any:
                if measuring[0] and online_at[i] is None:
                    online_at[i] = time.perf_counter_ns()
                    resumed[i] = bool(session.protocol.channel.resumed)
                return welcome

            return login(session).addCallback(welcomed)  # type: ignore[no-any-return]

        return wrapped

    for i, member in enumerate(members):
        member.add_listener(listener(i))
        member._login = timed_login(i, member._login)  # type: ignore[method-assign]
    t0 = time.perf_counter()
    try:
        # Everyone registers and logs in once (not measured), in batches.
        async def online(i: int) -> None:
            members[i].start()
            await within(reactor, members[i].when_online(), OP_TIMEOUT, "first login")

        await bounded_pool(n, 16, online)
        # Everyone sees one message, so each knows the lobby stream.
        poster = (await clients.register_all(["cu-poster"]))[0]
        first = await clients.wait(poster.say(ROOM, "before"), "say")
        await within(
            reactor, _until_all(reactor, lambda: all(first["id"] in g for g in got)), OP_TIMEOUT, "first"
        )
        await defer.gatherResults([defer.ensureDeferred(_stop(m)) for m in members], consumeErrors=True)
        for k in range(missed):
            ack = await clients.wait(poster.say(ROOM, f"missed {k} " + "x" * 80), "say")
            wanted.add(ack["id"])
        await clients.close(poster)
        setup_s = time.perf_counter() - t0

        await server.restart_killed(reactor)
        meter.server = server.proc  # a new process
        connections_before = [m.connections for m in members]
        counters0 = server.counters()
        profiler = None
        if getattr(args, "profile_dir", None):
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        meter.start()
        measuring[0] = True
        started = time.perf_counter_ns()
        for member in members:
            member.start()
        await within(reactor, complete, max(OP_TIMEOUT, n * 0.1), "every client caught up")
        figures = meter.stop()
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(str(Path(args.profile_dir) / f"{server.base.name}-generator.pstats"))
        counters1 = server.counters()
        online = [t - started for t in online_at if t is not None]
        per_client = [t - started for t in done_at if t is not None]
        duplicates = sum(len(g) - len(set(g)) for g in got)
        out_of_order = sum(1 for g in got if g != sorted(g))
        figures.update(
            clients=n,
            missed_messages=missed,
            all_caught_up_s=max(per_client) / 1e9,
            caught_up_per_s=n / (max(per_client) / 1e9),
            client_latency=latency_ms(per_client),
            # start() -> the welcome of the token login, before the history requests
            online_latency=latency_ms(online),
            resumed=sum(resumed),
            server_counters={
                name: counters1[name] - counters0.get(name, 0.0)
                for name in (
                    "connections",
                    "handshakes",
                    "resumptions",
                    "cookies",
                    "handshakes_refused",
                    "logins",
                    "requests",
                )
                if name in counters1
            },
            reconnect_attempts=sum(m.connections for m in members) - sum(connections_before),
            duplicates=duplicates,
            order_errors=out_of_order,
            setup_s=setup_s,
        )
        return figures
    finally:
        await defer.gatherResults([defer.ensureDeferred(_stop(m)) for m in members], consumeErrors=True)


async def _stop(member: ReconnectingClient) -> None:
    try:
        await member.stop()
    except Exception:
        pass


def _until_all(reactor: Any, predicate: Any) -> Deferred:
    async def wait() -> None:
        while not predicate():
            await sleep(reactor, 0.05)

    return defer.ensureDeferred(wait())
