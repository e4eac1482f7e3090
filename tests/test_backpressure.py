"""A client that stops reading must not hold up, or take memory from, others."""

from __future__ import annotations

from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from tests.support import EventQueue, logged_in, start_server, until

# Enough to overflow the kernel socket buffers on loopback (several MB) and
# then the server's own output limit for the stuck client.
COUNT = 3000


class SlowClientTests(unittest.TestCase):
    async def test_reader_that_stops_is_dropped_and_others_carry_on(self) -> None:
        server = await start_server(self, max_output_buffer=256 * 1024, slow_client_timeout=30)
        reasons: list[str] = []

        def observe(event: dict) -> None:
            if event.get("log_namespace") == "chatserver.protocol" and "reason" in event:
                reasons.append(event["reason"])

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

        sender = await logged_in(self, server, "sender")
        reader = await logged_in(self, server, "reader")
        reader_events = EventQueue(reader)
        stuck = await logged_in(self, server, "stuck")
        stuck.protocol.transport.pauseProducing()  # stop reading the socket
        self.assertEqual(len(server.factory.connections), 3)

        body = "x" * 3000
        acks = [sender.say("lobby", body) for _ in range(COUNT)]
        for d in acks:
            await d
        await until(lambda: len(server.factory.connections) == 2)
        self.assertIn("slow consumer: output buffer limit reached", reasons)
        # The reader that keeps reading got every message.
        for _ in range(COUNT):
            await reader_events.next(lambda e: e["type"] == "msg")
        self.assertEqual(await reader.who("lobby"), ["reader", "sender"])
