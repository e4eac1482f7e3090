"""``flood_49``: real logins through a flood of full handshakes (handshake
admission, issue 13).

The server keeps its *default* full-handshake budgets (``[limits]
handshakes_*``: 5/s burst 30 per address, 20/s burst 100 per /24) and its
default cookie threshold; every other limit is lifted as in the other
scenarios.  A flooder (``flooder.py``, a process of its own on the load
CPU, at a lower priority than this one so the measured clients get the
CPU they need) sends hellos, answers cookies, and sends a random RSA-size
KEY_EXCHANGE and a junk FINISHED whenever it gets a SERVER_HELLO, as fast
as it can (``--flood-concurrency`` hellos awaiting an answer at once) or
at most ``--flood-rate`` new connections a second, from 49 addresses in
one of two shapes:

``one_prefix``
    127.0.0.2 .. 127.0.0.50: one /24.
``many_prefixes``
    127.2.0.1, 127.3.0.1 .. 127.50.0.1: 49 different /24s.

Meanwhile real clients (the client library) log in from 127.1.0.x, in an
open loop: ``--flood-resumed-rate`` resumed logins a second (a ticket, then
a token login) and ``--flood-full-rate`` full ones (a new connection's full
handshake, then a token login), each timed from connect() to the welcome.
A resumed connection the server did not resume counts as a failure.  The
same real load runs first without a flood (``none``, the baseline in the
same run), then against each flood shape, each for ``--flood-duration``
seconds after the flooder has run ``FLOOD_RAMP`` seconds; the server's CPU
and its admission counters (handshakes, resumptions, cookies, refusals)
are taken over each window.

The accounts are registered beforehand, each from an address of its own
/24 (127.100.0.1, 127.100.1.1 ...), so the set-up stays inside the budgets.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import OP_TIMEOUT, Meter, ServerProcess, latency_ms, listen_overflows, sleep, within
from lean import register_with_tokens, token_login
from twisted.internet import defer, task

FLOODER = Path(__file__).resolve().parent / "flooder.py"
SHAPES = {
    "one_prefix": [f"127.0.0.{n}" for n in range(2, 51)],
    "many_prefixes": [f"127.{n}.0.1" for n in range(2, 51)],
}
FLOOD_RAMP = 1.0  # seconds of flood before the window opens
FULL_SOURCES = [f"127.1.0.{n}" for n in range(10, 20)]
RESUMED_SOURCES = [f"127.1.0.{n}" for n in range(100, 110)]
TICKET_WAIT = 10.0


def setup_source(i: int) -> str:
    """Account ``i``'s registration address: a /24 of its own."""
    return f"127.{100 + i // 250}.{i % 250}.1"


class RealLoad:
    """The real clients of one window: paced resumed and full logins."""

    def __init__(self, reactor: Any, clients: Any, names: list[str], tokens: dict[int, str], tickets: dict[int, Any], resumed_ids: list[int], full_ids: list[int]) -> None:  # fmt: skip
        self.reactor = reactor
        self.clients = clients
        self.names = names
        self.tokens = tokens
        self.tickets = tickets
        self.free = list(resumed_ids)  # accounts holding an unused ticket
        self.full_ids = full_ids
        self.n = {"resumed": 0, "full": 0}
        self.latencies: dict[str, list[int]] = {"resumed": [], "full": []}
        self.errors: dict[str, list[str]] = {"resumed": [], "full": []}
        self.pending: list[defer.Deferred] = []

    def start(self, kind: str) -> None:
        self.pending.append(defer.ensureDeferred(self.one(kind)))

    async def one(self, kind: str) -> None:
        k = self.n[kind]
        self.n[kind] += 1
        got: list[Any] = []
        if kind == "resumed":
            if not self.free:
                self.errors[kind].append("no account with an unused ticket (raise the accounts)")
                return
            i = self.free.pop(0)
            ticket, self.tickets[i] = self.tickets[i], None
            source = RESUMED_SOURCES[k % len(RESUMED_SOURCES)]
        else:
            i = self.full_ids[k % len(self.full_ids)]
            ticket = None
            source = FULL_SOURCES[k % len(FULL_SOURCES)]
        t0 = time.perf_counter_ns()
        session = None
        try:
            session = await token_login(
                self.clients,
                self.names[i],
                self.tokens[i],
                source=source,
                ticket=ticket,
                on_ticket=got.append,
            )
            elapsed = time.perf_counter_ns() - t0
            if kind == "resumed" and not session.protocol.channel.resumed:
                self.errors[kind].append("not resumed: the server made a full handshake")
            else:
                self.latencies[kind].append(elapsed)
        except Exception as e:
            self.errors[kind].append(f"{type(e).__name__}: {str(e)[:200]}")
        finally:
            if session is not None:
                if kind == "resumed":
                    # The login's ticket, for this account's next resumption.
                    waited = 0.0
                    while not got and waited < TICKET_WAIT and not session.closed.called:
                        await sleep(self.reactor, 0.01)
                        waited += 0.01
                    if got:
                        self.tickets[i] = got[-1]
                        self.free.append(i)
                await self.clients.close(session)

    def figures(self, kind: str) -> dict[str, Any]:
        ok = len(self.latencies[kind])
        attempts = ok + len(self.errors[kind])
        return {
            "attempts": attempts,
            "ok": ok,
            "failed": len(self.errors[kind]),
            "success_rate": ok / attempts if attempts else None,
            "latency": latency_ms(self.latencies[kind]),
            "error_examples": sorted(set(self.errors[kind]))[:5],
        }


async def run_window(
    reactor: Any, args: Any, server: ServerProcess, meter: Meter, load: RealLoad
) -> dict[str, Any]:
    """``--flood-duration`` seconds of paced real logins; then waits for
    the last of them."""
    # The counters first: reading them blocks this process (an HTTP
    # request to a busy server), which must not delay a measured login.
    counters0 = server.counters()
    overflows0 = listen_overflows()
    meter.start()
    pacers = []
    for kind, rate in (("resumed", args.flood_resumed_rate), ("full", args.flood_full_rate)):
        if rate > 0:
            call = task.LoopingCall(load.start, kind)
            call.clock = reactor
            pacers.append(call)
            call.start(1.0 / rate, now=True)
    await sleep(reactor, args.flood_duration)
    for call in pacers:
        call.stop()
    figures = meter.stop()
    counters1 = server.counters()
    overflows1 = listen_overflows()
    if overflows0 is not None and overflows1 is not None:
        # Connections the kernel dropped because the server did not
        # accept them fast enough (the client's SYN is retried after 1 s,
        # then 3 s): what makes a p99 jump by a second.  Machine-wide.
        figures["listen_overflows"] = overflows1 - overflows0
    await within(
        reactor, defer.gatherResults(load.pending, consumeErrors=True), 2 * OP_TIMEOUT, "the last real logins"
    )
    wall = figures["wall_s"]
    figures["server_counters_per_s"] = {
        name: (counters1[name] - counters0.get(name, 0.0)) / wall
        for name in (
            "connections",
            "handshakes",
            "resumptions",
            "cookies",
            "handshakes_refused",
            "blocked",
            "logins",
        )
        if name in counters1
    }
    figures["resumed"] = load.figures("resumed")
    figures["full"] = load.figures("full")
    return figures


def start_flooder(args: Any, server: ServerProcess, sources: list[str], seconds: float) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable, str(FLOODER),
            "--port", str(server.port),
            "--modulus-bytes", str(args.modulus_bytes),
            "--concurrency", str(args.flood_concurrency),
            "--max-connections", str(args.flood_max),
            "--rate", f"{args.flood_rate:g}",
            "--seconds", f"{seconds:g}",
            "--nice", "10",
            *(x for s in sources for x in ("--source", s)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


async def finish_flooder(reactor: Any, flooder: subprocess.Popen, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while flooder.poll() is None and time.monotonic() < deadline:
        await sleep(reactor, 0.1)
    if flooder.poll() is None:
        flooder.kill()
        flooder.wait(10)
        return {"error": "the flooder did not stop in time"}
    out, err = flooder.communicate()
    try:
        return json.loads(out.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]
    except (ValueError, IndexError):
        return {"error": f"flooder exited with {flooder.returncode}: {err.decode()[-500:]}"}


async def scenario_flood(
    reactor: Any, args: Any, clients: Any, meter: Meter, server: ServerProcess
) -> dict[str, Any]:
    # Resumed accounts: enough that each window's resumptions never wait
    # for a ticket to come back (they do come back: each login brings one).
    n_resumed = math.ceil(args.flood_resumed_rate * args.flood_duration) + 20
    n_full = 40
    names = [f"fl-r{i:04d}" for i in range(n_resumed)] + [f"fl-f{i:03d}" for i in range(n_full)]
    tickets: dict[int, Any] = {}
    t0 = time.perf_counter()
    tokens = await register_with_tokens(clients, names, tickets, source=setup_source)
    setup_s = time.perf_counter() - t0
    resumed_ids = list(range(n_resumed))
    full_ids = list(range(n_resumed, n_resumed + n_full))
    out: dict[str, Any] = {"setup_s": setup_s, "accounts": len(names)}
    for phase in ("none", *SHAPES):
        load = RealLoad(reactor, clients, names, tokens, tickets, resumed_ids, full_ids)
        flooder = None
        if phase != "none":
            flooder = start_flooder(args, server, SHAPES[phase], FLOOD_RAMP + args.flood_duration)
            await sleep(reactor, FLOOD_RAMP)
            if flooder.poll() is not None:
                raise RuntimeError(f"the flooder stopped at once: {flooder.communicate()[1].decode()[-500:]}")
        figures = await run_window(reactor, args, server, meter, load)
        if flooder is not None:
            figures["flood"] = await finish_flooder(reactor, flooder, OP_TIMEOUT)
        resumed_ids = sorted(load.free)  # those whose ticket came back
        out[phase] = figures
        # Let the flood's connections end and the budgets refill a little.
        await sleep(reactor, 2.0)
    base = out["none"]
    for phase in SHAPES:
        for kind in ("resumed", "full"):
            b = base[kind]["latency"]["p99_ms"]
            f = out[phase][kind]["latency"]["p99_ms"]
            out[phase][kind]["p99_vs_no_flood"] = f / b if b and f is not None else None
    return out
