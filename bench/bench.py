#!/usr/bin/env python3
"""Load benchmark for chatserver: a real server process, real clients.

Run with ``make bench`` (or ``.venv/bin/python bench/bench.py --help``).

Each run starts a fresh server as a subprocess, exactly as in production
(``twistd -n --pidfile= chatserver --config INI --data-dir D --log-dir L``)
on an ephemeral loopback port, with a generated INI that keeps the
production settings except for the limits counted per address (connections
and failed logins: every bench client comes from 127.0.0.1).  The server is pinned to one CPU and this process,
the load generator, to another, so the two do not steal from each other;
both processes' CPU time is reported, so a saturated generator is visible,
and so is how busy each of the two CPUs was, so that other programs
running meanwhile show up (as "other load") instead of silently skewing
the figures.

Every client uses the real client library (``chatclient.session``): the
handshake, the pinned server key check and every encrypted frame are the
same code as the terminal client's.

Scenarios (each repeated ``--runs`` times, a fresh server per run):

``handshake_login``
    ``--logins`` fresh connections, ``--login-concurrency`` in flight, each
    doing the handshake and then logging in as a pre-registered user;
    latency is connect() -> welcome.  Before that, ``--handshakes``
    handshake-only connections (connect() -> secure channel, no login),
    reported separately because with the production scrypt cost the
    password check dominates the login figures.

``fanout_RxS``
    R receivers and S senders, all logged in and so all members of the
    lobby.  Each sender keeps ``--window`` messages outstanding; a message
    is outstanding until every *receiver* has it.  A *delivery* is one
    message arriving at one receiver (the senders also get every message,
    as lobby members, but those copies are not counted).  Each body
    carries the sender, a sequence number and ``time.perf_counter_ns()``
    at sending, so delivery latency is receive time minus send time, taken
    after the client library has decrypted and parsed the frame.  After
    ``--warmup`` seconds, ``--duration`` seconds are measured.

The cases named as in ``../shared/bench-peers`` (same parameters, so the
figures stand next to the peers') are in ``lean.py``: ``fanout_r10``,
``fanout_r100``, ``latency_r100_1k``, ``idle_5k``, ``idle_10k`` and
``connrate_c10`` (up to 2,000 full handshakes plus token logins, 10 in
flight, 20 s at most, all staying connected; per server CPU-second).

``connrate_c10_resumed``
    ``connrate_c10`` with resumption: each connection offers the ticket its
    account got at registration (each ticket once: they are single-use),
    so the server does no RSA; a connection it did not resume counts as an
    error.

``flood_49`` (``admission.py``, flooder in ``flooder.py``)
    With the server's *default* handshake budgets: real resumed and full
    logins from 127.1.0.x, timed, first without a flood, then through a
    flood of hellos and junk RSA-size KEY_EXCHANGEs (cookies answered) from
    49 addresses of one /24, then from 49 different /24s.

``reconnect_1k`` is ``catchup`` (``chat_scenarios.py``) with 1,000
clients (they resume: ``ReconnectingClient`` keeps its ticket); the other
chat scenarios are there too.

``fanout_rN_pg_wW`` (``scale_out.py``)
    The lean fan-out with N = 10, 100 or 1,000 receivers on PostgreSQL and
    Redis (one cluster and one redis-server for the whole bench, started
    by ``tests/backends.py``; a fresh database and hub prefix per run),
    with W = 1 (one process serves, as on SQLite) or 2 workers (the
    kernel spreads the connections over them: the table shows how).
    Every server-side process (main, workers, monitor, PostgreSQL with its
    backends, Redis) is pinned to the server's CPU, and the figure is
    deliveries per CPU-second of all of them together, with each part's
    share; the report ends with the efficiency, 2 workers' figure over
    1 worker's.  ``--profile-dir`` also records py-spy profiles of each
    serving process over the measured window.

Options that change the server for every scenario of a bench: ``--pad-block
N`` (``[server] pad_block``; to measure padding, alternate runs with 32 and
0).  ``--peers`` (the default when a connrate scenario runs, so in ``make
bench``; ``--no-peers`` to skip) also runs the peer harness (``../shared/bench-peers``:
``connrate_c10`` and ``tls_connrate_c10`` for ngIRCd, ``--runs`` reps,
results into ``--results-dir``) after our scenarios and prints its
registrations per server CPU-second next to our connrate figures; it is
skipped, with a note, if ngIRCd is not installed.  ``--profile-dir`` runs
every server under cProfile and profiles the generator's catch-up window.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
from twisted.internet import defer, task  # noqa: E402

from chatserver.wire import crypto  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import admission  # noqa: E402
import chat_scenarios  # noqa: E402
import lean  # noqa: E402
import scale_out  # noqa: E402
from harness import (  # noqa: E402
    BODY_SIZE,
    PASSWORD,
    ROOM,
    SETUP_CONCURRENCY,
    Clients,
    Fanout,
    Meter,
    ServerProcess,
    bounded_pool,
    kill_live_servers,
    plan_cpus,
    raise_file_limit,
    rate_figures,
)

# --- scenario 1: handshakes and logins ---------------------------------------------


async def connection_burst(
    clients: Clients, meter: Meter, n: int, concurrency: int, users: list[str] | None
) -> dict[str, Any]:
    """``n`` fresh connections, ``concurrency`` in flight; each logs in as
    one of ``users`` if given.  Latency: connect() -> secure (no users) or
    connect() -> welcome."""
    latencies: list[int] = []
    errors: list[str] = []

    async def one(i: int) -> None:
        session = None
        t0 = time.perf_counter_ns()
        try:
            session = await clients.connect()
            if users:
                await clients.wait(session.login(users[i % len(users)], PASSWORD), "login")
            latencies.append(time.perf_counter_ns() - t0)
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
        finally:
            if session is not None:
                await clients.close(session)

    meter.start()
    await bounded_pool(n, concurrency, one)
    figures = rate_figures(meter.stop(), latencies, errors)
    figures["attempts"] = n
    return figures


async def scenario_handshake_login(
    reactor: Any, args: argparse.Namespace, clients: Clients, meter: Meter
) -> dict[str, Any]:
    concurrency = args.login_concurrency
    # One account per slot in flight, registered beforehand (not measured).
    users = [f"login-{i:03d}" for i in range(concurrency)]
    await clients.close_all(await clients.register_all(users))
    handshakes = await connection_burst(clients, meter, args.handshakes, concurrency, None)
    logins = await connection_burst(clients, meter, args.logins, concurrency, users)
    return {"handshake_only": handshakes, "handshake_login": logins}


async def scenario_fanout(
    reactor: Any, args: argparse.Namespace, clients: Clients, meter: Meter
) -> dict[str, Any]:
    names = [f"recv-{i:04d}" for i in range(args.receivers)] + [f"send-{i:03d}" for i in range(args.senders)]
    t0 = time.perf_counter()
    sessions = await clients.register_all(names)
    setup_s = time.perf_counter() - t0
    try:
        receivers, senders = sessions[: args.receivers], sessions[args.receivers :]
        members = await clients.wait(senders[0].who(ROOM), "who")
        if len(members) != len(names):
            raise RuntimeError(f"expected {len(names)} lobby members, the server lists {len(members)}")
        fanout = Fanout(reactor, receivers, senders, args.window)
        figures = await fanout.run(meter, args.warmup, args.duration)
        figures["setup_s"] = setup_s
        return figures
    finally:
        await clients.close_all(sessions)


# --- runs, summary, report ----------------------------------------------------------------


def scenario_names(args: argparse.Namespace) -> dict[str, str]:
    """Scenario key -> label used in the report."""
    return {
        "handshake_login": "handshake_login",
        "fanout": f"fanout_{args.receivers}x{args.senders}",
        "fanout_r10": "fanout_r10",
        "fanout_r100": "fanout_r100",
        "fanout_r100_e2e": "fanout_r100_e2e",
        "latency_r100_1k": "latency_r100_1k",
        "idle_5k": "idle_5k",
        "idle_10k": "idle_10k",
        "dm": f"dm_{args.dm_pairs}pairs",
        "rooms": f"rooms_{args.rooms}x{args.room_members}",
        "durable": f"durable_{args.durable_senders}x{args.durable_window}",
        "connrate_c10": "connrate_c10",
        "connrate_c10_resumed": "connrate_c10_resumed",
        "flood_49": "flood_49",
        "reconnect_1k": "reconnect_1k",
        "catchup": f"catchup_{args.catchup_clients}",
        **{name: name for name in SCALE_OUT},
    }


SCENARIOS = (
    "handshake_login",
    "fanout",
    "fanout_r10",
    "fanout_r100",
    "fanout_r100_e2e",
    "latency_r100_1k",
    "idle_5k",
    "idle_10k",
    "dm",
    "rooms",
    "durable",
    "connrate_c10",
    "connrate_c10_resumed",
    "flood_49",
    "reconnect_1k",
    "catchup",
    "fanout_r10_pg_w1",
    "fanout_r10_pg_w2",
    "fanout_r100_pg_w1",
    "fanout_r100_pg_w2",
    "fanout_r1000_pg_w1",
    "fanout_r1000_pg_w2",
)
#: The scale-out cases: the lean fan-out on PostgreSQL and Redis, with this
#: many workers (1: the one process serves, as on SQLite).
SCALE_OUT = {
    f"fanout_r{receivers}_pg_w{workers}": workers for receivers in (10, 100, 1000) for workers in (1, 2)
}
#: The lean generator's cases (names and parameters of ../shared/bench-peers),
#: by receivers.
LEAN_FANOUT = {
    "fanout_r10": 10,
    "fanout_r100": 100,
    "fanout_r100_e2e": 100,
    **{name: int(name.split("_")[1][1:]) for name in SCALE_OUT},
}


async def one_run(
    reactor: Any,
    args: argparse.Namespace,
    scenario: str,
    base: Path,
    key_pem: bytes,
    fingerprint: str,
    cpus: tuple[int | None, int | None],
    backends: scale_out.Backends | None = None,
) -> dict[str, Any]:
    # Only handshake_login measures password hashing; the others register
    # their accounts at a low cost to keep the set-up short.
    cost = args.hash_cost if scenario in ("handshake_login", "fanout") else args.setup_hash_cost
    server = ServerProcess(
        base,
        key_pem,
        cost,
        cpus[0],
        default_handshake_limits=scenario == "flood_49",
        pad_block=args.pad_block,
        scale=(SCALE_OUT[scenario], *backends.fresh("bench")) if backends and scenario in SCALE_OUT else None,
    )
    if args.profile_dir:
        Path(args.profile_dir).mkdir(parents=True, exist_ok=True)
    if args.profile_dir and scenario in ("reconnect_1k", "catchup"):
        server.profile = Path(args.profile_dir).resolve() / f"{base.name}-server.pstats"
    completed = False
    try:
        t0 = time.perf_counter()
        await server.start(reactor)
        assert server.proc is not None
        clients = Clients(reactor, server, fingerprint)
        # The lean fan-outs count every server-side process's CPU (the
        # monitor child, and the workers, PostgreSQL and Redis if any).
        counted = backends if scenario in SCALE_OUT else None
        proc = server.proc
        meter = Meter(
            proc,
            cpus,
            server,
            server_side=(lambda: scale_out.cpu_snapshot(proc, counted)) if scenario in LEAN_FANOUT else None,
        )
        if scenario == "handshake_login":
            result = await scenario_handshake_login(reactor, args, clients, meter)
        elif scenario == "fanout":
            result = await scenario_fanout(reactor, args, clients, meter)
        elif scenario in LEAN_FANOUT:
            result = await lean.scenario_fanout(
                reactor,
                args,
                clients,
                meter,
                scenario,
                LEAN_FANOUT[scenario],
                server if scenario in SCALE_OUT else None,
                encrypted=scenario.endswith("_e2e"),
            )
        elif scenario in ("idle_5k", "idle_10k"):
            result = await lean.scenario_idle(reactor, args, clients, server, 1000 * int(scenario[5:-1]))
        elif scenario == "latency_r100_1k":
            result = await lean.scenario_latency(reactor, args, clients, meter, 100, 1000.0)
        elif scenario == "dm":
            result = await chat_scenarios.scenario_dm(reactor, args, clients, meter)
        elif scenario == "rooms":
            result = await chat_scenarios.scenario_rooms(reactor, args, clients, meter)
        elif scenario == "durable":
            result = await chat_scenarios.scenario_durable(reactor, args, clients, meter)
        elif scenario == "connrate_c10":
            result = await lean.scenario_connrate(reactor, args, clients, meter, concurrency=10)
        elif scenario == "connrate_c10_resumed":
            result = await lean.scenario_connrate(reactor, args, clients, meter, concurrency=10, resumed=True)
        elif scenario == "flood_49":
            result = await admission.scenario_flood(reactor, args, clients, meter, server)
        elif scenario == "reconnect_1k":
            result = await chat_scenarios.scenario_catchup(
                reactor, args, clients, meter, server, 1000, args.catchup_missed
            )
        else:
            result = await chat_scenarios.scenario_catchup(
                reactor, args, clients, meter, server, args.catchup_clients, args.catchup_missed
            )
        result["run_wall_s"] = time.perf_counter() - t0
        result["server_problems"] = server.problems()
        completed = True
        return result
    finally:
        status = server.stop()
        if completed and status not in (0, None, -signal.SIGTERM):
            print(f"bench: server exited with status {status}:\n{server.tail()}", file=sys.stderr)


# (label, path into a run's result, format) for the table and the summary.
# The closed-loop scenarios (fanout, dm, rooms) share their figures.
LOOP_METRICS: list[tuple[str, tuple[str, ...], str]] = [
    ("deliveries /s (wall)", ("deliveries_per_s",), "{:.0f}"),
    ("deliveries /server CPU-s", ("deliveries_per_server_cpu_s",), "{:.0f}"),
    ("messages /s (all receivers got it)", ("messages_per_s",), "{:.1f}"),
    ("delivery latency p50 ms", ("latency", "p50_ms"), "{:.2f}"),
    ("delivery latency p99 ms", ("latency", "p99_ms"), "{:.2f}"),
    ("server CPU util", ("server_cpu_util",), "{:.2f}"),
    ("generator CPU util", ("generator_cpu_util",), "{:.2f}"),
    ("order errors / lost / stuck", ("problems",), "{:.0f}"),
]
COMMIT_METRICS: list[tuple[str, tuple[str, ...], str]] = [
    ("group commits /s", ("commits", "per_s"), "{:.0f}"),
    ("commit mean ms", ("commits", "mean_ms"), "{:.2f}"),
    ("commit p99 ms (at most)", ("commits", "p99_at_most_ms"), "{:g}"),
]

IDLE_METRICS: list[tuple[str, tuple[str, ...], str]] = [
    ("KiB per idle connection", ("kib_per_connection",), "{:.1f}"),
    ("KiB per connection + account", ("kib_per_connection_with_account",), "{:.1f}"),
    ("token logins /s", ("token_logins_per_s",), "{:.0f}"),
    ("still connected", ("still_connected",), "{:.0f}"),
]

METRICS: dict[str, list[tuple[str, tuple[str, ...], str]]] = {
    "handshake_login": [
        ("handshakes only /s (wall)", ("handshake_only", "per_s"), "{:.1f}"),
        ("handshakes only /server CPU-s", ("handshake_only", "per_server_cpu_s"), "{:.1f}"),
        ("handshake latency p50 ms", ("handshake_only", "latency", "p50_ms"), "{:.2f}"),
        ("handshake latency p99 ms", ("handshake_only", "latency", "p99_ms"), "{:.2f}"),
        ("handshake server CPU util", ("handshake_only", "server_cpu_util"), "{:.2f}"),
        ("handshake generator CPU util", ("handshake_only", "generator_cpu_util"), "{:.2f}"),
        ("handshake other load, server CPU", ("handshake_only", "server_cpu_other"), "{:.2f}"),
        ("handshake other load, generator CPU", ("handshake_only", "generator_cpu_other"), "{:.2f}"),
        ("handshake errors", ("handshake_only", "errors"), "{:.0f}"),
        ("handshake+login /s (wall)", ("handshake_login", "per_s"), "{:.2f}"),
        ("handshake+login /server CPU-s", ("handshake_login", "per_server_cpu_s"), "{:.2f}"),
        ("connect->welcome p50 ms", ("handshake_login", "latency", "p50_ms"), "{:.1f}"),
        ("connect->welcome p99 ms", ("handshake_login", "latency", "p99_ms"), "{:.1f}"),
        ("login server CPU util", ("handshake_login", "server_cpu_util"), "{:.2f}"),
        ("login generator CPU util", ("handshake_login", "generator_cpu_util"), "{:.2f}"),
        ("login other load, server CPU", ("handshake_login", "server_cpu_other"), "{:.2f}"),
        ("login other load, generator CPU", ("handshake_login", "generator_cpu_other"), "{:.2f}"),
        ("login errors", ("handshake_login", "errors"), "{:.0f}"),
    ],
    "fanout": LOOP_METRICS
    + [
        ("other load, server CPU", ("server_cpu_other",), "{:.2f}"),
        ("other load, generator CPU", ("generator_cpu_other",), "{:.2f}"),
        ("setup (register all) s", ("setup_s",), "{:.1f}"),
    ],
    "fanout_r10": LOOP_METRICS + COMMIT_METRICS + [("calibrated window", ("window",), "{:.0f}")],
    "fanout_r100": LOOP_METRICS + COMMIT_METRICS + [("calibrated window", ("window",), "{:.0f}")],
    "latency_r100_1k": [
        ("messages /s (offered 1000)", ("messages_per_s",), "{:.0f}"),
        ("delivery latency p50 ms", ("latency", "p50_ms"), "{:.2f}"),
        ("delivery latency p99 ms", ("latency", "p99_ms"), "{:.2f}"),
        ("server CPU util", ("server_cpu_util",), "{:.2f}"),
        ("generator CPU util", ("generator_cpu_util",), "{:.2f}"),
        ("order errors / lost / stuck", ("problems",), "{:.0f}"),
    ]
    + COMMIT_METRICS,
    "idle_5k": IDLE_METRICS,
    "idle_10k": IDLE_METRICS,
    "dm": LOOP_METRICS,
    "rooms": LOOP_METRICS,
    "durable": [
        ("durable messages (acks) /s", ("acks_per_s",), "{:.0f}"),
        ("acks /server CPU-s", ("acks_per_server_cpu_s",), "{:.0f}"),
        ("ack latency p50 ms", ("latency", "p50_ms"), "{:.2f}"),
        ("ack latency p99 ms", ("latency", "p99_ms"), "{:.2f}"),
        ("server CPU util", ("server_cpu_util",), "{:.2f}"),
        ("generator CPU util", ("generator_cpu_util",), "{:.2f}"),
        ("id errors", ("id_errors",), "{:.0f}"),
    ]
    + COMMIT_METRICS,
    "connrate_c10": [
        ("handshakes+token logins /server CPU-s", ("per_server_cpu_s",), "{:.0f}"),
        ("handshakes+token logins /s (wall)", ("per_s",), "{:.0f}"),
        ("connect->welcome p50 ms", ("latency", "p50_ms"), "{:.2f}"),
        ("connect->welcome p99 ms", ("latency", "p99_ms"), "{:.2f}"),
        ("completed (of up to 2000)", ("completed",), "{:.0f}"),
        ("still connected", ("still_connected",), "{:.0f}"),
        ("server CPU util", ("server_cpu_util",), "{:.2f}"),
        ("generator CPU util", ("generator_cpu_util",), "{:.2f}"),
        ("errors", ("errors",), "{:.0f}"),
    ],
    "catchup": [
        ("all clients caught up, s", ("all_caught_up_s",), "{:.2f}"),
        ("clients caught up /s", ("caught_up_per_s",), "{:.0f}"),
        ("per-client p50 ms", ("client_latency", "p50_ms"), "{:.0f}"),
        ("per-client p99 ms", ("client_latency", "p99_ms"), "{:.0f}"),
        ("logged in (before catch-up), p50 ms", ("online_latency", "p50_ms"), "{:.0f}"),
        ("logged in (before catch-up), max ms", ("online_latency", "max_ms"), "{:.0f}"),
        ("resumed connections", ("resumed",), "{:.0f}"),
        ("server full handshakes", ("server_counters", "handshakes"), "{:.0f}"),
        ("server CPU util", ("server_cpu_util",), "{:.2f}"),
        ("generator CPU util", ("generator_cpu_util",), "{:.2f}"),
        ("duplicates / out of order", ("catchup_problems",), "{:.0f}"),
    ],
}
METRICS["reconnect_1k"] = METRICS["catchup"]
#: The scale-out cases: per CPU-second of every server-side process, and
#: where that CPU went.
SCALE_METRICS: list[tuple[str, tuple[str, ...], str]] = [
    ("deliveries /CPU-s, all server-side", ("deliveries_per_all_cpu_s",), "{:.0f}"),
    ("deliveries /s (wall)", ("deliveries_per_s",), "{:.0f}"),
    ("messages /s (all receivers got it)", ("messages_per_s",), "{:.1f}"),
    ("delivery latency p50 ms", ("latency", "p50_ms"), "{:.2f}"),
    ("delivery latency p99 ms", ("latency", "p99_ms"), "{:.2f}"),
    ("all server-side CPU util", ("all_cpu_util",), "{:.2f}"),
    ("messages per record a receiver got", ("deliveries_per_record",), "{:.1f}"),
    *(
        (f"CPU util, {part}", ("util_by_part", part), "{:.3f}")
        for part in ("main", "worker 1", "worker 2", "monitor", "postgres", "redis")
    ),
    ("connections on worker 1", ("connections_by_process", "worker 1"), "{:.0f}"),
    ("connections on worker 2", ("connections_by_process", "worker 2"), "{:.0f}"),
    ("generator CPU util", ("generator_cpu_util",), "{:.2f}"),
    ("order errors / lost / stuck", ("problems",), "{:.0f}"),
    *COMMIT_METRICS,
    ("calibrated window", ("window",), "{:.0f}"),
]
METRICS.update({name: SCALE_METRICS for name in SCALE_OUT})
# The peers' cases also count every server-side process (with the monitor).
METRICS["fanout_r100_e2e"] = METRICS["fanout_r100"]
for case in ("fanout_r10", "fanout_r100", "fanout_r100_e2e"):
    METRICS[case] = METRICS[case] + [
        ("deliveries /CPU-s, with the monitor", ("deliveries_per_all_cpu_s",), "{:.0f}")
    ]
METRICS["connrate_c10_resumed"] = [
    (label.replace("handshakes+", "resumptions+"), path, fmt) for label, path, fmt in METRICS["connrate_c10"]
]


def _flood_metrics() -> list[tuple[str, tuple[str, ...], str]]:
    out: list[tuple[str, tuple[str, ...], str]] = []
    for phase in ("none", *admission.SHAPES):
        for kind in ("resumed", "full"):
            out += [
                (f"{phase}: {kind} logins ok %", (phase, kind, "success_pct"), "{:.1f}"),
                (f"{phase}: {kind} login p50 ms", (phase, kind, "latency", "p50_ms"), "{:.1f}"),
                (f"{phase}: {kind} login p99 ms", (phase, kind, "latency", "p99_ms"), "{:.1f}"),
            ]
            if phase != "none":
                out.append(
                    (f"{phase}: {kind} p99 / no-flood p99", (phase, kind, "p99_vs_no_flood"), "{:.2f}")
                )
        out.append((f"{phase}: server CPU util", (phase, "server_cpu_util"), "{:.2f}"))
        out.append((f"{phase}: generator CPU util", (phase, "generator_cpu_util"), "{:.2f}"))
        if phase != "none":
            out += [
                (f"{phase}: flood hellos /s", (phase, "flood", "hellos_per_s"), "{:.0f}"),
                (
                    f"{phase}: flood RSA-size KEY_EXCHANGEs /s",
                    (phase, "flood", "key_exchanges_per_s"),
                    "{:.0f}",
                ),
                (
                    f"{phase}: server full handshakes /s",
                    (phase, "server_counters_per_s", "handshakes"),
                    "{:.0f}",
                ),
                (f"{phase}: server cookies /s", (phase, "server_counters_per_s", "cookies"), "{:.0f}"),
                (
                    f"{phase}: server refusals (budget) /s",
                    (phase, "server_counters_per_s", "handshakes_refused"),
                    "{:.0f}",
                ),
                (f"{phase}: server closed blocked /s", (phase, "server_counters_per_s", "blocked"), "{:.0f}"),
            ]
        out.append((f"{phase}: listen queue overflows", (phase, "listen_overflows"), "{:.0f}"))
    return out


METRICS["flood_49"] = _flood_metrics()


def dig(result: dict[str, Any], path: tuple[str, ...]) -> float | None:
    if path[-1] == "success_pct":
        rate = dig(result, (*path[:-1], "success_rate"))
        return None if rate is None else 100 * rate
    if path == ("catchup_problems",):
        return float(result.get("duplicates", 0) + result.get("order_errors", 0))
    if path == ("problems",):
        return float(
            result.get("order_errors", 0)
            + result.get("lost_sessions", 0)
            + result.get("stuck_after_drain", 0)
        )
    value: Any = result
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return None if value is None else float(value)


def summarize(scenario: str, runs: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    summary: dict[str, dict[str, float | None]] = {}
    for label, path, _ in METRICS[scenario]:
        values = [v for v in (dig(r, path) for r in runs) if v is not None]
        summary[label] = {
            "median": statistics.median(values) if values else None,
            "min": min(values) if values else None,
            "max": max(values) if values else None,
            "n": len(values),
        }
    return summary


def table(labels: dict[str, str], summaries: dict[str, dict[str, dict[str, float | None]]]) -> str:
    rows = [("scenario", "figure", "median", "min .. max")]
    for scenario, summary in summaries.items():
        fmts = {label: fmt for label, _, fmt in METRICS[scenario]}
        for label, s in summary.items():
            fmt = fmts[label]
            show = lambda v, fmt=fmt: "-" if v is None else fmt.format(v)  # noqa: E731
            rows.append((labels[scenario], label, show(s["median"]), f"{show(s['min'])} .. {show(s['max'])}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for n, r in enumerate(rows):
        lines.append(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}")
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine_info(cpus: tuple[int | None, int | None]) -> dict[str, Any]:
    import cryptography

    import twisted

    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or None
        )
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=ROOT, capture_output=True, text=True, timeout=5,
            ).stdout.strip()
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    freq = psutil.cpu_freq()
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _cpu_model(),
        "cpu_freq_mhz": freq.current if freq else None,
        "memory_bytes": psutil.virtual_memory().total,
        "server_cpu": cpus[0],
        "generator_cpu": cpus[1],
        "pinned": cpus[0] is not None,
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "twisted": twisted.__version__,
        "cryptography": cryptography.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


async def bench(reactor: Any, args: argparse.Namespace, tmp: Path) -> int:
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    cpus = plan_cpus() if not args.no_pin else (None, None)
    if cpus[1] is not None:
        os.sched_setaffinity(0, {cpus[1]})
    labels = scenario_names(args)
    key = crypto.rsa_generate()
    key_pem = crypto.rsa_private_to_pem(key)
    args.modulus_bytes = key.key_size // 8  # the flooder's junk KEY_EXCHANGE
    fingerprint = crypto.fingerprint(crypto.rsa_public_der(key))
    params = {k: v for k, v in vars(args).items() if k not in ("results_dir", "busy_before", "modulus_bytes")}
    params.update(body_size=args.body_size, room=ROOM, setup_concurrency=SETUP_CONCURRENCY)
    machine = machine_info(cpus)
    machine["cpu_affinity"] = affinity  # before pinning ourselves
    machine["cpu_busy_before_start"] = args.busy_before
    if max(args.busy_before, default=0.0) >= 20.0:
        print(
            f"bench: WARNING: the CPUs were already busy before the bench started "
            f"({', '.join(f'{b:.0f}%' for b in args.busy_before)}); figures will be disturbed",
            flush=True,
        )
    print(
        f"bench: server on CPU {cpus[0]}, generator on CPU {cpus[1]}"
        if cpus[0] is not None
        else "bench: server and generator NOT pinned"
        + (" (--no-pin)" if args.no_pin else " (fewer than 2 CPUs)"),
        flush=True,
    )
    raw: dict[str, list[dict[str, Any]]] = {labels[s]: [] for s in args.scenarios}
    failures: list[str] = []
    started = time.time()
    backends = None
    try:
        if any(s in SCALE_OUT for s in args.scenarios):
            backends = scale_out.Backends(cpus[0])
            backends.start()
        for scenario in args.scenarios:
            for run in range(args.runs):
                print(f"bench: {labels[scenario]} run {run + 1}/{args.runs} ...", end=" ", flush=True)
                t0 = time.perf_counter()
                try:
                    result = await one_run(
                        reactor,
                        args,
                        scenario,
                        tmp / f"{scenario}-{run}",
                        key_pem,
                        fingerprint,
                        cpus,
                        backends,
                    )
                except Exception as e:
                    print(f"FAILED: {e}", flush=True)
                    first = str(e).splitlines()[0] if str(e) else ""
                    failures.append(f"{labels[scenario]} run {run + 1}: {type(e).__name__}: {first}")
                    continue
                raw[labels[scenario]].append(result)
                print(f"{time.perf_counter() - t0:.1f} s{_run_note(scenario, result)}", flush=True)
    finally:
        kill_live_servers()
        if backends is not None:
            backends.stop()
    peers = run_peers(args, Path(args.results_dir)) if args.peers else None

    summaries = {s: summarize(s, raw[labels[s]]) for s in args.scenarios if raw[labels[s]]}
    print()
    print(
        f"chatserver bench: {args.runs} run(s) per scenario, median and range; "
        f"hash cost {args.hash_cost} (set-up of dm/rooms/durable/catchup: {args.setup_hash_cost}); "
        f"{machine['cpu_count']} CPUs"
        + (
            f" (server on CPU {cpus[0]}, generator on CPU {cpus[1]})"
            if cpus[0] is not None
            else " (not pinned)"
        )
    )
    print(
        f"handshake_login: {args.handshakes} handshakes, then {args.logins} handshakes+logins, "
        f"{args.login_concurrency} in flight; "
        f"{labels['fanout']}: {args.receivers} receivers + {args.senders} senders, window "
        f"{args.window}/sender, {args.warmup:g} s warm-up + {args.duration:g} s measured, "
        "deliveries count receivers only"
    )
    print(
        f"{labels['dm']}: one sender per pair; {labels['rooms']}: one sender per room, window {args.window}; "
        f"{labels['durable']}: senders alone in their rooms, acks = committed messages; "
        f"{labels['catchup']}, reconnect_1k: clients back after SIGKILL+restart, "
        f"{args.catchup_missed} missed messages each; "
        "connrate_c10: up to 2000 handshakes+token logins, 10 in flight, 20 s at most"
    )
    print()
    print(table(labels, summaries) if summaries else "(no run completed)")
    efficiency = scale_out_efficiency(summaries)
    for case, ratio in efficiency.items():
        print(
            f"scale-out efficiency {case}: 2 workers / 1 worker, per CPU-second of all server-side processes: {ratio:.3f}"
        )
    if peers is not None:
        print()
        print(peers_table(peers, summaries))
    warnings = _warnings(labels, raw)
    for w in warnings + failures:
        print(f"WARNING: {w}")

    report = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "elapsed_s": time.time() - started,
        "machine": machine,
        "params": params,
        "definitions": {
            "handshake_only": "connect() until the secure channel is up (no login); latency connect->secure",
            "handshake_login": "connect(), handshake, login of a pre-registered user; latency connect->welcome",
            "delivery": "one message arriving, decrypted, at one receiver (sender copies not counted)",
            "message_completed": "a message that every receiver has received",
            "delivery_latency": "receiver perf_counter_ns() at the listener minus sender perf_counter_ns() in the body",
            "server_cpu_util": "server process CPU seconds (all threads) / wall seconds; 1.0 = its CPU saturated",
            "generator_cpu_util": "this process's CPU seconds / wall seconds; near 1.0 = the load generator is the bottleneck",
            "cpu_busy": "fraction of the pinned CPU that was not idle (from /proc/stat), whoever used it",
            "cpu_other": "cpu_busy minus our process's util: load from other programs on that CPU (plus some kernel work)",
        },
        "summary": {labels[s]: summaries[s] for s in summaries},
        "scale_out_efficiency": efficiency,
        "peers": peers,
        "runs": raw,
        "warnings": warnings,
        "failures": failures,
    }
    out_dir = Path(args.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(started))}.json"
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    print(f"\nraw results: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    if failures:
        raise SystemExit(1)
    return 0


def scale_out_efficiency(summaries: dict[str, Any]) -> dict[str, float]:
    """Case -> (2 workers' deliveries per CPU-second) / (1 worker's), from
    the medians, for each case measured both ways."""
    label = SCALE_METRICS[0][0]
    out: dict[str, float] = {}
    for name in SCALE_OUT:
        if not name.endswith("_w1"):
            continue
        one, two = summaries.get(name), summaries.get(name[:-1] + "2")
        if one and two and one[label]["median"] and two[label]["median"]:
            out[name[: -len("_w1")]] = two[label]["median"] / one[label]["median"]
    return out


#: The peer harness's cases run by --peers, and ours they stand next to.
PEER_CASES = ("connrate_c10", "tls_connrate_c10")
PEER_SERVER = "ngircd"


def run_peers(args: argparse.Namespace, results_dir: Path) -> dict[str, Any]:
    """The peer harness's registration cases for ngIRCd, ``--runs`` reps,
    results into ``results_dir/peers-<time>/`` (never into the harness's
    own directory, which is read only); their figures by case."""
    harness = Path(args.peers_dir) / "run_bench.py"
    if shutil.which("ngircd") is None and not Path("/usr/sbin/ngircd").exists():
        note = "ngircd is not installed (apt-get install -y ngircd): peers skipped"
        print(f"bench: {note}", flush=True)
        return {"skipped": note}
    if not harness.exists():
        note = f"no peer harness at {harness}: peers skipped"
        print(f"bench: {note}", flush=True)
        return {"skipped": note}
    python = args.peers_python if Path(args.peers_python).exists() else sys.executable
    out_dir = results_dir / f"peers-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [
        python, str(harness), PEER_SERVER,
        "--cases", ",".join(PEER_CASES),
        "--reps", str(args.runs),
        "--python", python,
        "--results", str(out_dir),
        "--workroot", str(out_dir / "work"),
    ]  # fmt: skip
    has_uvloop = subprocess.run([python, "-c", "import uvloop"], capture_output=True).returncode == 0
    if not has_uvloop:
        command += ["--loop", "asyncio"]  # the harness's default, uvloop, is missing
    print(f"bench: peers: {' '.join(command)}", flush=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=args.peers_dir)
    except subprocess.TimeoutExpired:
        return {"skipped": "the peer harness took longer than 30 min", "results": str(out_dir)}
    for text in done.stdout.splitlines():
        print(f"  peers: {text}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {case: [] for case in PEER_CASES}
    jsonl = out_dir / f"{PEER_SERVER}.jsonl"
    if jsonl.exists():
        for text in jsonl.read_text(encoding="utf-8").splitlines():
            record = json.loads(text)
            if record.get("case") in runs and record.get("result", {}).get("ok"):
                runs[record["case"]].append(record)
    figures: dict[str, Any] = {}
    for case, records in runs.items():
        per_cpu = [r["result"]["registrations_per_server_cpu_s"] for r in records]
        per_s = [r["result"]["registrations_per_s"] for r in records]
        figures[case] = {
            "registrations_per_server_cpu_s": _spread([v for v in per_cpu if v is not None]),
            "registrations_per_s": _spread(per_s),
            "version": (records[0].get("version") or "").split("-")[0] or None if records else None,
        }
    return {
        "server": PEER_SERVER,
        "started": started,
        "status": done.returncode,
        "results": str(out_dir),
        "command": command,
        "cases": figures,
    }


def _spread(values: list[float]) -> dict[str, float | None]:
    return {
        "median": statistics.median(values) if values else None,
        "min": min(values) if values else None,
        "max": max(values) if values else None,
        "n": len(values),
    }


def peers_table(peers: dict[str, Any], summaries: dict[str, Any]) -> str:
    """ngIRCd's registrations next to our connrate figures (same session)."""
    if "skipped" in peers:
        return f"peers: {peers['skipped']}"
    show = lambda s: (  # noqa: E731
        "-"
        if s is None or s.get("median") is None
        else f"{s['median']:.0f} [{s['min']:.0f}-{s['max']:.0f}] ({s['n']})"
    )
    rows = [("logins (registrations) per server CPU-second", "median [min-max] (n)")]
    for case in PEER_CASES:
        c = peers["cases"].get(case, {})
        rows.append(
            (
                f"{PEER_SERVER} {c.get('version') or ''} {case}".replace("  ", " "),
                show(c.get("registrations_per_server_cpu_s")),
            )
        )
    for ours, label in (
        ("connrate_c10", "handshakes+token logins /server CPU-s"),
        ("connrate_c10_resumed", "resumptions+token logins /server CPU-s"),
    ):
        if ours in summaries:
            rows.append((f"chatserver {ours}", show(summaries[ours].get(label))))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in rows)


def _run_note(scenario: str, result: dict[str, Any]) -> str:
    if scenario == "durable":
        return f" ({result['acks_per_s']:.0f} acks/s, p99 {result['latency']['p99_ms'] or 0:.1f} ms)"
    if scenario in ("catchup", "reconnect_1k"):
        return f" ({result['clients']} clients caught up in {result['all_caught_up_s']:.2f} s)"
    if scenario.startswith("idle_"):
        return f" ({result['kib_per_connection']:.1f} KiB per connection)"
    if scenario == "latency_r100_1k":
        lat = result["latency"]
        return f" (p50 {lat['p50_ms'] or 0:.2f} ms, p99 {lat['p99_ms'] or 0:.2f} ms)"
    if scenario in ("connrate_c10", "connrate_c10_resumed"):
        return f" ({result['per_server_cpu_s']:.0f} per server CPU-s, {result['per_s']:.0f}/s)"
    if scenario == "flood_49":
        parts = []
        for phase in ("none", *admission.SHAPES):
            r, f = result[phase]["resumed"], result[phase]["full"]
            flood = result[phase].get("flood", {})
            parts.append(
                f"{phase}: resumed {r['ok']}/{r['attempts']} p99 {r['latency']['p99_ms'] or 0:.1f} ms,"
                f" full {f['ok']}/{f['attempts']} p99 {f['latency']['p99_ms'] or 0:.1f} ms"
                + (f", flood {flood.get('hellos_per_s', 0):.0f} hellos/s" if flood else "")
            )
        return " (" + "; ".join(parts) + ")"
    if scenario == "handshake_login":
        h, lg = result["handshake_only"], result["handshake_login"]
        return f" ({h['per_s']:.0f} handshakes/s, {lg['per_s']:.2f} logins/s)"
    return (
        f" ({result['deliveries_per_s']:.0f} deliveries/s, p99 {result['latency']['p99_ms'] or 0:.1f} ms,"
        f" generator CPU {result['generator_cpu_util']:.2f})"
    )


def _warnings(labels: dict[str, str], raw: dict[str, list[dict[str, Any]]]) -> list[str]:
    out: list[str] = []
    for label, runs in raw.items():
        for n, r in enumerate(runs, 1):
            parts = [r] if "wall_s" in r else [v for v in r.values() if isinstance(v, dict) and "wall_s" in v]
            for part in parts:
                if part.get("generator_cpu_util", 0) >= 0.9:
                    out.append(
                        f"{label} run {n}: load generator at {part['generator_cpu_util']:.0%} of its CPU; "
                        "the figures may measure the generator, not the server"
                    )
                for role in ("server", "generator"):
                    other = part.get(f"{role}_cpu_other") or 0.0
                    if other >= 0.10:
                        out.append(
                            f"{label} run {n}: other programs used {other:.0%} of the {role} CPU "
                            "meanwhile; its figures may be disturbed"
                        )
                if part.get("errors"):
                    out.append(f"{label} run {n}: {part['errors']} errors, e.g. {part['error_examples'][:2]}")
            for key in ("order_errors", "lost_sessions", "stuck_after_drain", "unexpected_events"):
                if r.get(key):
                    out.append(f"{label} run {n}: {key} = {r[key]}")
            for line in r.get("server_problems", [])[:3]:
                out.append(f"{label} run {n}: server log: {line}")
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/bench.py",
        description="Load benchmark for chatserver (real server, real clients, loopback).",
    )
    p.add_argument(
        "--runs", type=int, default=3, help="runs per scenario, each with a fresh server (default 3)"
    )
    p.add_argument(
        "--duration", type=float, default=8.0, help="measured seconds of the fan-out scenario (default 8)"
    )
    p.add_argument(
        "--warmup", type=float, default=2.0, help="fan-out warm-up seconds before measuring (default 2)"
    )
    p.add_argument(
        "--logins", type=int, default=200, help="handshake+login connections in handshake_login (default 200)"
    )
    p.add_argument(
        "--handshakes",
        type=int,
        default=1000,
        help="handshake-only connections in handshake_login (default 1000)",
    )
    p.add_argument(
        "--login-concurrency", type=int, default=8, help="handshake_login connections in flight (default 8)"
    )
    p.add_argument("--receivers", type=int, default=50, help="fan-out receivers (default 50)")
    p.add_argument("--senders", type=int, default=5, help="fan-out senders (default 5)")
    p.add_argument("--window", type=int, default=4, help="outstanding messages per sender (default 4)")
    p.add_argument(
        "--body-size",
        type=int,
        default=BODY_SIZE,
        help=f"characters per message body in the lean fan-outs (default {BODY_SIZE}); e.g. to compare "
        "an unencrypted room with messages as long on the wire as fanout_r100_e2e's",
    )
    p.add_argument(
        "--window-total",
        type=int,
        default=0,
        help="fanout_rN: messages outstanding in all (default 0: calibrate once per case)",
    )
    p.add_argument(
        "--sample",
        type=int,
        default=5,
        help="fanout_rN: receivers that parse and check every message (default 5; all decrypt)",
    )
    p.add_argument(
        "--hash-cost",
        type=int,
        default=15,
        help="password_hash_cost, log2 N of scrypt (default 15, as in production)",
    )
    p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, from {', '.join(SCENARIOS)} (default all)",
    )
    p.add_argument("--dm-pairs", type=int, default=20, help="dm: sender/recipient pairs (default 20)")
    p.add_argument("--rooms", type=int, default=20, help="rooms: number of rooms (default 20)")
    p.add_argument("--room-members", type=int, default=10, help="rooms: members per room (default 10)")
    p.add_argument("--durable-senders", type=int, default=20, help="durable: senders (default 20)")
    p.add_argument(
        "--durable-window",
        type=int,
        default=16,
        help="durable: unacknowledged messages per sender (default 16)",
    )
    p.add_argument("--catchup-clients", type=int, default=1000, help="catchup: clients (default 1000)")
    p.add_argument(
        "--catchup-missed", type=int, default=20, help="catchup: messages each client missed (default 20)"
    )
    p.add_argument(
        "--setup-hash-cost",
        type=int,
        default=10,
        help="password_hash_cost for the scenarios that do not measure logins (default 10)",
    )
    p.add_argument(
        "--pad-block",
        type=int,
        default=None,
        help="[server] pad_block of every server started (default: the server's default, 32; 0: no padding)",
    )
    p.add_argument(
        "--flood-duration", type=float, default=8.0, help="flood_49: measured seconds per window (default 8)"
    )
    p.add_argument(
        "--flood-resumed-rate",
        type=float,
        default=20.0,
        help="flood_49: real resumed logins per second (default 20)",
    )
    p.add_argument(
        "--flood-full-rate",
        type=float,
        default=5.0,
        help="flood_49: real full-handshake logins per second, from 10 addresses of one /24 (default 5)",
    )
    p.add_argument(
        "--flood-concurrency",
        type=int,
        default=2000,
        help="flood_49: the flooder's hellos awaiting an answer (default 2000)",
    )
    p.add_argument(
        "--flood-rate",
        type=float,
        default=0.0,
        help="flood_49: cap on the flooder's new connections a second (default 0: as fast as it can)",
    )
    p.add_argument(
        "--flood-max",
        type=int,
        default=100_000,
        help="flood_49: the most connections the flooder opens per window (default 100000)",
    )
    p.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run the peer harness's connrate_c10 and tls_connrate_c10 for ngIRCd (--runs reps) "
        "and show its registrations per server CPU-second next to ours (default: when a connrate "
        "scenario is selected, as in make bench; --no-peers: never)",
    )
    p.add_argument(
        "--peers-dir",
        default=str(ROOT.parent / "shared" / "bench-peers"),
        help="the peer harness (read only; default ../shared/bench-peers)",
    )
    p.add_argument(
        "--peers-python",
        default="/tmp/benchvenv/bin/python",
        help="interpreter for the peer harness's load generator (with uvloop; default /tmp/benchvenv/bin/python)",
    )
    p.add_argument(
        "--profile-dir",
        default=None,
        help="profile into this directory: reconnect_1k/catchup's servers (twistd's cProfile, main "
        "thread) and the generator's catch-up window; the connrate servers' first 8 s (py-spy, if installed)",
    )
    p.add_argument("--results-dir", default=str(ROOT / "bench" / "results"), help="where the JSON goes")
    p.add_argument(
        "--no-pin", action="store_true", help="do not pin the server and the generator to separate CPUs"
    )
    p.add_argument("--keep-temp", action="store_true", help="keep the servers' directories and logs")
    args = p.parse_args(argv)
    scenarios = []
    for name in (s.strip() for s in args.scenarios.split(",")):
        if not name:
            continue
        # "fanout_50x5" (any label of the classic case) is "fanout".
        key = "fanout" if name.startswith("fanout") and name not in SCENARIOS else name
        if key not in SCENARIOS:
            p.error(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
        if key not in scenarios:
            scenarios.append(key)
    if not scenarios:
        p.error("no scenario selected")
    args.scenarios = scenarios
    if args.peers is None:
        args.peers = any(s.startswith("connrate") for s in scenarios)
    checks = [
        (args.runs, 1, 100, "--runs"),
        (args.logins, 1, 100_000, "--logins"),
        (args.handshakes, 1, 1_000_000, "--handshakes"),
        (args.login_concurrency, 1, 1000, "--login-concurrency"),
        (args.receivers, 1, 5000, "--receivers"),
        (args.senders, 1, 1000, "--senders"),
        (args.window, 1, 10_000, "--window"),
        (args.hash_cost, 10, 18, "--hash-cost"),
        (args.setup_hash_cost, 10, 18, "--setup-hash-cost"),
        (args.dm_pairs, 1, 1000, "--dm-pairs"),
        (args.rooms, 1, 1000, "--rooms"),
        (args.room_members, 2, 1000, "--room-members"),
        (args.durable_senders, 1, 1000, "--durable-senders"),
        (args.durable_window, 1, 1000, "--durable-window"),
        (args.catchup_clients, 1, 20_000, "--catchup-clients"),
        (args.catchup_missed, 1, 10_000, "--catchup-missed"),
    ]
    for value, low, high, name in checks:
        if not low <= value <= high:
            p.error(f"{name} must be between {low} and {high}")
    if args.pad_block is not None and not 0 <= args.pad_block <= 4096:
        p.error("--pad-block must be between 0 and 4096")
    if not 0.5 <= args.flood_duration <= 600 or not 0 <= args.flood_resumed_rate <= 1000:
        p.error("--flood-duration must be 0.5..600 s and --flood-resumed-rate 0..1000")
    if not 0 <= args.flood_full_rate <= 20 or not 1 <= args.flood_concurrency <= 10_000:
        p.error("--flood-full-rate must be 0..20 (the /24's default budget) and --flood-concurrency 1..10000")
    if not 0.1 <= args.duration <= 3600 or not 0 <= args.warmup <= 600:
        p.error("--duration must be 0.1..3600 and --warmup 0..600 seconds")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    raise_file_limit()
    # Other programs running now would skew every figure: look first.
    args.busy_before = psutil.cpu_percent(interval=1.0, percpu=True)
    tmp = Path(tempfile.mkdtemp(prefix="chatbench-"))
    try:
        task.react(lambda reactor: defer.ensureDeferred(bench(reactor, args, tmp)))
    finally:
        # Also reached when a signal stops the reactor mid-run.
        kill_live_servers()
        if args.keep_temp:
            print(f"bench: server directories kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
