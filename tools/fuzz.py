"""``make fuzz``: the property tests for long, in process and against a
real ``twistd chatserver``.

1. In process: ``tests.test_fuzz_*`` under trial with the Hypothesis
   profile ``chatserver-fuzz`` (see ``tests/fuzzing.py``): up to
   ``--examples`` examples per property, each property cut off after
   ``--seconds``.
2. A real server: ``twistd -n chatserver`` in a temporary directory on a
   loopback port, fed the same generated sessions and handshake attacks
   over TCP by the blocking client of ``tests.fuzzing``, while a bystander
   stays logged in and must be served throughout.  After each example the
   new lines of the server's logs (and of its stdout and stderr) are read
   for tracebacks and error or critical lines; at the end the server must
   still be running, answer a fresh client and stop cleanly on SIGTERM.
   Its resident memory is sampled throughout: the growth after a warm-up
   is reported, and over ``--max-rss-growth-mb`` it is a finding.

Prints a summary and exits non-zero on any finding.  Loopback only,
bounded in examples and time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FUZZ_MODULES = ["tests.test_fuzz_channel", "tests.test_fuzz_validation", "tests.test_fuzz_server"]
#: What must never appear in the server's logs or output.
BAD_LINE = re.compile(r"Traceback \(most recent call last\)|Unhandled|#critical\]|#error\]")

CONFIG = """\
[server]
max_connections_per_address = 1000
max_connections_per_prefix = 1000
[accounts]
password_hash_cost = 10
login_failures_per_account = 1000000
login_failures_per_address = 1000000
[limits]
messages_rate = 1000000
messages_burst = 1000000
joins_rate = 1000000
joins_burst = 1000000
rooms_rate = 1000000
rooms_burst = 1000000
logins_rate = 1000000
logins_burst = 1000000
registrations_rate = 1000000
registrations_burst = 1000000
registrations_prefix_rate = 1000000
registrations_prefix_burst = 1000000
handshakes_rate = 1000000
handshakes_burst = 1000000
handshakes_prefix_rate = 1000000
handshakes_prefix_burst = 1000000
[store]
synchronous = normal
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=int(os.environ.get("FUZZ_EXAMPLES", "1000000")))
    parser.add_argument(
        "--seconds",
        type=float,
        default=float(os.environ.get("FUZZ_SECONDS", "60")),
        help="time budget of each property (default 60, FUZZ_SECONDS)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="trial workers for the in-process part")
    parser.add_argument("--max-rss-growth-mb", type=float, default=64.0)
    parser.add_argument("--no-in-process", action="store_true", help="only the real server")
    parser.add_argument("--no-server", action="store_true", help="only the in-process properties")
    parser.add_argument("--keep", action="store_true", help="keep the server's directory")
    return parser.parse_args()


# --- 1. in process ---------------------------------------------------------------


def in_process(
    args: argparse.Namespace, workdir: Path, env: dict[str, str]
) -> tuple[list[dict[str, Any]], list[str]]:
    report = workdir / "in-process.jsonl"
    output = workdir / "in-process.log"
    env = dict(env, FUZZ_REPORT=str(report))
    print(f"in process: {', '.join(FUZZ_MODULES)} (output: {output})", flush=True)
    with output.open("w", encoding="utf-8") as out:
        code = subprocess.call(
            [sys.executable, str(ROOT / "tools" / "run_trial.py"), "-j", str(args.jobs), *FUZZ_MODULES],
            cwd=str(ROOT),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    text = output.read_text(encoding="utf-8", errors="replace")
    results = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    findings = []
    if code != 0:
        failed = re.findall(
            r"^\[(?:FAIL|ERROR)\]\n(.*?)^-{20,}|^\[(?:FAIL|ERROR)\]\n(.*?)(?=^\[)", text, re.M | re.S
        )
        findings.append(f"in-process properties failed (trial exit {code}); see {output}")
        for match in failed[:5]:
            body = (match[0] or match[1]).strip().splitlines()
            findings.append("  " + "\n  ".join(body[-12:]))
    return results, findings


# --- 2. a real server --------------------------------------------------------------


class Twistd:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.log_dir = base / "log"
        (base / "chatserver.ini").write_text(CONFIG, encoding="utf-8")
        self.stdout = (base / "twistd.out").open("wb")
        script = Path(sys.executable).parent / "twistd"
        argv = [str(script)] if script.exists() else ["-m", "twisted.scripts.twistd"]
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        )
        self.process = subprocess.Popen(
            [sys.executable, *argv, "--nodaemon", "--pidfile=", "chatserver"]
            + ["--config", str(base / "chatserver.ini"), "--endpoint", "tcp:0:interface=127.0.0.1"]
            + ["--data-dir", str(base / "data"), "--log-dir", str(self.log_dir)],
            cwd=str(base),
            env=env,
            stdout=self.stdout,
            stderr=subprocess.STDOUT,
        )
        self.port = self._wait_for_port()
        self._offsets: dict[Path, int] = {}

    def _wait_for_port(self, seconds: float = 60.0) -> int:
        deadline = time.monotonic() + seconds
        out = self.base / "twistd.out"
        while time.monotonic() < deadline:
            match = re.search(rb"ChatFactory starting on (\d+)", out.read_bytes())
            if match:
                return int(match.group(1))
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise SystemExit(f"twistd did not start:\n{out.read_text(errors='replace')}")

    def add_admin(self, name: str, password: str) -> None:
        """An admin account, made with the admin tool as an operator would."""
        secret = self.base / "password"
        secret.write_text(password + "\n", encoding="utf-8")
        subprocess.run(
            [sys.executable, "-m", "chatserver.admin", "--config", str(self.base / "chatserver.ini")]
            + [
                "--data-dir",
                str(self.base / "data"),
                "add-user",
                name,
                "--admin",
                "--password-file",
                str(secret),
            ],
            cwd=str(ROOT),
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def log_files(self) -> list[Path]:
        return sorted(self.log_dir.glob("*.log*")) + [self.base / "twistd.out"]

    def new_bad_lines(self) -> list[str]:
        """Lines added to the logs since the last call that must not be."""
        bad = []
        for path in self.log_files():
            try:
                with path.open("rb") as f:
                    f.seek(self._offsets.get(path, 0))
                    data = f.read()
            except FileNotFoundError:
                continue
            self._offsets[path] = self._offsets.get(path, 0) + len(data)
            for line in data.decode("utf-8", "replace").splitlines():
                if BAD_LINE.search(line):
                    bad.append(f"{path.name}: {line[:300]}")
        return bad

    def stop(self, seconds: float = 30.0) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(seconds)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                return None
        self.stdout.close()
        return self.process.returncode


class RssSampler(threading.Thread):
    """Samples the server's resident memory once a second."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        import psutil

        self.process = psutil.Process(pid)
        self.samples: list[tuple[float, int]] = []
        self.stopped = threading.Event()
        self.sample()

    def sample(self) -> int:
        rss = self.process.memory_info().rss
        self.samples.append((time.monotonic(), rss))
        return rss

    def run(self) -> None:
        while not self.stopped.wait(1.0):
            try:
                self.sample()
            except Exception:  # the process is gone: the checks will say so
                return


class Bystander(threading.Thread):
    """A logged-in client that reads everything and pings now and then:
    the server must go on serving it whatever the fuzzer does."""

    def __init__(self, port: int, user: str, password: str) -> None:
        super().__init__(daemon=True)
        from tests.fuzzing import BlockingClient

        self.client = BlockingClient(port)
        self.client.login(user, password)
        self.client.sock.settimeout(0.5)
        self.problem: str | None = None
        self.pongs = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        import socket

        next_ping = time.monotonic()
        try:
            while not self.stopped.is_set():
                if time.monotonic() >= next_ping:
                    self.client.send_events([{"type": "ping", "ref": "bystander"}])
                    next_ping = time.monotonic() + 5.0
                try:
                    events = self.client.read_events()
                except socket.timeout:
                    continue
                if events is None:
                    self.problem = f"bystander's connection ended ({self.client.closed_by!r})"
                    return
                self.pongs += sum(1 for e in events if e.get("ref") == "bystander")
        except Exception as e:  # noqa: BLE001 - reported as a finding
            self.problem = f"bystander failed: {e!r}"


def against_twistd(
    args: argparse.Namespace, workdir: Path
) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
    from tests import fuzzing
    from tests.fuzzing import BlockingClient, check

    base = workdir / "server"
    base.mkdir()
    print(f"real server: twistd in {base}", flush=True)
    server = Twistd(base)
    findings: list[str] = []
    results: list[dict[str, Any]] = []
    memory: dict[str, Any] = {}
    report = workdir / "server.jsonl"
    os.environ["FUZZ_REPORT"] = str(report)
    fuzzing.FUZZ_REPORT = str(report)
    try:
        fuzzing.seed(server.port)
        server.add_admin("admin", fuzzing.PASSWORD)
        bystander = Bystander(server.port, "friend", fuzzing.PASSWORD)
        bystander.start()
        rss = RssSampler(server.process.pid)
        rss.start()
        memory["start_mb"] = rss.samples[0][1] / 2**20
        warm: dict[str, int] = {}

        def after_example() -> None:
            bad = server.new_bad_lines()
            assert not bad, "the server logged:\n" + "\n".join(bad)
            assert server.process.poll() is None, f"the server exited ({server.process.returncode})"
            if not warm and rss.samples[-1][0] - rss.samples[0][0] > min(10.0, args.seconds / 4):
                warm["rss"] = rss.sample()

        def sessions(plan: dict[str, Any]) -> None:
            fuzzing.run_session(server.port, plan)
            after_example()

        def handshakes(plan: dict[str, Any]) -> None:
            fuzzing.run_handshake_attack(server.port, plan)
            after_example()

        for name, prop, strategy in (
            ("twistd: sessions", sessions, fuzzing.sessions()),
            ("twistd: handshake", handshakes, fuzzing.handshake_attacks()),
        ):
            print(f"  {name} ...", flush=True)
            try:
                check(prop, strategy, name=name)
            except AssertionError as e:
                findings.append(f"{name}: {e}"[:4000])
        time.sleep(1.0)  # what the last examples log
        findings += [f"after the run: {line}" for line in server.new_bad_lines()]
        bystander.stopped.set()
        bystander.join(5)
        if bystander.problem:
            findings.append(bystander.problem)
        elif bystander.pongs == 0:
            findings.append("the bystander never got a pong")
        try:
            with BlockingClient(server.port) as client:
                client.login("fuzzer", fuzzing.PASSWORD)
                if client.request({"type": "ping"})["type"] != "pong":
                    findings.append("a fresh client got no pong after the run")
        except Exception as e:  # noqa: BLE001 - reported as a finding
            findings.append(f"a fresh client could not log in and ping after the run: {e!r}")
        rss.stopped.set()
        end = rss.sample()
        baseline = warm.get("rss", rss.samples[0][1])
        memory.update(
            warm_mb=baseline / 2**20,
            end_mb=end / 2**20,
            peak_mb=max(s for _, s in rss.samples) / 2**20,
            growth_mb=(end - baseline) / 2**20,
        )
        if memory["growth_mb"] > args.max_rss_growth_mb:
            findings.append(
                f"server memory grew by {memory['growth_mb']:.1f} MiB after the warm-up "
                f"(limit {args.max_rss_growth_mb:.0f} MiB)"
            )
    finally:
        code = server.stop()
    if code != 0:
        findings.append(f"twistd did not stop cleanly on SIGTERM (exit {code})")
    findings += [f"at shutdown: {line}" for line in server.new_bad_lines()]
    if report.exists():
        results = [json.loads(line) for line in report.read_text().splitlines()]
    return results, findings, memory


# --- the summary ---------------------------------------------------------------------


def main() -> int:
    args = parse_args()
    env = dict(
        os.environ,
        HYPOTHESIS_PROFILE="chatserver-fuzz",
        FUZZ_EXAMPLES=str(args.examples),
        FUZZ_SECONDS=str(args.seconds),
    )
    os.environ.update(env)  # for tests.fuzzing, imported below
    workdir = Path(tempfile.mkdtemp(prefix="chatserver-fuzz-"))
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    findings: list[str] = []
    memory: dict[str, Any] = {}
    print(
        f"make fuzz: up to {args.examples} examples or {args.seconds:.0f} s per property; in {workdir}",
        flush=True,
    )
    if not args.no_in_process:
        got, found = in_process(args, workdir, env)
        results += got
        findings += found
    if not args.no_server:
        got, found, memory = against_twistd(args, workdir)
        results += got
        findings += found

    print("\n=== make fuzz summary ===")
    total = 0
    for r in results:
        rate = r["examples"] / max(r["seconds"], 1e-3)
        million = args.examples / max(rate, 1e-9)
        status = "FAILED" if r["failed"] else "ok"
        total += r["examples"]
        print(
            f"{r['property']:<40} {r['examples']:>9} examples {r['seconds']:>7.1f} s "
            f"{rate:>7.0f}/s  ({args.examples} would take {million / 60:.0f} min)  {status}"
        )
    print(f"{total} examples in {time.monotonic() - started:.0f} s over {len(results)} properties")
    if memory:
        print(
            "server memory (RSS): start {start_mb:.1f} MiB, after warm-up {warm_mb:.1f}, end {end_mb:.1f}, "
            "peak {peak_mb:.1f}: growth {growth_mb:+.1f} MiB".format(**memory)
        )
    if findings:
        print(f"\n{len(findings)} finding(s):")
        for finding in findings:
            print(f"- {finding}")
        print(f"\nfiles: {workdir}")
        return 1
    print("no findings")
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
