"""No injection into logs: what a peer sends reaches a log line escaped,
capped, and (before login) rate-limited per address.

A real server on loopback and a hand-driven client (``RawClient``) that
sends whatever bytes an attacker would.  The log files themselves are
read back, as an admin tailing them would see them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import task
from twisted.trial import unittest

from chatserver.wire import channel
from tests.test_protocol import ChannelTestCase, RawClient, is_drop

#: A disconnect reason that would forge a whole line of the connections
#: log if written raw, and rewrite a terminal that shows it.
FORGERY = (
    "bye\r2026-12-01T12:00:00+0000 [chatserver.connections#info] 203.0.113.66 logged in as root"
    "\n\x1b[2J\x07\u202etxt.exe\u200b"
)


def log_files(server: Any) -> dict[str, str]:
    directory = Path(server.settings.log_path)
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(directory.iterdir())}


class AlertTextTests(ChannelTestCase):
    async def alert_and_wait(self, port: int, text: bytes) -> RawClient:
        raw = await self.raw(port)
        raw.send_record(bytes((channel.ALERT, channel.ALERT_HANDSHAKE_FAILURE)) + text)
        await raw.when_lost()
        return raw

    async def test_alert_text_is_escaped_in_both_logs(self) -> None:
        server = await self.start()
        await self.alert_and_wait(server.port, FORGERY.encode("utf-8"))
        await self.logs.wait(is_drop(lambda r: "peer alert" in r))
        await server.stop()
        files = log_files(server)
        text = files["chatserver.log"] + files["connections.log"]
        for char in "\r\x1b\x07\u202e\u200b":
            self.assertNotIn(char, text)
        # The forged line is inside a line of the server's, escaped.
        forged = [line for line in text.splitlines() if "logged in as root" in line]
        self.assertEqual(len(forged), 2, forged)  # the drop warning and the disconnect
        for line in forged:
            self.assertIn("peer alert 2: bye\\r2026-12-01T12:00:00+0000", line)
            self.assertIn("\\n\\x1b[2J\\x07\\u202etxt.exe\\u200b", line)

    async def test_the_server_does_not_answer_an_alert(self) -> None:
        server = await self.start()
        raw = await self.alert_and_wait(server.port, b"going away")
        self.assertEqual(raw.lines, [])

    async def test_long_alert_text_is_capped(self) -> None:
        server = await self.start()
        await self.alert_and_wait(server.port, b"A" * 49_000)
        await self.logs.wait(is_drop(lambda r: "peer alert" in r))
        await server.stop()
        for name, text in log_files(server).items():
            for line in text.splitlines():
                self.assertLess(len(line), 600, f"{name}: {line[:100]}...")
        drops = self.logs.find(is_drop(lambda r: "peer alert" in r))
        self.assertEqual(len(drops), 1)
        # The receiver reads 200 bytes of text, no more.
        self.assertEqual(drops[0]["reason"], "peer alert 2: " + "A" * 200)

    async def test_closing_code_of_a_peer_is_escaped(self) -> None:
        """The code of the peer's CLOSE is part of the logged reason."""
        server = await self.start()
        raw = await self.raw(server.port)
        await raw.do_handshake()
        raw.send_sealed(channel.CLOSE, b'{"code":"bye\\r\\u001b[31mforged","message":"x"}')
        await raw.when_lost()
        await server.stop()
        connections = log_files(server)["connections.log"]
        self.assertNotIn("\x1b", connections)
        self.assertIn("closed by peer (bye\\r\\x1b[31mforged)", connections)


class AlertLoggingRateTests(ChannelTestCase):
    async def test_repeated_alerts_from_one_address_are_rate_limited(self) -> None:
        clock = task.Clock()
        server = await self.start(clock=clock)
        for _ in range(100):
            await self.alert_and_wait(server.port, b"again")
        lines = self.logs.find(lambda e: "peer alert" in str(e.get("reason")))
        burst = server.factory.LOG_LINES_BURST
        # Each such connection makes a connect, a drop and a disconnect line.
        self.assertLessEqual(len(lines), burst)
        self.assertGreater(len(lines), 0)
        clock.advance(60)
        await self.alert_and_wait(server.port, b"later")
        left_out = self.logs.find(lambda e: "left out" in (e.get("log_format") or ""))
        self.assertEqual(len(left_out), 1)
        self.assertGreater(left_out[0]["count"], 200)
        later = self.logs.find(is_drop(lambda r: r == "peer alert 2: later"))
        self.assertEqual(len(later), 1)

    alert_and_wait = AlertTextTests.alert_and_wait


class AlertRecordTests(unittest.TestCase):
    """The ALERT text limit is 200 bytes of UTF-8, not 200 characters."""

    def test_sender_cuts_at_200_bytes(self) -> None:
        record = channel.alert_record(2, "é" * 150)
        self.assertEqual(len(record), 2 + 200)
        self.assertEqual(record[2:].decode("utf-8"), "é" * 100)

    def test_sender_cuts_at_a_character_boundary(self) -> None:
        record = channel.alert_record(2, "a" + "é" * 150)
        self.assertEqual(len(record), 2 + 199)
        self.assertEqual(record[2:].decode("utf-8"), "a" + "é" * 99)

    def test_receiver_reads_at_most_200_bytes(self) -> None:
        record = bytes((channel.ALERT, 2)) + "é".encode() * 5000
        hs = channel.ClientHandshake()
        hs.hello()
        with self.assertRaises(channel.AlertReceived) as caught:
            hs.receive_server_hello(record)
        self.assertEqual(caught.exception.text, "é" * 100)
