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
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
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
from typing import Any, Awaitable, Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
from twisted.internet import defer, task  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402

from chatclient.session import ChatSession, connect  # noqa: E402
from chatserver import crypto  # noqa: E402

PASSWORD = "bench password 0123456789"
ROOM = "lobby"
BODY_SIZE = 100  # characters per message body, padding included
OP_TIMEOUT = 60.0  # any single connect/login/close
SERVER_START_TIMEOUT = 60.0
DRAIN_TIMEOUT = 15.0
SETUP_CONCURRENCY = 8  # registrations in flight while setting up

# Servers started and not yet stopped: killed on any way out.
_LIVE: list["ServerProcess"] = []


# --- small helpers ----------------------------------------------------------


def within(reactor: Any, d: Deferred, seconds: float, what: str) -> Deferred:
    """A Deferred that fires like ``d`` or fails with TimeoutError after
    ``seconds``.  ``d`` itself is not cancelled (the client library does
    not expect its request Deferreds to be cancelled)."""
    out: Deferred = Deferred()

    def ok(result: Any) -> None:
        if not out.called:
            out.callback(result)

    def bad(failure: Any) -> None:
        if not out.called:
            out.errback(failure)

    d.addCallbacks(ok, bad)

    def expire() -> None:
        if not out.called:
            out.errback(TimeoutError(f"{what} took longer than {seconds:g} s"))

    call = reactor.callLater(seconds, expire)

    def cleanup(result: Any) -> Any:
        if call.active():
            call.cancel()
        return result

    out.addBoth(cleanup)
    return out


def sleep(reactor: Any, seconds: float) -> Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


async def bounded_pool(n: int, concurrency: int, op: Callable[[int], Awaitable[Any]]) -> None:
    """Run ``op(0) .. op(n-1)`` with at most ``concurrency`` in flight."""
    indices = iter(range(n))

    async def worker() -> None:
        for i in indices:
            await op(i)

    workers = [defer.ensureDeferred(worker()) for _ in range(max(1, min(concurrency, n)))]
    await defer.gatherResults(workers, consumeErrors=True)


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, math.ceil(p / 100.0 * len(sorted_values)) - 1))
    return sorted_values[k]


def latency_ms(samples_ns: list[int]) -> dict[str, float | None]:
    values = sorted(samples_ns)
    to_ms = lambda v: None if v is None else v / 1e6  # noqa: E731
    return {
        "p50_ms": to_ms(percentile(values, 50)),
        "p99_ms": to_ms(percentile(values, 99)),
        "max_ms": to_ms(values[-1] if values else None),
        "samples": len(values),
    }


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


class Meter:
    """Wall time, the CPU time of the server and of this process, and how
    busy the two pinned CPUs were (from /proc/stat, whoever used them)."""

    def __init__(self, server: psutil.Process, cpus: tuple[int | None, int | None]) -> None:
        self.server = server
        self.me = psutil.Process()
        self.cpus = cpus

    def start(self) -> None:
        self.t0 = time.perf_counter()
        self.s0 = cpu_seconds(self.server)
        self.g0 = cpu_seconds(self.me)
        self.c0 = psutil.cpu_times(percpu=True)

    def stop(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.t0
        server = cpu_seconds(self.server) - self.s0
        gen = cpu_seconds(self.me) - self.g0
        c1 = psutil.cpu_times(percpu=True)
        figures: dict[str, Any] = {
            "wall_s": wall,
            "server_cpu_s": server,
            "generator_cpu_s": gen,
            "server_cpu_util": server / wall if wall > 0 else 0.0,
            "generator_cpu_util": gen / wall if wall > 0 else 0.0,
        }
        for role, cpu in zip(("server", "generator"), self.cpus, strict=True):
            if cpu is None or cpu >= len(c1):
                continue
            before, after = self.c0[cpu], c1[cpu]
            delta = {f: getattr(after, f) - getattr(before, f) for f in after._fields}
            total = sum(delta.values()) - delta.get("guest", 0) - delta.get("guest_nice", 0)
            if total > 0:
                idle = delta.get("idle", 0) + delta.get("iowait", 0)
                figures[f"{role}_cpu_busy"] = 1 - idle / total
                # Busy time of that CPU not spent by our process: other
                # programs on the machine (and some kernel work).
                figures[f"{role}_cpu_other"] = max(
                    0.0, figures[f"{role}_cpu_busy"] - figures[f"{role}_cpu_util"]
                )
                figures[f"{role}_cpu_steal"] = delta.get("steal", 0) / total
        return figures


# --- CPU placement ------------------------------------------------------------


def plan_cpus() -> tuple[int | None, int | None]:
    """(server CPU, generator CPU), or (None, None) with fewer than 2 CPUs."""
    try:
        available = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return None, None
    if len(available) < 2:
        return None, None
    return available[0], available[1]


def _child_setup(server_cpu: int | None) -> Callable[[], None]:
    def setup() -> None:
        if server_cpu is not None:
            # Before exec, so every thread the server ever starts inherits it.
            os.sched_setaffinity(0, {server_cpu})
        try:  # die with the bench even if it is killed with SIGKILL
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except Exception:
            pass

    return setup


# --- the server process ---------------------------------------------------------


class ServerProcess:
    """``twistd chatserver`` in a temporary directory; ``port`` once started."""

    def __init__(self, base: Path, key_pem: bytes, hash_cost: int, server_cpu: int | None) -> None:
        self.base = base
        self.hash_cost = hash_cost
        self.server_cpu = server_cpu
        self.data_dir = base / "data"
        self.log_dir = base / "log"
        self.config = base / "chatserver.ini"
        self.output = base / "server.out"
        self.popen: subprocess.Popen[bytes] | None = None
        self.proc: psutil.Process | None = None
        self.port = 0
        self.data_dir.mkdir(parents=True, mode=0o700)
        self.log_dir.mkdir(parents=True, mode=0o700)
        # A pre-made identity key: RSA generation per run would only slow
        # the bench down; the server loads it exactly as in production.
        fd = os.open(self.data_dir / "server_key.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
        self.config.write_text(self.ini(), encoding="utf-8")

    def ini(self) -> str:
        # Production defaults except: an ephemeral loopback port, and limits
        # that count per address raised, because all bench clients share
        # 127.0.0.1.  The hash cost is the configured one (default 15, the
        # production default).
        return (
            "; generated by bench/bench.py\n"
            "[server]\n"
            "endpoint = tcp:0:interface=127.0.0.1\n"
            "max_connections = 100000\n"
            "max_connections_per_address = 100000\n"
            "\n[accounts]\n"
            f"password_hash_cost = {self.hash_cost}\n"
            "login_failures_per_account = 1000000\n"
            "login_failures_per_address = 1000000\n"
        )

    def command(self) -> list[str]:
        twistd = Path(sys.executable).with_name("twistd")
        return [
            str(twistd), "-n", "--pidfile=", "chatserver",
            "--config", str(self.config),
            "--data-dir", str(self.data_dir),
            "--log-dir", str(self.log_dir),
        ]  # fmt: skip

    async def start(self, reactor: Any) -> None:
        out = self.output.open("wb")
        try:
            self.popen = subprocess.Popen(
                self.command(),
                cwd=str(ROOT),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_child_setup(self.server_cpu),
            )
        finally:
            out.close()
        _LIVE.append(self)
        self.proc = psutil.Process(self.popen.pid)
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"server exited with status {self.popen.returncode} at start-up:\n{self.tail()}"
                )
            port = self._listening_port()
            if port:
                self.port = port
                return
            await sleep(reactor, 0.05)
        raise RuntimeError(f"server did not listen within {SERVER_START_TIMEOUT:g} s:\n{self.tail()}")

    def _listening_port(self) -> int | None:
        assert self.proc is not None
        try:
            conns = self.proc.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        for c in conns:
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.ip == "127.0.0.1":
                return int(c.laddr.port)
        return None

    @property
    def endpoint(self) -> str:
        return f"tcp:host=127.0.0.1:port={self.port}"

    def tail(self, lines: int = 12) -> str:
        try:
            text = self.output.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:])

    def problems(self) -> list[str]:
        """Lines from the server's output and main log that indicate a bug."""
        found: list[str] = []
        for path in (self.output, self.log_dir / "chatserver.log"):
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                if any(tag in line for tag in ("Traceback", "Unhandled", "#critical]", "#error]")):
                    found.append(f"{path.name}: {line.strip()[:300]}")
        return found[:20]

    def stop(self) -> int | None:
        """Terminate (SIGTERM, then SIGKILL after 10 s); returns the status."""
        if self in _LIVE:
            _LIVE.remove(self)
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        return self.popen.returncode


def kill_live_servers() -> None:
    for server in list(_LIVE):
        try:
            server.stop()
        except Exception as e:  # keep killing the others
            print(f"bench: could not stop server: {e}", file=sys.stderr)


# --- client helpers ----------------------------------------------------------------


class Clients:
    """Connects with the real client library, pinned to the server's key."""

    def __init__(self, reactor: Any, server: ServerProcess, fingerprint: str) -> None:
        self.reactor = reactor
        self.server = server
        self.fingerprint = fingerprint

    def verify(self, fingerprint: str) -> bool:
        return fingerprint == self.fingerprint

    def connect(self) -> Deferred:
        return within(
            self.reactor, connect(self.reactor, self.server.endpoint, self.verify), OP_TIMEOUT, "connect"
        )

    def wait(self, d: Deferred, what: str) -> Deferred:
        return within(self.reactor, d, OP_TIMEOUT, what)

    async def close(self, session: ChatSession) -> None:
        try:
            await within(self.reactor, session.close(), 10.0, "close")
        except Exception:
            session.protocol.transport.abortConnection()

    async def register_all(self, names: list[str]) -> list[ChatSession]:
        """Connected, registered (hence logged in and in the lobby) sessions."""
        sessions: dict[int, ChatSession] = {}

        async def one(i: int) -> None:
            session = await self.connect()
            try:
                await self.wait(session.register(names[i], PASSWORD), "register")
            except BaseException:
                await self.close(session)
                raise
            sessions[i] = session

        try:
            await bounded_pool(len(names), SETUP_CONCURRENCY, one)
        except BaseException:
            await defer.gatherResults(
                [defer.ensureDeferred(self.close(s)) for s in sessions.values()], consumeErrors=True
            )
            raise
        return [sessions[i] for i in range(len(names))]

    async def close_all(self, sessions: list[ChatSession]) -> None:
        await defer.gatherResults([defer.ensureDeferred(self.close(s)) for s in sessions], consumeErrors=True)


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
    figures = meter.stop()
    ok = len(latencies)
    figures.update(
        attempts=n,
        completed=ok,
        errors=len(errors),
        error_examples=sorted(set(errors))[:5],
        per_s=ok / figures["wall_s"] if figures["wall_s"] > 0 else 0.0,
        per_server_cpu_s=ok / figures["server_cpu_s"] if figures["server_cpu_s"] > 0 else None,
        latency=latency_ms(latencies),
    )
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


# --- scenario 2: fan-out --------------------------------------------------------------


class Fanout:
    """The closed loop of scenario 2; see the module docstring."""

    def __init__(
        self, reactor: Any, receivers: list[ChatSession], senders: list[ChatSession], window: int
    ) -> None:
        self.reactor = reactor
        self.receivers = receivers
        self.senders = senders
        self.window = window
        self.n_receivers = len(receivers)
        self.outstanding: dict[tuple[int, int], int] = {}
        self.next_seq = [0] * len(senders)
        # Per receiver, per sender: the next sequence number expected
        # (the server must keep each sender's messages in order).
        self.expected = [[0] * len(senders) for _ in receivers]
        self.measuring = False
        self.stopping = False
        self.drained: Deferred | None = None
        self.sent_total = 0
        self.deliveries_total = 0
        self.deliveries = 0
        self.messages_completed = 0
        self.messages_sent = 0
        self.latencies: list[int] = []
        self.order_errors = 0
        self.unexpected = 0
        self.errors: list[str] = []
        self.lost_sessions = 0
        pad = "x" * BODY_SIZE
        self.pad = pad
        for r, session in enumerate(receivers):
            session.add_listener(self._listener(r))
        for session in receivers + senders:
            session.closed.addCallback(self._lost)

    def _lost(self, info: Any) -> Any:
        if not self.stopping:
            self.lost_sessions += 1
            self.errors.append(f"session lost during the run: {info}")
        return info

    def _listener(self, r: int) -> Callable[[dict[str, Any]], None]:
        expected = self.expected[r]

        def received(event: dict[str, Any]) -> None:
            if event.get("type") != "msg":
                return
            now = time.perf_counter_ns()
            try:
                s_text, seq_text, sent_text, _ = event["body"].split(" ", 3)
                s, seq, sent = int(s_text), int(seq_text), int(sent_text)
            except (KeyError, ValueError):
                self.unexpected += 1
                return
            key = (s, seq)
            remaining = self.outstanding.get(key)
            if remaining is None:
                self.unexpected += 1
                return
            if seq != expected[s]:
                self.order_errors += 1
            expected[s] = seq + 1
            self.deliveries_total += 1
            if self.measuring:
                self.deliveries += 1
                self.latencies.append(now - sent)
            if remaining > 1:
                self.outstanding[key] = remaining - 1
                return
            del self.outstanding[key]
            if self.measuring:
                self.messages_completed += 1
            if not self.stopping:
                self.send(s)
            elif not self.outstanding and self.drained is not None and not self.drained.called:
                self.drained.callback(None)

        return received

    def send(self, s: int) -> None:
        seq = self.next_seq[s]
        self.next_seq[s] = seq + 1
        self.outstanding[(s, seq)] = self.n_receivers
        self.sent_total += 1
        if self.measuring:
            self.messages_sent += 1
        body = f"{s} {seq} {time.perf_counter_ns()} "
        body += self.pad[: max(1, BODY_SIZE - len(body))]
        self.senders[s].say(ROOM, body).addErrback(self._send_failed)

    def _send_failed(self, failure: Any) -> None:
        self.errors.append(f"say failed: {failure.getErrorMessage()}")

    async def run(self, meter: Meter, warmup: float, duration: float) -> dict[str, Any]:
        for s in range(len(self.senders)):
            for _ in range(self.window):
                self.send(s)
        await sleep(self.reactor, warmup)
        meter.start()
        self.measuring = True
        await sleep(self.reactor, duration)
        self.measuring = False
        figures = meter.stop()
        self.stopping = True
        self.drained = Deferred()
        if not self.outstanding:
            self.drained.callback(None)
        stuck = 0
        try:
            await within(self.reactor, self.drained, DRAIN_TIMEOUT, "draining outstanding messages")
        except TimeoutError:
            stuck = len(self.outstanding)
        wall = figures["wall_s"]
        figures.update(
            receivers=self.n_receivers,
            senders=len(self.senders),
            window_per_sender=self.window,
            deliveries=self.deliveries,
            deliveries_per_s=self.deliveries / wall,
            deliveries_per_server_cpu_s=(
                self.deliveries / figures["server_cpu_s"] if figures["server_cpu_s"] > 0 else None
            ),
            messages_sent=self.messages_sent,
            messages_completed=self.messages_completed,
            messages_per_s=self.messages_completed / wall,
            latency=latency_ms(self.latencies),
            total_sent=self.sent_total,
            total_deliveries=self.deliveries_total,
            stuck_after_drain=stuck,
            order_errors=self.order_errors,
            unexpected_events=self.unexpected,
            lost_sessions=self.lost_sessions,
            errors=len(self.errors),
            error_examples=sorted(set(self.errors))[:5],
        )
        return figures


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
    return {"handshake_login": "handshake_login", "fanout": f"fanout_{args.receivers}x{args.senders}"}


async def one_run(
    reactor: Any,
    args: argparse.Namespace,
    scenario: str,
    base: Path,
    key_pem: bytes,
    fingerprint: str,
    cpus: tuple[int | None, int | None],
) -> dict[str, Any]:
    server = ServerProcess(base, key_pem, args.hash_cost, cpus[0])
    completed = False
    try:
        t0 = time.perf_counter()
        await server.start(reactor)
        assert server.proc is not None
        clients = Clients(reactor, server, fingerprint)
        meter = Meter(server.proc, cpus)
        if scenario == "handshake_login":
            result = await scenario_handshake_login(reactor, args, clients, meter)
        else:
            result = await scenario_fanout(reactor, args, clients, meter)
        result["run_wall_s"] = time.perf_counter() - t0
        result["server_problems"] = server.problems()
        completed = True
        return result
    finally:
        status = server.stop()
        if completed and status not in (0, None, -signal.SIGTERM):
            print(f"bench: server exited with status {status}:\n{server.tail()}", file=sys.stderr)


# (label, path into a run's result, format) for the table and the summary.
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
    "fanout": [
        ("deliveries /s (wall)", ("deliveries_per_s",), "{:.0f}"),
        ("deliveries /server CPU-s", ("deliveries_per_server_cpu_s",), "{:.0f}"),
        ("messages /s (all receivers got it)", ("messages_per_s",), "{:.1f}"),
        ("delivery latency p50 ms", ("latency", "p50_ms"), "{:.2f}"),
        ("delivery latency p99 ms", ("latency", "p99_ms"), "{:.2f}"),
        ("server CPU util", ("server_cpu_util",), "{:.2f}"),
        ("generator CPU util", ("generator_cpu_util",), "{:.2f}"),
        ("other load, server CPU", ("server_cpu_other",), "{:.2f}"),
        ("other load, generator CPU", ("generator_cpu_other",), "{:.2f}"),
        ("order errors / lost / stuck", ("problems",), "{:.0f}"),
        ("setup (register all) s", ("setup_s",), "{:.1f}"),
    ],
}


def dig(result: dict[str, Any], path: tuple[str, ...]) -> float | None:
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
    fingerprint = crypto.fingerprint(crypto.rsa_public_der(key))
    params = {k: v for k, v in vars(args).items() if k not in ("results_dir", "busy_before")}
    params.update(body_size=BODY_SIZE, room=ROOM, setup_concurrency=SETUP_CONCURRENCY)
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
    try:
        for scenario in args.scenarios:
            for run in range(args.runs):
                print(f"bench: {labels[scenario]} run {run + 1}/{args.runs} ...", end=" ", flush=True)
                t0 = time.perf_counter()
                try:
                    result = await one_run(
                        reactor, args, scenario, tmp / f"{scenario}-{run}", key_pem, fingerprint, cpus
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

    summaries = {s: summarize(s, raw[labels[s]]) for s in args.scenarios if raw[labels[s]]}
    print()
    print(
        f"chatserver bench: {args.runs} run(s) per scenario, median and range; "
        f"hash cost {args.hash_cost}; {machine['cpu_count']} CPUs"
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
    print()
    print(table(labels, summaries) if summaries else "(no run completed)")
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


def _run_note(scenario: str, result: dict[str, Any]) -> str:
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
        "--hash-cost",
        type=int,
        default=15,
        help="password_hash_cost, log2 N of scrypt (default 15, as in production)",
    )
    p.add_argument(
        "--scenarios",
        default="handshake_login,fanout",
        help="comma-separated: handshake_login, fanout (default both)",
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
        key = "fanout" if name.startswith("fanout") else name
        if key not in ("handshake_login", "fanout"):
            p.error(f"unknown scenario {name!r}; choose from handshake_login, fanout")
        if key not in scenarios:
            scenarios.append(key)
    if not scenarios:
        p.error("no scenario selected")
    args.scenarios = scenarios
    checks = [
        (args.runs, 1, 100, "--runs"),
        (args.logins, 1, 100_000, "--logins"),
        (args.handshakes, 1, 1_000_000, "--handshakes"),
        (args.login_concurrency, 1, 1000, "--login-concurrency"),
        (args.receivers, 1, 5000, "--receivers"),
        (args.senders, 1, 1000, "--senders"),
        (args.window, 1, 10_000, "--window"),
        (args.hash_cost, 10, 18, "--hash-cost"),
    ]
    for value, low, high, name in checks:
        if not low <= value <= high:
            p.error(f"{name} must be between {low} and {high}")
    if not 0.1 <= args.duration <= 3600 or not 0 <= args.warmup <= 600:
        p.error("--duration must be 0.1..3600 and --warmup 0..600 seconds")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
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
