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
        # In batches, so that the sender (which gets every message too, and
        # shares this process with the others) keeps reading and is never
        # itself the slow consumer.
        for _ in range(COUNT // 50):
            for d in [sender.say("lobby", body) for _ in range(50)]:
                await d
        await until(lambda: len(server.factory.connections) == 2)
        self.assertIn("slow consumer: output buffer limit reached", reasons)
        # The reader that keeps reading got every message.
        for _ in range(COUNT):
            await reader_events.next(lambda e: e["type"] == "msg")
        self.assertNotIn("stuck", server.factory.chat.online)  # dropped; still a lobby member

    async def test_close_completes_after_blocked_output_drains(self) -> None:
        """A goodbye to a client whose output was blocked must still end the
        connection once the client reads again (a paused producer must not
        swallow the close)."""
        from twisted.internet import reactor

        server = await start_server(self, max_output_buffer=64 * 1024 * 1024)
        sender = await logged_in(self, server, "sender")
        stuck = await logged_in(self, server, "stuck")
        stuck.protocol.transport.pauseProducing()
        [conn] = [c for c in server.factory.connections if c.user == "stuck"]
        acks = [sender.say("lobby", "y" * 3000) for _ in range(COUNT)]
        await until(lambda: conn._blocked_since is not None)
        conn.close("server_shutdown", "going away")
        stuck.protocol.transport.resumeProducing()
        info = await stuck.closed.addTimeout(10, reactor)
        self.assertTrue(info.clean)
        self.assertEqual(info.code, "server_shutdown")
        await until(lambda: conn not in server.factory.connections)
        for d in acks:  # the sender was never held up
            self.assertEqual((await d)["type"], "ack")
