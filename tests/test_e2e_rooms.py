"""Encrypted rooms: Megolm between real clients through a real server
(docs/protocol.rst, "Encrypted rooms")."""

from __future__ import annotations

import json
from pathlib import Path

from twisted.trial import unittest

from chatclient.e2e.client import SendBlocked
from chatclient.e2e.device import Device
from chatclient.e2e.megolm import MegolmError
from chatserver.storage import queries
from tests.e2e_support import e2e_client
from tests.support import direct, logged_in, start_server, until


def is_msg(event: dict) -> bool:
    return event.get("type") == "msg"


class EncryptedRoomTests(unittest.TestCase):
    async def test_members_read_from_when_they_joined_and_a_removed_member_reads_nothing_after(self) -> None:
        server = await start_server(self)
        base = Path(self.mktemp())
        alice, _, alice_events = await e2e_client(self, server, "alice", base / "alice")
        bob, bob_device, bob_events = await e2e_client(self, server, "bob", base / "bob")
        created = await alice.request({"type": "create", "room": "secret", "encrypted": True})
        joined = await bob.request({"type": "join", "room": "secret"})
        # The answers say so (across servers the joined event may come after them).
        self.assertEqual((created.get("encrypted"), joined.get("encrypted")), (True, True))
        self.assertTrue(bob.e2e.is_encrypted("secret"))
        await alice.say("secret", "hello bob")
        got = await bob_events.next(is_msg)
        self.assertEqual((got["from"], got["body"], got["e2e"]["ok"]), ("alice", "hello bob", True))
        await bob.say("secret", "hello alice")
        back = await alice_events.next(lambda e: is_msg(e) and e["from"] == "bob")
        self.assertEqual(back["body"], "hello alice")
        # Carol joins later: she reads from her join on, not before.
        carol, _, carol_events = await e2e_client(self, server, "carol", base / "carol")
        await carol.request({"type": "join", "room": "secret"})
        await alice.say("secret", "welcome carol")
        seen = await carol_events.next(is_msg)
        self.assertEqual(seen["body"], "welcome carol")
        page = await carol.request({"type": "history", "stream": "room:secret"})
        read = [(e["body"], e["e2e"]) for e in page["events"] if e["type"] == "msg"]
        self.assertEqual(read[-1][0], "welcome carol")
        # Alice's session reached carol at a later index; bob's never did.
        self.assertEqual(
            [e2e for _, e2e in read[:2]],
            [
                {"ok": False, "reason": "undecryptable"},
                {"ok": False, "reason": "no_key"},
            ],
        )
        # Bob is kicked: alice's next message is in a new session he never gets.
        await alice.request({"type": "kick", "room": "secret", "user": "bob"})
        await alice.say("secret", "bob is gone")
        self.assertEqual(
            (await carol_events.next(lambda e: is_msg(e) and e["body"] == "bob is gone"))["e2e"]["ok"], True
        )
        db = direct(server)
        try:
            rows = db.run(
                lambda c: c.execute("SELECT event FROM events WHERE stream = 'room:secret'").fetchall()
            )
        finally:
            db.close()
        events = [json.loads(row[0]) for row in rows]
        last = [e for e in events if e["type"] == "msg"][-1]
        with self.assertRaises(MegolmError) as caught:
            bob_device.rooms.decrypt(last)
        self.assertEqual(caught.exception.reason, "no_key")
        # Nor any stored event, including every inbox message (room keys) kept.
        for event in events:
            self.assertNotIn("bob is gone", json.dumps(event))

    async def test_a_plaintext_message_to_an_encrypted_room_is_refused(self) -> None:
        server = await start_server(self)
        base = Path(self.mktemp())
        alice, _, _ = await e2e_client(self, server, "alice", base / "alice")
        await alice.request({"type": "create", "room": "secret", "encrypted": True})
        session = await alice.when_online()
        from chatclient.session import ServerError

        with self.assertRaises(ServerError) as caught:
            await session.request({"type": "say", "room": "secret", "body": "in the clear"})
        self.assertEqual(caught.exception.code, "encrypted_room")

    async def test_room_keys_move_to_a_new_device_with_an_export(self) -> None:
        server = await start_server(self)
        base = Path(self.mktemp())
        alice, _, _ = await e2e_client(self, server, "alice", base / "alice")
        bob, bob_laptop, _ = await e2e_client(self, server, "bob", base / "bob-laptop")
        await alice.request({"type": "create", "room": "secret", "encrypted": True})
        await bob.request({"type": "join", "room": "secret"})
        await alice.say("secret", "old news")
        await until(lambda: any(True for _ in bob_laptop.store.items("inbound:")))
        exported = bob_laptop.export_keys("export passphrase", log2_n=10)
        self.assertNotIn("old news", exported)
        phone, phone_device, _ = await e2e_client(self, server, "bob", base / "bob-phone", register=False)
        before = await phone.request({"type": "history", "stream": "room:secret"})
        self.assertFalse([e for e in before["events"] if e["type"] == "msg"][0]["e2e"]["ok"])
        with self.assertRaises(SendBlocked):
            phone_device.import_keys(exported, "wrong passphrase")
        self.assertGreaterEqual(phone_device.import_keys(exported, "export passphrase"), 1)
        after = await phone.request({"type": "history", "stream": "room:secret"})
        self.assertEqual([e["body"] for e in after["events"] if e["type"] == "msg"], ["old news"])

    async def test_a_message_from_someone_who_is_not_a_member_is_refused(self) -> None:
        server = await start_server(self)
        base = Path(self.mktemp())
        alice, _, _ = await e2e_client(self, server, "alice", base / "alice")
        bob, bob_device, bob_events = await e2e_client(self, server, "bob", base / "bob")
        await alice.request({"type": "create", "room": "secret", "encrypted": True})
        await bob.request({"type": "join", "room": "secret"})
        # Bob's client lists the room's members when it joins (it has sent nothing).
        await until(lambda: "secret" in bob_device._members)
        await alice.say("secret", "real")
        real = await bob_events.next(lambda e: is_msg(e) and e["from"] == "alice")
        self.assertTrue(real["e2e"]["ok"])
        # What a server could deliver: alice's ciphertext again, said to be
        # from a user who is not in the room, as the next event.
        raw = (await (await bob.when_online()).request({"type": "history", "stream": "room:secret"}))[
            "events"
        ]
        forged = dict([e for e in raw if e["type"] == "msg" and e["from"] == "alice"][-1])
        forged.update({"from": "mallory", "id": bob.last_ids["room:secret"] + 1})
        shown = bob_device.incoming(forged)
        self.assertEqual(shown["e2e"], {"ok": False, "reason": "not_member"})
        # And the same ciphertext again under a new id, from alice: a replay.
        replay = dict(forged, **{"from": "alice"})
        self.assertEqual(bob_device.incoming(replay)["e2e"], {"ok": False, "reason": "replayed"})

    async def test_a_kept_plaintext_is_not_shown_for_another_event_at_its_place(self) -> None:
        server = await start_server(self)
        base = Path(self.mktemp())
        alice, _, _ = await e2e_client(self, server, "alice", base / "alice")
        bob, bob_device, bob_events = await e2e_client(self, server, "bob", base / "bob")
        await e2e_client(self, server, "carol", base / "carol")
        await alice.request({"type": "create", "room": "secret", "encrypted": True})
        await bob.request({"type": "join", "room": "secret"})
        await alice.say("secret", "from alice")
        real = await bob_events.next(lambda e: is_msg(e) and e["from"] == "alice")
        self.assertTrue(real["e2e"]["ok"])
        raw = (await (await bob.when_online()).request({"type": "history", "stream": "room:secret"}))[
            "events"
        ]
        event = [e for e in raw if e["type"] == "msg"][-1]
        # The same place and ciphertext, said by the server to be carol's.
        forged = dict(event, **{"from": "carol"})
        shown = bob_device.incoming(forged)
        self.assertFalse(shown["e2e"]["ok"])
        self.assertNotEqual(shown["body"], "from alice")
        # The real event still reads from what was kept.
        self.assertEqual(bob_device.incoming(event)["body"], "from alice")

    async def test_a_room_whose_devices_take_several_records_reads_as_any_other(self) -> None:
        # 10 members with 20 devices each: neither the listing of the
        # room's devices nor the key shares to them fit in one record.
        server = await start_server(self)
        base = Path(self.mktemp())
        alice, _, _ = await e2e_client(self, server, "alice", base / "alice")
        bob, _, bob_events = await e2e_client(self, server, "bob", base / "bob")
        await alice.request({"type": "create", "room": "big", "encrypted": True})
        await bob.request({"type": "join", "room": "big"})
        db = direct(server)
        self.addCleanup(db.close)
        for n in range(10):
            user = f"crowd{n}"
            session = await logged_in(self, server, user)
            await session.request({"type": "join", "room": "big"})
            for _ in range(20):
                device = Device.new(user)
                identity = device.identity()
                fallback = device.fallback_key()
                status, _ = db.run(
                    queries.put_device,
                    user,
                    device.device_id,
                    None,
                    (identity["curve25519"], identity["ed25519"], identity["signature"]),
                    [],
                    (fallback["key_id"], fallback["key"], fallback["signature"]),
                    0,
                    20,
                    100,
                )
                self.assertEqual(status, "ok")
        first = await alice.request({"type": "devices", "room": "big"})
        self.assertTrue(first["more"])
        await alice.say("big", "to all 202 devices")
        got = await bob_events.next(is_msg)
        self.assertEqual((got["body"], got["e2e"]["ok"]), ("to all 202 devices", True))
        self.assertEqual(alice.state, "online")  # never cut off for a request too long

    async def test_a_device_whose_inbox_was_full_gets_the_room_key_with_the_next_message(self) -> None:
        server = await start_server(self)
        base = Path(self.mktemp())
        alice, _, _ = await e2e_client(self, server, "alice", base / "alice")
        bob, _, bob_events = await e2e_client(self, server, "bob", base / "bob")
        await alice.request({"type": "create", "room": "secret", "encrypted": True})
        await bob.request({"type": "join", "room": "secret"})
        inboxes = server.factory.chat.inboxes
        inboxes.max_inbox = 0  # every inbox is full: the key share is refused
        await alice.say("secret", "one")
        first = await bob_events.next(is_msg)
        self.assertEqual(first["e2e"], {"ok": False, "reason": "no_key"})
        inboxes.max_inbox = 1000
        await alice.say("secret", "two")
        second = await bob_events.next(lambda e: is_msg(e) and e.get("body") == "two")
        self.assertEqual(second["e2e"]["ok"], True)

    async def test_sessions_dropped_from_memory_are_read_again_from_the_store(self) -> None:
        server = await start_server(self)
        base = Path(self.mktemp())
        bob, bob_device, bob_events = await e2e_client(self, server, "bob", base / "bob")
        bob_device.rooms.inbound_cache = 2  # (500 by default)
        await bob.request({"type": "create", "room": "many", "encrypted": True})
        senders = []
        for name in ("alice", "carol", "dave"):
            client, _, _ = await e2e_client(self, server, name, base / name)
            await client.request({"type": "join", "room": "many"})
            senders.append((name, client))
        for name, client in senders:
            await client.say("many", f"from {name}")
            got = await bob_events.next(lambda e, n=name: is_msg(e) and e["from"] == n)
            self.assertEqual(got["e2e"]["ok"], True)
        self.assertEqual(len(bob_device.rooms._inbound), 2)
        # Alice's session left memory first; her next message still reads.
        await senders[0][1].say("many", "again")
        got = await bob_events.next(lambda e: is_msg(e) and e.get("body") == "again")
        self.assertEqual((got["from"], got["e2e"]["ok"]), ("alice", True))
        self.assertEqual(len(bob_device.rooms._inbound), 2)
