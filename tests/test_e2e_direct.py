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

    async def test_offline_messages_arrive_in_order_on_each_of_two_devices(self) -> None:
        server = await start_server(self)
        base = Path(self.mktemp())
        alice, _, _ = await e2e_client(self, server, "alice", base / "alice")
        laptop, _, _ = await e2e_client(self, server, "bob", base / "bob-laptop")
        phone, _, _ = await e2e_client(self, server, "bob", base / "bob-phone", register=False)
        await laptop.stop()
        await phone.stop()
        for n in range(5):
            await alice.dm("bob", f"while away {n}")
        for name in ("bob-laptop", "bob-phone"):
            client, _, events = await e2e_client(self, server, "bob", base / name, register=False)
            # What the device missed: the welcome's position, read as history.
            stream = "dm:alice:bob"
            page = await client.request({"type": "history", "stream": stream})
            self.assertEqual([e["body"] for e in page["events"]], [f"while away {n}" for n in range(5)])
            self.assertTrue(all(e["e2e"]["ok"] for e in page["events"]))
            self.assertEqual([e["id"] for e in page["events"]], sorted(e["id"] for e in page["events"]))
            await client.stop()

    async def test_a_device_added_later_says_so_in_place_of_earlier_messages(self) -> None:
        server = await start_server(self)
        base = Path(self.mktemp())
        alice, _, _ = await e2e_client(self, server, "alice", base / "alice")
        await e2e_client(self, server, "bob", base / "bob-laptop")
        await alice.dm("bob", "before the phone")
        phone, _, events = await e2e_client(self, server, "bob", base / "bob-phone", register=False)
        await alice.dm("bob", "after the phone")
        live = await events.next(is_dm)
        self.assertEqual(live["body"], "after the phone")
        page = await phone.request({"type": "history", "stream": "dm:alice:bob"})
        first, second = page["events"]
        self.assertEqual(first["e2e"], {"ok": False, "reason": "before_device"})
        self.assertEqual(first["body"], "sent before this device was added")
        self.assertEqual(second["body"], "after the phone")

    async def test_a_restarted_client_reads_its_history_and_keeps_its_sessions(self) -> None:
        server = await start_server(self)
        base = Path(self.mktemp())
        alice, _, _ = await e2e_client(self, server, "alice", base / "alice")
        bob, bob_device, _ = await e2e_client(self, server, "bob", base / "bob")
        device_id = bob_device.device_id
        await alice.dm("bob", "one")
        await bob.dm("alice", "two")
        await bob.stop()
        bob_device.store.close()
        bob, again, events = await e2e_client(self, server, "bob", base / "bob", register=False)
        self.assertEqual(again.device_id, device_id)  # the same device, reloaded
        page = await bob.request({"type": "history", "stream": "dm:alice:bob"})
        self.assertEqual([e["body"] for e in page["events"]], ["one", "two"])
        # Its Olm sessions are kept: alice's next message needs no new one.
        sessions = again.store.get(f"olm:{alice.e2e.device.curve25519}")
        await alice.dm("bob", "three")
        live = await events.next(lambda e: is_dm(e) and e["body"] == "three")
        self.assertTrue(live["e2e"]["ok"])
        self.assertEqual(len(again.store.get(f"olm:{alice.e2e.device.curve25519}")), len(sessions))

    async def test_a_message_too_long_for_its_devices_is_refused_before_it_is_sent(self) -> None:
        server = await start_server(self)
        base = Path(self.mktemp())
        alice, _, _ = await e2e_client(self, server, "alice", base / "alice")
        for n in range(7):
            await e2e_client(self, server, "bob", base / f"bob-{n}", register=n == 0)
        from chatclient.e2e.client import SendBlocked

        with self.assertRaises(SendBlocked) as caught:
            await alice.dm("bob", "x" * 4000)
        self.assertIn("too long to encrypt for 7 devices", str(caught.exception))
        await alice.dm("bob", "short enough")  # and the conversation goes on
