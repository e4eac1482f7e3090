"""End-to-end encrypted direct messages between real clients through a
real server (docs/protocol.rst, "End-to-end encryption")."""

from __future__ import annotations

from pathlib import Path

from twisted.trial import unittest

from tests.e2e_support import e2e_client
from tests.support import start_server, until


def is_dm(event: dict) -> bool:
    return event.get("type") == "dm"


class DirectTests(unittest.TestCase):
    async def test_a_direct_message_is_read_by_the_recipient_and_stored_as_ciphertext(self) -> None:
        server = await start_server(self)
        base = Path(self.mktemp())
        alice, _, alice_events = await e2e_client(self, server, "alice", base / "alice")
        bob, _, bob_events = await e2e_client(self, server, "bob", base / "bob")
        marker = "MARKER-e2e-dm-7f3a9c"
        ack = await alice.dm("bob", marker)
        got = await bob_events.next(is_dm)
        self.assertEqual((got["from"], got["body"]), ("alice", marker))
        self.assertEqual(got["e2e"]["ok"], True)
        # A device never listed: unknown, until its user's devices are read
        # (which that message set off): then trusted on first use.
        self.assertEqual(got["e2e"]["trust"], "unknown")
        await until(lambda: bob.e2e.book.known("alice"))
        again = await bob.request({"type": "history", "stream": got["stream"]})
        self.assertEqual(again["events"][0]["e2e"]["trust"], "unverified")
        # The sender's own copy reads too (it kept what it sent).
        own = await alice_events.next(is_dm)
        self.assertEqual((own["body"], own["e2e"]["trust"]), (marker, "own"))
        page = await alice.request({"type": "history", "stream": ack["stream"]})
        self.assertEqual([e["body"] for e in page["events"]], [marker])
        # What the server has is ciphertext.
        raw = await (await alice.when_online()).request({"type": "history", "stream": ack["stream"]})
        self.assertNotIn(marker, str(raw))
        self.assertIn("e2e", raw["events"][0])
