"""The monitor child: real processes, real psutil samples, real kills."""

from __future__ import annotations

import json
import os
import subprocess

from twisted.internet import reactor, task
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


class StatsTests(unittest.TestCase):
    async def test_stats_frames_reach_admins_only_and_count_the_traffic(self) -> None:
        from chatclient.session import ServerError
        from tests.support import EventQueue, open_session
        from tests.test_moderation import admin_session

        server = await start_server(self, monitor_enabled=True, monitor_interval=0.2)
        user = await logged_in(self, server, "alice")
        user_events = EventQueue(user)
        admin = await admin_session(self, server)
        admin_events = EventQueue(admin)
        for n in range(5):
            await user.say("lobby", f"counted {n}")
        stranger = await open_session(self, server)
        await self.assertFailure(stranger.login("alice", "not her password"), ServerError)

        info = await user.request({"type": "info"})
        self.assertEqual(info["users_online"], 2)
        self.assertTrue(info["server"].startswith("chatserver/"))
        error = await self.assertFailure(user.request({"type": "stats"}), ServerError)
        self.assertEqual(error.code, "forbidden")

        frame = await admin.request({"type": "stats", "subscribe": True})
        totals = frame["app"]["totals"]
        self.assertGreaterEqual(totals["messages_in"], 5)
        self.assertGreaterEqual(totals["messages_out"], 10)  # each to alice and to root
        self.assertGreaterEqual(totals["handshakes"], 3)
        self.assertEqual(totals["failed_logins"], 1)
        self.assertEqual((frame["app"]["connections"], frame["app"]["authenticated"]), (3, 2))
        self.assertIsNotNone(frame["app"]["db_commit_ms_avg"])
        self.assertIsInstance(frame["history"], list)
        # Pushed frames follow, to the admin only; the monitor's sample
        # arrives in them once the child has taken one.
        pushed = await admin_events.next(
            lambda e: e["type"] == "stats" and e["sample"] is not None, timeout=15
        )
        self.assertTrue(pushed["monitor"]["up"])
        self.assertEqual(pushed["sample"]["server_pid"], os.getpid())
        await admin.request({"type": "stats", "subscribe": False})
        await user.ping()
        self.assertEqual([e for e in user_events.events if e["type"] == "stats"], [])
        admin_events.events.clear()
        await task.deferLater(reactor, 0.6, lambda: None)  # three intervals: nothing comes
        self.assertEqual([e for e in admin_events.events if e["type"] == "stats"], [])


class PrometheusTests(unittest.TestCase):
    async def test_scrape_parses_and_shows_the_traffic_the_test_made(self) -> None:
        from prometheus_client.parser import text_string_to_metric_families
        from twisted.web.client import Agent, readBody

        server = await start_server(
            self, metrics_enabled=True, metrics_endpoint="tcp:0:interface=127.0.0.1", monitor_enabled=True
        )
        port = (await server.service.metrics_listener.listening).getHost().port
        alice = await logged_in(self, server, "alice")
        for n in range(7):
            await alice.say("lobby", f"scraped {n}")

        response = await Agent(reactor).request(b"GET", f"http://127.0.0.1:{port}/metrics".encode())
        self.assertEqual(response.code, 200)
        text = (await readBody(response)).decode("utf-8")
        samples = {
            sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        self.assertGreaterEqual(samples["chatserver_messages_in_total"], 7)
        self.assertGreaterEqual(samples["chatserver_handshakes_total"], 1)
        self.assertEqual(samples["chatserver_users_online"], 1)
        self.assertEqual(samples["chatserver_connections"], 1)
        # The commit histogram: every commit in a bucket, cumulative, the
        # +Inf bucket equal to the count (at least one commit per message
        # acknowledged above, as each say waited for its ack).
        self.assertGreater(samples["chatserver_db_commit_seconds_sum"], 0)
        commits = samples["chatserver_db_commit_seconds_count"]
        self.assertGreaterEqual(commits, 7)
        buckets = sorted(
            (float(sample.labels["le"]), sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "chatserver_db_commit_seconds_bucket"
        )
        self.assertEqual(buckets[-1], (float("inf"), commits))
        counts = [count for _, count in buckets]
        self.assertEqual(counts, sorted(counts))
        self.assertEqual(len(buckets), 12)
        self.assertIn("chatserver_monitor_up", samples)
        self.assertIn("# HELP chatserver_messages_in_total Room messages and direct messages", text)

    async def test_malformed_info_and_stats_requests_get_clear_errors(self) -> None:
        from chatclient.session import ServerError
        from tests.test_moderation import admin_session

        server = await start_server(self)
        admin = await admin_session(self, server)
        for request, code, field in (
            ({"type": "stats", "subscribe": "yes"}, "bad_field", "subscribe"),
            ({"type": "stats", "subscribe": 1}, "bad_field", "subscribe"),
            ({"type": "stats", "every": 5}, "unknown_field", "every"),
            ({"type": "info", "verbose": True}, "unknown_field", "verbose"),
        ):
            error = await self.assertFailure(admin.request(request), ServerError)
            self.assertEqual((error.code, error.event.get("field")), (code, field), request)
        # Nothing was subscribed, and the connection goes on.
        self.assertEqual(server.factory.stats_subscribers, {})
        self.assertEqual((await admin.request({"type": "info"}))["type"], "info")
