"""The bench's machinery: the server process, the meters, the clients and
the closed-loop fan-out engine, shared by every scenario module."""

from __future__ import annotations

import ctypes
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Awaitable, Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
from twisted.internet import defer, task  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402

from chatclient.session import ChatSession, connect  # noqa: E402

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


def rate_figures(figures: dict[str, Any], latencies: list[int], errors: list[str]) -> dict[str, Any]:
    """Add to a :class:`Meter`'s figures the operations that completed
    (one latency each) per wall second and per server CPU-second, their
    latency, and the errors."""
    ok = len(latencies)
    figures.update(
        completed=ok,
        errors=len(errors),
        error_examples=sorted(set(errors))[:5],
        per_s=ok / figures["wall_s"] if figures["wall_s"] > 0 else 0.0,
        per_server_cpu_s=ok / figures["server_cpu_s"] if figures["server_cpu_s"] > 0 else None,
        latency=latency_ms(latencies),
    )
    return figures


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

    def __init__(
        self,
        server: psutil.Process,
        cpus: tuple[int | None, int | None],
        process: "ServerProcess | None" = None,
        server_side: Callable[[], dict[tuple[str, int], tuple[float, int]]] | None = None,
    ) -> None:
        """``server_side``: a snapshot of every server-side process's CPU
        seconds by part (``scale_out.cpu_snapshot``), if they are counted
        together (``all_cpu_s``, ``cpu_by_part``)."""
        self.server = server
        self.me = psutil.Process()
        self.cpus = cpus
        self.process = process  # scraped for its group commits, if given
        self.commits0: dict[Any, float] = {}
        self.server_side = server_side
        self.parts0: dict[tuple[str, int], tuple[float, int]] = {}

    def start(self) -> None:
        if self.process is not None:
            self.commits0 = self.process.commit_buckets()
        self.t0 = time.perf_counter()
        self.s0 = cpu_seconds(self.server)
        self.s0_sys = self.server.cpu_times().system
        self.g0 = cpu_seconds(self.me)
        self.c0 = psutil.cpu_times(percpu=True)
        if self.server_side is not None:
            self.parts0 = self.server_side()

    def stop(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.t0
        server = cpu_seconds(self.server) - self.s0
        gen = cpu_seconds(self.me) - self.g0
        c1 = psutil.cpu_times(percpu=True)
        figures: dict[str, Any] = {
            "wall_s": wall,
            "server_cpu_s": server,
            # The kernel's share (sockets, epoll, thread wake-ups), which
            # Python-level profiles do not show.
            "server_cpu_system_s": self.server.cpu_times().system - self.s0_sys,
            "generator_cpu_s": gen,
            "server_cpu_util": server / wall if wall > 0 else 0.0,
            "generator_cpu_util": gen / wall if wall > 0 else 0.0,
        }
        # What the server's CPU did for the server: every server-side
        # process pinned to it, if they are counted together.
        server_side_util = figures["server_cpu_util"]
        if self.server_side is not None:
            from scale_out import cpu_by_part

            parts1 = self.server_side()
            parts = cpu_by_part(self.parts0, parts1)
            figures["cpu_by_part"] = parts
            # Every process shares the server's CPU: how often it changed hands.
            figures["switches_by_part"] = cpu_by_part(self.parts0, parts1, field=1)
            figures["util_by_part"] = {k: v / wall if wall > 0 else 0.0 for k, v in parts.items()}
            figures["all_cpu_s"] = sum(parts.values())
            figures["all_cpu_util"] = server_side_util = figures["all_cpu_s"] / wall if wall > 0 else 0.0
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
                ours = server_side_util if role == "server" else figures[f"{role}_cpu_util"]
                figures[f"{role}_cpu_other"] = max(0.0, figures[f"{role}_cpu_busy"] - ours)
                figures[f"{role}_cpu_steal"] = delta.get("steal", 0) / total
        if self.process is not None:
            commits = commit_figures(self.commits0, self.process.commit_buckets())
            commits["per_s"] = commits["commits"] / wall if wall > 0 else 0.0
            figures["commits"] = commits
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


def _free_port() -> int:
    """A loopback port free just now (the server binds it moments later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listen_overflows() -> int | None:
    """The kernel's count of connections dropped from full listen queues
    (TcpExt ListenOverflows, all sockets), or None off Linux."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table["ListenOverflows"]) if "ListenOverflows" in table else None
    return None


def commit_figures(before: dict[Any, float], after: dict[Any, float]) -> dict[str, Any]:
    """The group commits between two :meth:`ServerProcess.commit_buckets`
    scrapes: how many, their mean, and the bucket bounds that hold the
    median and the 99th percentile (a histogram: "at most" figures)."""
    bounds = sorted(b for b in after if b != "sum")
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    figures: dict[str, Any] = {"commits": total}
    if total <= 0:
        return figures
    figures["mean_ms"] = 1000 * (after["sum"] - before.get("sum", 0.0)) / total
    for name, p in (("p50_at_most_ms", 0.50), ("p99_at_most_ms", 0.99)):
        bound = next(b for b, c in zip(bounds, counts, strict=True) if c >= p * total)
        figures[name] = 1000 * bound
    over = {
        f"over_{1000 * b:g}_ms": total - c for b, c in zip(bounds, counts, strict=True) if b in (0.003, 0.01)
    }
    figures.update(over)
    return figures


def raise_file_limit() -> None:
    """Thousands of connections need thousands of descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))


def _child_setup(server_cpu: int | None) -> Callable[[], None]:
    def setup() -> None:
        raise_file_limit()
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

    def __init__(
        self,
        base: Path,
        key_pem: bytes,
        hash_cost: int,
        server_cpu: int | None,
        extra_ini: str = "",
        *,
        default_handshake_limits: bool = False,
        pad_block: int | None = None,
        scale: tuple[int, str, str, str] | None = None,
    ) -> None:
        """``default_handshake_limits``: keep the server's own full-handshake
        budgets (``[limits] handshakes_*``; flood_49 measures them) instead
        of lifting them with the other limits.  ``pad_block``: ``[server]
        pad_block`` (None: the server's default).  ``scale``: (workers,
        database URL, hub URL, hub prefix) of a scale-out run."""
        self.base = base
        self.scale = scale
        self.workers = scale[0] if scale is not None else 1
        self.extra_ini = extra_ini
        self.default_handshake_limits = default_handshake_limits
        self.pad_block = pad_block
        #: If set, the server runs under twistd's cProfile (main thread
        #: only) and dumps its stats here when stopped cleanly.
        self.profile: Path | None = None
        self.hash_cost = hash_cost
        self.server_cpu = server_cpu
        self.data_dir = base / "data"
        self.log_dir = base / "log"
        self.config = base / "chatserver.ini"
        self.output = base / "server.out"
        self.popen: subprocess.Popen[bytes] | None = None
        self.proc: psutil.Process | None = None
        self.port = 0
        # Prometheus /metrics, scraped around a measured window for the
        # commit-duration histogram (the server pays nothing unscraped).
        self.metrics_port = _free_port()
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
        # production default).  The full-handshake budgets are lifted too,
        # unless the scenario measures them (default_handshake_limits).
        handshakes = (
            ""
            if self.default_handshake_limits
            else (
                "handshakes_rate = 1000000\n"
                "handshakes_burst = 1000000\n"
                "handshakes_prefix_rate = 1000000\n"
                "handshakes_prefix_burst = 1000000\n"
            )
        )
        pad = "" if self.pad_block is None else f"pad_block = {self.pad_block}\n"
        scale = ""
        if self.scale is not None:
            workers, database, hub, prefix = self.scale
            pad += f"workers = {workers}\n"
            # Workers report to the main process's /metrics once a monitor
            # interval: 1 s, so a scrape around an 8 s window is near enough.
            scale = (
                f"\n[store]\ndatabase = {database}\n\n[hub]\nurl = {hub}\nprefix = {prefix}\n"
                "\n[monitor]\ninterval = 1\n"
            )
        return (
            "; generated by bench/bench.py\n"
            "[server]\n"
            "endpoint = tcp:0:interface=127.0.0.1:backlog=4096\n"
            "max_connections = 100000\n"
            "max_connections_per_address = 100000\n"
            "max_connections_per_prefix = 100000\n" + pad + "\n[accounts]\n"
            f"password_hash_cost = {self.hash_cost}\n"
            "login_failures_per_account = 1000000\n"
            "login_failures_per_address = 1000000\n"
            # The bench measures throughput, not the rate limits (which
            # have their own tests): the buckets are made bottomless.
            "\n[limits]\n"
            "messages_rate = 1000000\n"
            "messages_burst = 1000000\n"
            "joins_rate = 1000000\n"
            "joins_burst = 1000000\n"
            "rooms_rate = 1000000\n"
            "rooms_burst = 1000000\n"
            "logins_rate = 1000000\n"
            "logins_burst = 1000000\n"
            "lookups_rate = 1000000\n"
            "lookups_burst = 1000000\n"
            "registrations_rate = 1000000\n"
            "registrations_burst = 1000000\n"
            "registrations_prefix_rate = 1000000\n"
            "registrations_prefix_burst = 1000000\n" + handshakes +
            # catchup puts 1,000 clients and a poster in the lobby.
            "\n[chat]\n"
            "max_room_members = 100000\n"
            "\n[metrics]\n"
            "enabled = true\n"
            f"endpoint = tcp:{self.metrics_port}:interface=127.0.0.1\n" + scale + self.extra_ini
        )

    def command(self) -> list[str]:
        twistd = Path(sys.executable).with_name("twistd")
        profile = [f"--profile={self.profile}", "--profiler=cprofile", "--savestats"] if self.profile else []
        # As the systemd unit runs it: the journal (here server.out) gets
        # warnings only; every line is in the log files.
        return [
            str(twistd), "-n", "--pidfile=", "--logger=chatserver.logs.console", *profile, "chatserver",
            "--config", str(self.config),
            "--data-dir", str(self.data_dir),
            "--log-dir", str(self.log_dir),
        ]  # fmt: skip

    async def start(self, reactor: Any) -> None:
        out = self.output.open("ab")
        try:
            self.popen = subprocess.Popen(
                self.command(),
                cwd=str(ROOT),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # This checkout's server, whatever the environment has installed.
                env={
                    **os.environ,
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                },
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
        """The port, once every serving process listens on it: the one
        process, or each of the workers (the main process only holds the
        port), so that the kernel spreads the first clients over them all."""
        assert self.proc is not None
        try:
            serving = [self.proc] if self.workers == 1 else self.proc.children()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        ports: set[int] = set()
        listening = 0
        for proc in serving:
            try:
                conns = proc.net_connections(kind="tcp")
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            found = [
                int(c.laddr.port)
                for c in conns
                if c.status == psutil.CONN_LISTEN
                and c.laddr
                and c.laddr.ip == "127.0.0.1"
                and c.laddr.port != self.metrics_port
            ]
            if found:
                listening += 1
                ports.update(found)
        if listening >= self.workers and len(ports) == 1:
            return ports.pop()
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
        # The workers log into log/worker-I/.
        for path in (self.output, *sorted(self.log_dir.glob("**/chatserver.log"))):
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                if any(tag in line for tag in ("Traceback", "Unhandled", "#critical]", "#error]")):
                    found.append(f"{path.name}: {line.strip()[:300]}")
        return found[:20]

    async def restart_killed(self, reactor: Any) -> float:
        """SIGKILL, then start again on the same port; returns the time
        (perf_counter) at which it listens again."""
        assert self.popen is not None
        self.popen.kill()
        self.popen.wait(10)
        text = self.config.read_text(encoding="utf-8")
        self.config.write_text(
            text.replace("endpoint = tcp:0:", f"endpoint = tcp:{self.port}:"), encoding="utf-8"
        )
        if self in _LIVE:
            _LIVE.remove(self)
        await self.start(reactor)
        return time.perf_counter()

    def commit_buckets(self) -> dict[float, float]:
        """The server's commit-duration histogram now: upper bound in
        seconds -> commits so far that took at most that long (cumulative,
        ``inf`` = all), plus ``"sum"``: their total seconds.  A blocking
        scrape, for before and after a measured window only."""
        from prometheus_client.parser import text_string_to_metric_families

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode("utf-8")
        out: dict[Any, float] = {}
        for family in text_string_to_metric_families(text):
            if family.name != "chatserver_db_commit_seconds":
                continue
            # Summed over the workers' series (a ``worker`` label each).
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    le = float(sample.labels["le"])
                    out[le] = out.get(le, 0.0) + sample.value
                elif sample.name.endswith("_sum"):
                    out["sum"] = out.get("sum", 0.0) + sample.value
        return out

    def counters(self) -> dict[str, float]:
        """The server's counters now (``chatserver_X_total`` -> value, by
        ``X``), from /metrics; a blocking scrape, around a window only."""
        from prometheus_client.parser import text_string_to_metric_families

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode("utf-8")
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            if family.type != "counter" or not family.name.startswith("chatserver_"):
                continue
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    out[family.name[len("chatserver_") :]] = sample.value
        return out

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


def py_spy(pid: int, output: Path, seconds: float) -> subprocess.Popen[bytes] | None:
    """Sample ``pid`` (all threads, idle excluded) for ``seconds`` with
    py-spy into ``output`` (collapsed stacks), if py-spy is installed."""
    exe = Path(sys.executable).with_name("py-spy")
    if not exe.exists():
        return None
    return subprocess.Popen(
        [str(exe), "record", "--pid", str(pid), "--duration", str(max(1, math.ceil(seconds))),
         "--rate", "250", "--format", "raw", "--nonblocking", "--output", str(output)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


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

    def connect(
        self,
        source: str | None = None,
        ticket: Any = None,
        on_ticket: Callable[[Any], None] | None = None,
    ) -> Deferred:
        """A session (secure channel up).  ``source``: the local address to
        bind (any of 127/8 on Linux); ``ticket``: resume with it;
        ``on_ticket``: called with each ticket the server issues."""
        endpoint = self.server.endpoint
        if source is not None:
            endpoint += f":bindAddress={source}"
        return within(
            self.reactor,
            connect(self.reactor, endpoint, self.verify, ticket=ticket, on_ticket=on_ticket),
            OP_TIMEOUT,
            "connect",
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


# --- scenario 2: fan-out --------------------------------------------------------------


class Fanout:
    """The closed loop of scenario 2; see the module docstring."""

    def __init__(
        self,
        reactor: Any,
        receivers: list[ChatSession],
        senders: list[ChatSession],
        window: int,
        room: str = ROOM,
    ) -> None:
        self.reactor = reactor
        self.room = room
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
            if event.get("type") != "msg" or event.get("room") != self.room:
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
        self.senders[s].say(self.room, body).addErrback(self._send_failed)

    def _send_failed(self, failure: Any) -> None:
        self.errors.append(f"say failed: {failure.getErrorMessage()}")

    def drain(self) -> Deferred:
        """Stop sending; fires when every outstanding message is delivered."""
        self.stopping = True
        self.drained = Deferred()
        if not self.outstanding:
            self.drained.callback(None)
        return self.drained

    async def run(self, meter: Meter, warmup: float, duration: float) -> dict[str, Any]:
        return await run_loops(self.reactor, [self], meter, warmup, duration)


async def run_loops(
    reactor: Any, loops: list[Fanout], meter: Meter, warmup: float, duration: float
) -> dict[str, Any]:
    """Run closed loops side by side (one per room) and add up their figures."""
    for loop in loops:
        for s in range(len(loop.senders)):
            for _ in range(loop.window):
                loop.send(s)
    await sleep(reactor, warmup)
    meter.start()
    for loop in loops:
        loop.measuring = True
    await sleep(reactor, duration)
    for loop in loops:
        loop.measuring = False
    figures = meter.stop()
    stuck = 0
    drains = defer.gatherResults([loop.drain() for loop in loops])
    try:
        await within(reactor, drains, DRAIN_TIMEOUT, "draining outstanding messages")
    except TimeoutError:
        stuck = sum(len(loop.outstanding) for loop in loops)
    wall = figures["wall_s"]
    deliveries = sum(loop.deliveries for loop in loops)
    completed = sum(loop.messages_completed for loop in loops)
    errors = [e for loop in loops for e in loop.errors]
    figures.update(
        rooms=len(loops),
        receivers=sum(loop.n_receivers for loop in loops),
        senders=sum(len(loop.senders) for loop in loops),
        window_per_sender=loops[0].window,
        deliveries=deliveries,
        deliveries_per_s=deliveries / wall,
        deliveries_per_server_cpu_s=deliveries / figures["server_cpu_s"]
        if figures["server_cpu_s"] > 0
        else None,
        messages_sent=sum(loop.messages_sent for loop in loops),
        messages_completed=completed,
        messages_per_s=completed / wall,
        latency=latency_ms([v for loop in loops for v in loop.latencies]),
        total_sent=sum(loop.sent_total for loop in loops),
        total_deliveries=sum(loop.deliveries_total for loop in loops),
        stuck_after_drain=stuck,
        order_errors=sum(loop.order_errors for loop in loops),
        unexpected_events=sum(loop.unexpected for loop in loops),
        lost_sessions=sum(loop.lost_sessions for loop in loops),
        errors=len(errors),
        error_examples=sorted(set(errors))[:5],
    )
    return figures
