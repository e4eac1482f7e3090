"""The product as a person runs it: twistd, two terminal clients, a capture."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
from pathlib import Path

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial import unittest

from chatserver.wire import crypto
from tests.processes import cli, spawn, start_twistd, stop_twistd
from tests.support import PASSWORD


class PluginTests(unittest.TestCase):
    def test_plugin_is_registered(self) -> None:
        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
        self.assertIn("chatserver", makers)
        self.assertEqual(makers["chatserver"].options.__module__, "chatserver.tap")


class EndToEndTests(unittest.TestCase):
    def setUp(self) -> None:
        self.base = Path(self.mktemp()).resolve()
        self.base.mkdir()
        self.password_file = self.base / "password"
        self.password_file.write_text(PASSWORD + "\n")
        self.known_hosts = self.base / "known_hosts"

    def client(self, name: str, port: int, *extra: str):
        return cli(
            self,
            name,
            port,
            name,
            "--password-file",
            str(self.password_file),
            "--known-hosts",
            str(self.known_hosts),
            *extra,
        )

    async def chat_session(self, port: int, text_a: str, text_b: str) -> None:
        """alice and bob, each a `python -m chatclient.cli` process, talk."""
        alice = self.client("alice", port, "--register")
        await alice.wait_for(r"\* alice joined")
        bob = self.client("bob", port, "--register")
        await bob.wait_for(r"\* bob joined")
        await alice.wait_for(r"\[lobby\] \* bob joined")
        alice.write_line(text_a)
        await bob.wait_for(r"\[lobby\] alice: " + text_a)
        bob.write_line(text_b)
        bob.write_line("/who")
        await bob.wait_for(r"\[lobby\] users: alice, bob")
        bob.close_stdin()  # end of input: goodbye after the acks, exit 0
        self.assertEqual(await bob.ended, 0, bob.errors())
        await alice.wait_for(r"\[lobby\] bob: " + text_b)
        alice.close_stdin()
        self.assertEqual(await alice.ended, 0, alice.errors())
        self.assertIn("pinned key", alice.errors())  # first contact: TOFU notice

    async def test_twistd_and_two_terminal_clients(self) -> None:
        server, port, fingerprint = await start_twistd(self, self.base)
        key_file = self.base / "data" / "server_key.pem"
        self.assertEqual(stat.S_IMODE(key_file.stat().st_mode), 0o600)
        key = crypto.rsa_private_from_pem(key_file.read_bytes())
        self.assertEqual(crypto.fingerprint(crypto.rsa_public_der(key)), fingerprint)
        self.assertEqual(self.known_hosts.exists(), False)

        await self.chat_session(port, "hello from alice", "hello from bob")
        self.assertEqual(self.known_hosts.read_text().split(), [f"127.0.0.1:{port}", fingerprint])
        self.assertEqual(await stop_twistd(server), 0)

        logs = {p.name: p.read_text() for p in (self.base / "log").iterdir()}
        self.assertIn("logged in as alice", logs["connections.log"])
        self.assertIn("registered bob", logs["chatserver.log"])
        for text in logs.values():
            for secret in ("hello from alice", "hello from bob", PASSWORD):
                self.assertNotIn(secret, text)
        for name in ("chatserver.log", "connections.log"):
            self.assertEqual(stat.S_IMODE((self.base / "log" / name).stat().st_mode) & 0o077, 0o040 & 0o077)

    async def test_second_start_keeps_the_key(self) -> None:
        server, _, first = await start_twistd(self, self.base)
        await stop_twistd(server)
        server, _, second = await start_twistd(self, self.base)
        self.assertEqual(first, second)
        self.assertTrue(server.wait_for("loaded server key").called)

    async def test_json_output(self) -> None:
        server, port, _ = await start_twistd(self, self.base)
        alice = self.client("alice", port, "--register", "--json")
        await alice.wait_for(r'"type": "joined"')
        alice.write_line("structured")
        found = await alice.wait_for(r'"type": "msg"')
        event = json.loads(found.string)
        self.assertEqual((event["room"], event["from"], event["body"]), ("lobby", "alice", "structured"))
        self.assertIsInstance(event["id"], int)
        self.assertIsInstance(event["ts"], int)
        alice.close_stdin()
        self.assertEqual(await alice.ended, 0)

    async def test_changed_server_key_is_refused(self) -> None:
        server, port, fingerprint = await start_twistd(self, self.base)
        other = crypto.fingerprint(crypto.rsa_public_der(crypto.rsa_generate()))
        self.known_hosts.write_text(f"127.0.0.1:{port} {other}\n")
        alice = self.client("alice", port, "--register")
        self.assertEqual(await alice.ended, 3)
        self.assertIn(other, alice.errors())
        self.assertIn(fingerprint, alice.errors())
        self.assertIn("CHANGED", alice.errors())
        self.assertEqual(alice.output(), "")

        self.known_hosts.unlink()
        pinned = self.client("alice", port, "--register", "--fingerprint", other)
        self.assertEqual(await pinned.ended, 3)
        self.assertIn(fingerprint, pinned.errors())
        good = self.client("alice", port, "--register", "--fingerprint", fingerprint)
        await good.wait_for(r"\* alice joined")
        good.close_stdin()
        self.assertEqual(await good.ended, 0)

    async def test_wrong_password_exits_nonzero(self) -> None:
        server, port, _ = await start_twistd(self, self.base)
        alice = self.client("alice", port, "--register")
        await alice.wait_for(r"\* alice joined")
        alice.close_stdin()
        await alice.ended
        self.password_file.write_text("not the password\n")
        again = self.client("alice", port)
        self.assertEqual(await again.ended, 2)
        self.assertIn("invalid username or password", again.errors())

    async def test_packet_capture_shows_no_message_text(self) -> None:
        tcpdump = shutil.which("tcpdump")
        if tcpdump is None or os.geteuid() != 0:
            raise unittest.SkipTest("needs tcpdump and root (.ci/run installs it)")
        server, port, _ = await start_twistd(self, self.base)
        capture_file = self.base / "session.pcap"
        capture = spawn(
            self,
            "tcpdump",
            [
                tcpdump,
                "-i",
                "lo",
                "-U",
                "--immediate-mode",
                "-n",
                "-s",
                "0",
                "-w",
                str(capture_file),
                f"tcp port {port}",
            ],
        )
        await capture.wait_for("listening on", fd=2)
        secret_a, secret_b = "the eagle lands at midnight", "bring the blue umbrella"
        await self.chat_session(port, secret_a, secret_b)
        capture.signal("TERM")
        await capture.ended
        data = capture_file.read_bytes()
        self.assertGreater(len(data), 5000, "the capture holds the session's traffic")
        for secret in (secret_a, secret_b, PASSWORD):
            raw = secret.encode()
            self.assertNotIn(raw, data)
            for shift in range(3):  # base64 of the text at each alignment
                encoded = base64.b64encode(b"x" * shift + raw)[4:-4]
                self.assertNotIn(encoded, data)


class ShutdownTests(unittest.TestCase):
    async def test_sigterm_says_goodbye_to_clients_loses_nothing_and_exits_0(self) -> None:
        import psutil
        from twisted.internet import reactor

        from chatclient.session import connect
        from tests.support import install_identity, until

        base = Path(self.mktemp()).resolve()
        base.mkdir()
        install_identity(base / "data")
        server, port, _ = await start_twistd(self, base)
        sessions = []
        for name in ("alice", "bob"):
            session = await connect(reactor, f"tcp:host=127.0.0.1:port={port}", lambda fp: True)
            await session.register(name, PASSWORD)
            sessions.append(session)
        alice, bob = sessions
        # Messages in flight at the signal: each is either acknowledged
        # (and then kept) or refused, never silently dropped.
        acks = [await alice.say("lobby", f"before {n}") for n in range(5)]
        twistd = psutil.Process(server.transport.pid)
        await until(lambda: any("chatserver.monitor" in " ".join(c.cmdline()) for c in twistd.children()))
        [monitor] = [c for c in twistd.children() if "chatserver.monitor" in " ".join(c.cmdline())]
        in_flight = [alice.say("lobby", f"at the signal {n}") for n in range(20)]
        server.signal("TERM")
        for session in sessions:
            info = await session.closed
            self.assertEqual((info.clean, info.code), (True, "shutdown"))
        self.assertEqual(await server.ended, 0, server.errors())
        # The monitor child was stopped by the server, not left to notice.
        self.assertFalse(monitor.is_running() and monitor.status() != psutil.STATUS_ZOMBIE)
        for d in in_flight:
            try:
                acks.append(await d)
            except Exception:
                pass  # not acknowledged: no promise was made

        server, port, _ = await start_twistd(self, base)
        session = await connect(reactor, f"tcp:host=127.0.0.1:port={port}", lambda fp: True)
        await session.login("bob", PASSWORD)
        page = await session.request({"type": "history", "stream": "room:lobby", "limit": 200})
        bodies = {e["id"]: e.get("body") for e in page["events"]}
        for ack in acks:
            self.assertIn(ack["id"], bodies)
        await session.close()
        server.signal("TERM")
        self.assertEqual(await server.ended, 0)


class ReloadTests(unittest.TestCase):
    async def test_sighup_reopens_rotated_logs_and_reloads_level_and_limits(self) -> None:
        from twisted.internet import reactor

        from chatclient.session import ServerError, connect
        from tests.support import install_identity, until

        base = Path(self.mktemp()).resolve()
        base.mkdir()
        install_identity(base / "data")
        config = base / "chatserver.ini"
        config.write_text("[log]\nlevel = info\n[limits]\nmessages_rate = 1000\nmessages_burst = 1000\n")
        server, port, _ = await start_twistd(self, base, "--config", str(config))
        session = await connect(reactor, f"tcp:host=127.0.0.1:port={port}", lambda fp: True)
        token = (await session.register("alice", PASSWORD))["token"]
        for n in range(3):
            await session.say("lobby", f"before {n}")
        logs = base / "log"
        await until(lambda: "logged in as alice" in (logs / "connections.log").read_text())
        # What logrotate does: move the files away, then SIGHUP.
        for name in ("chatserver.log", "connections.log"):
            (logs / name).rename(logs / f"{name}.1")
        config.write_text("[log]\nlevel = info\n[limits]\nmessages_rate = 0.001\nmessages_burst = 1\n")
        server.signal("HUP")
        await until(lambda: (logs / "chatserver.log").exists(), timeout=10)
        await until(lambda: "SIGHUP: log files reopened; reloaded" in (logs / "chatserver.log").read_text())
        self.assertEqual(stat.S_IMODE((logs / "chatserver.log").stat().st_mode), 0o640)
        # The new limits hold (fresh buckets: one message, then refused).
        await session.say("lobby", "after")
        error = await self.assertFailure(session.say("lobby", "one too many"), ServerError)
        self.assertEqual(error.code, "rate_limited")
        # New connections log to the new file; the server is still up.
        other = await connect(reactor, f"tcp:host=127.0.0.1:port={port}", lambda fp: True)
        await other.register("bob", PASSWORD)
        await until(lambda: "logged in as bob" in (logs / "connections.log").read_text())
        self.assertNotIn("logged in as bob", (logs / "connections.log.1").read_text())
        # A broken file is reported and changes nothing.
        config.write_text("[limits]\nmessages_rate = fast\n")
        server.signal("HUP")
        await until(lambda: "configuration not reloaded" in (logs / "chatserver.log").read_text())
        await other.close()
        await session.close()
        self.assertEqual(await stop_twistd(server), 0)
        # No secret in any log, rotated or not: password, session token,
        # message bodies, the server's private key.
        key_lines = [
            line
            for line in (base / "data" / "server_key.pem").read_text().splitlines()
            if "-----" not in line
        ]
        for path in logs.iterdir():
            text = path.read_text()
            for secret in [PASSWORD, token, "before 0", "one too many", *key_lines]:
                self.assertNotIn(secret, text, path.name)
