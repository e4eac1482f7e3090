"""The monitor child: real processes, real psutil samples, real kills."""

from __future__ import annotations

import json
import os
import subprocess

from twisted.internet import reactor
from twisted.trial import unittest

from chatserver.monitoring import HISTORY_SECONDS, Monitoring, valid_sample
from tests.support import PYTHON, logged_in, python_env, start_server, until


class MonitorChildTests(unittest.TestCase):
    def test_child_writes_valid_samples_of_the_given_process(self) -> None:
        out = subprocess.run(
            [
                PYTHON,
                "-m",
                "chatserver.monitor",
                "--pid",
                str(os.getpid()),
                "--interval",
                "0.1",
                "--count",
                "2",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env=python_env(),
        )
        self.assertEqual(out.returncode, 0, out.stderr)
        samples = [json.loads(line) for line in out.stdout.splitlines()]
        self.assertEqual(len(samples), 2)
        for sample in samples:
            self.assertTrue(valid_sample(sample), sample)
            self.assertEqual(sample["server_pid"], os.getpid())
            self.assertIn(os.getpid(), [p["pid"] for p in sample["processes"]])
            self.assertGreater(sample["tree"]["rss_bytes"], 0)

    def test_child_exits_when_the_server_is_gone(self) -> None:
        gone = subprocess.Popen([PYTHON, "-c", "pass"])
        gone.wait()
        out = subprocess.run(
            [PYTHON, "-m", "chatserver.monitor", "--pid", str(gone.pid), "--interval", "0.1"],
            capture_output=True,
            text=True,
            timeout=30,
            env=python_env(),
        )
        self.assertEqual(out.returncode, 1)
        self.assertIn("no process", out.stderr)


class MonitoringServiceTests(unittest.TestCase):
    async def test_samples_arrive_and_a_killed_child_is_restarted(self) -> None:
        server = await start_server(self, monitor_enabled=True, monitor_interval=0.2)
        monitoring: Monitoring = server.service.getServiceNamed("monitoring")
        await logged_in(self, server, "alice")
        await until(lambda: monitoring.latest is not None, timeout=15)
        first = monitoring.latest
        self.assertEqual(first["server_pid"], os.getpid())
        # The server's own listening port and alice's connection are seen.
        await until(lambda: server.port in monitoring.latest["tcp"]["ports"], timeout=10)
        await until(lambda: monitoring.latest["tcp"]["states"].get("ESTABLISHED", 0) >= 1, timeout=10)
        health = monitoring.health()
        self.assertTrue(health["up"])
        self.assertEqual(health["restarts"], 0)
        self.assertLess(health["last_sample_age"], 5)

        os.kill(health["pid"], 9)
        await until(lambda: monitoring.restarts == 1, timeout=10)
        before = len(monitoring.history)
        await until(lambda: monitoring.health()["up"] and len(monitoring.history) > before, timeout=10)
        self.assertNotEqual(monitoring.health()["pid"], health["pid"])
        self.assertEqual(monitoring.bad_lines, 0)

    async def test_bad_lines_are_counted_and_ignored(self) -> None:
        monitoring = Monitoring(reactor, interval=5.0)
        for line in (b"not json", b"[]", b'{"type": "sample"}', b'{"type": "other", "format": 1}'):
            monitoring.line_received(line)
        self.assertEqual((monitoring.bad_lines, monitoring.latest), (4, None))
        good = {
            "type": "sample",
            "format": 1,
            "ts": 1.0,
            "tree": {"cpu_percent": 1.0, "rss_bytes": 1, "threads": 1, "fds": 1},
            "system": {"cpu_percent": 2.0},
            "tcp": {"ports": [], "states": {}},
            "processes": [],
        }
        monitoring.line_received(json.dumps(good).encode())
        self.assertEqual(monitoring.latest, good)

    def test_history_holds_an_hour(self) -> None:
        for interval in (5.0, 1.0, 0.5):
            monitoring = Monitoring(reactor, interval=interval)
            self.assertGreaterEqual(monitoring.history.maxlen * interval, HISTORY_SECONDS)
