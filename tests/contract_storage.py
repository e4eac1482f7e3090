"""The ``Storage`` contract (chatserver/storage/interface.py), written
against the interface only.

A backend gets these tests by subclassing ``StorageContract`` together
with ``unittest.TestCase`` and providing the hooks: ``make_storage`` (a
started storage on a fresh, empty database, stopped at cleanup) and
``commits`` (how many commits it has made: group commit is part of the
contract, but only the backend can count its transactions).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer

from chatserver.storage.interface import Storage


def _event(stream: str, body: str, ts: int = 1000) -> dict[str, Any]:
    return {"type": "msg", "from": "alice", "body": body, "stream": stream, "id": 0, "ts": ts}


class StorageContract:
    # --- hooks -------------------------------------------------------------

    async def make_storage(self) -> Storage:
        raise NotImplementedError

    def commits(self, storage: Storage) -> int:
        raise NotImplementedError

    # The TestCase's assertions (this is a mixin).
    assertEqual: Any
    assertTrue: Any
    assertFalse: Any
    assertIsNone: Any
    assertIn: Any
    assertNotIn: Any
    assertLessEqual: Any
    flushLoggedErrors: Any

    async def _storage_with_users(self, *names: str) -> Storage:
        storage = await self.make_storage()
        for name in names:
            self.assertTrue(await storage.add_user(name, f"hash-of-{name}", "user"))
        return storage

    # --- the event log -----------------------------------------------------

    async def test_a_senders_id_is_stored_beside_its_event_and_found_again(self) -> None:
        storage = await self.make_storage()
        plain = await storage.append(_event("room:t", "no id"))
        event = dict(_event("room:t", "with an id"), _txn="alice txn-0001")
        text = await storage.append(event)
        self.assertNotIn("_txn", json.loads(text))  # not in the event's JSON
        self.assertNotIn("txn", text)
        self.assertEqual(await storage.find_sent("alice txn-0001"), text)
        self.assertIsNone(await storage.find_sent("bob txn-0001"))  # per sender
        self.assertEqual(await storage.history("room:t", None, None, 10), [plain, text])

    async def test_the_commit_gives_each_stream_its_next_ids_in_append_order(self) -> None:
        storage = await self.make_storage()
        events = [
            _event("room:a", "a1"),
            _event("room:b", "b1"),
            _event("room:a", "a2"),
            _event("room:a", "a3"),
        ]
        texts = await defer.gatherResults([storage.append(e) for e in events])
        self.assertEqual([e["id"] for e in events], [1, 1, 2, 3])
        self.assertEqual([json.loads(t)["id"] for t in texts], [1, 1, 2, 3])
        self.assertEqual([json.loads(t)["body"] for t in texts], ["a1", "b1", "a2", "a3"])
        more = _event("room:a", "a4")
        await storage.append(more)
        self.assertEqual(more["id"], 4)
        self.assertEqual(await storage.load_stream_ids(), {"room:a": 4, "room:b": 1})

    async def test_appends_of_one_turn_share_one_commit(self) -> None:
        storage = await self.make_storage()
        before = self.commits(storage)
        await defer.gatherResults([storage.append(_event("room:a", str(n))) for n in range(50)])
        # All 50 were appended before any commit could start: one batch
        # (two at most, if the backend had one in flight already).
        self.assertLessEqual(self.commits(storage) - before, 2)
        self.assertEqual(len(await storage.history("room:a", 0, None, 100)), 50)

    async def test_ensure_room_makes_a_room_once_and_keeps_the_first(self) -> None:
        storage = await self.make_storage()
        await storage.write([("ensure_room", ("hall", "public", None, "first", 1))])
        # A second process making it too: no error, the first one stands.
        await storage.write([("ensure_room", ("hall", "private", "bob", "second", 2))])
        record = (await storage.load_rooms())["hall"]
        self.assertEqual((record.kind, record.owner, record.topic), ("public", None, "first"))

    async def test_a_failed_commit_stores_nothing_and_gives_its_id_back(self) -> None:
        storage = await self.make_storage()
        await storage.write([("create_room", ("real", "public", None, "", 1))])
        first = _event("room:real", "kept")
        await storage.append(first)
        # A membership of a room that does not exist breaks a constraint:
        # the event that carries it must not be stored either.
        doomed = _event("room:real", "lost")
        d = storage.append(doomed, [("set_member", ("no such room", "alice", "member", 1))])
        try:
            await d
        except Exception:
            pass
        else:
            raise AssertionError("the commit of an impossible change succeeded")
        self.flushLoggedErrors()  # the event log logs the failed commit, as it should
        after = _event("room:real", "after")
        await storage.append(after)
        self.assertEqual(after["id"], first["id"] + 1)
        bodies = [json.loads(t)["body"] for t in await storage.history("room:real", 0, None, 10)]
        self.assertEqual(bodies, ["kept", "after"])

    async def test_history_pages_forward_and_back(self) -> None:
        storage = await self.make_storage()
        for n in range(1, 11):
            await storage.append(_event("room:h", str(n)))

        def ids(texts: list[str]) -> list[int]:
            return [json.loads(t)["id"] for t in texts]

        self.assertEqual(ids(await storage.history("room:h", 3, None, 4)), [4, 5, 6, 7])
        self.assertEqual(ids(await storage.history("room:h", 3, 6, 10)), [4, 5])
        self.assertEqual(ids(await storage.history("room:h", None, None, 3)), [8, 9, 10])
        self.assertEqual(ids(await storage.history("room:h", None, 5, 3)), [2, 3, 4])
        self.assertEqual(await storage.history("room:nothing", None, None, 3), [])

    async def test_changes_commit_with_their_event_and_load_back(self) -> None:
        storage = await self._storage_with_users("alice", "bob", "carol")
        event = {"type": "joined", "user": "alice", "room": "den", "stream": "room:den", "id": 0, "ts": 5}
        await storage.append(
            event,
            [
                ("create_room", ("den", "private", "alice", "first topic", 5)),
                ("set_member", ("den", "alice", "owner", 5)),
                ("set_member", ("den", "bob", "member", 6)),
                ("set_topic", ("den", "second topic")),
                ("add_invite", ("den", "carol", "alice", 7)),
                ("set_sanction", ("den", "bob", "mute", 9000, "alice", 8)),
                ("add_audit", (8, "alice", "mute", "den", "bob", "noisy")),
            ],
        )
        room = (await storage.load_rooms())["den"]
        self.assertEqual((room.kind, room.owner, room.topic), ("private", "alice", "second topic"))
        self.assertEqual(room.members, {"alice": "owner", "bob": "member"})
        self.assertEqual(room.invites, {"carol"})
        self.assertEqual(room.sanctions, {("mute", "bob"): 9000})
        # A member's row drops their invitation; a lifted sanction is gone.
        await storage.write(
            [
                ("set_member", ("den", "carol", "member", 10)),
                ("set_sanction", ("den", "bob", "mute", None, None, 11)),
            ]
        )
        room = (await storage.load_rooms())["den"]
        self.assertEqual(room.invites, set())
        self.assertEqual(room.sanctions, {})
        self.assertEqual(list(room.members), ["alice", "bob", "carol"])  # in joining order
        await storage.write([("set_member", ("den", "bob", None, 12)), ("set_owner", ("den", "carol"))])
        room = (await storage.load_rooms())["den"]
        self.assertEqual((room.owner, set(room.members)), ("carol", {"alice", "carol"}))

    async def test_a_deleted_room_leaves_only_its_last_id_behind(self) -> None:
        storage = await self._storage_with_users("alice", "bob")
        event = {"type": "joined", "user": "alice", "room": "den", "stream": "room:den", "id": 0, "ts": 5}
        await storage.append(
            event,
            [
                ("create_room", ("den", "private", "alice", "", 5)),
                ("set_member", ("den", "alice", "owner", 5)),
                ("add_invite", ("den", "bob", "alice", 6)),
                ("set_sanction", ("den", "bob", "ban", None, "alice", 7)),
            ],
        )
        await storage.append(_event("room:den", "hello"))
        # The tombstone commits with the deletion, which takes it too.
        await storage.append(_event("room:den", "gone"), [("delete_room", ("den",))])
        self.assertNotIn("den", await storage.load_rooms())
        self.assertEqual(await storage.history("room:den", None, None, 10), [])
        self.assertEqual((await storage.load_stream_ids())["room:den"], 3)
        # A late event in the deleted room's stream goes with drop_history,
        # which leaves a room of that name made again alone.
        await storage.append(_event("room:den", "late"))
        await storage.write([("drop_history", ("den",))])
        self.assertEqual(await storage.history("room:den", None, None, 10), [])
        await storage.append(_event("room:den", "again"), [("create_room", ("den", "public", "bob", "", 9))])
        await storage.write([("drop_history", ("den",))])
        again = await storage.history("room:den", None, None, 10)
        self.assertEqual([json.loads(t)["id"] for t in again], [5])
        self.assertEqual((await storage.load_rooms())["den"].members, {})

    async def test_a_dm_streams_delivered_mark_only_grows_and_notes_keep_the_latest(self) -> None:
        storage = await self._storage_with_users("alice", "bob")
        await storage.write([("set_dm_stream", ("alice", "bob", "dm:alice:bob", 5))])
        await storage.write([("set_dm_stream", ("alice", "bob", "dm:alice:bob", 3))])
        self.assertEqual(await storage.load_dm_streams(), {"alice": {"bob": ("dm:alice:bob", 5)}})
        # Notes ride on the next commit; the latest for one key wins.
        storage.note(("delivered", "bob"), ("set_dm_stream", ("bob", "alice", "dm:alice:bob", 1)))
        storage.note(("delivered", "bob"), ("set_dm_stream", ("bob", "alice", "dm:alice:bob", 2)))
        await storage.append(_event("dm:alice:bob", "carrier"))
        await storage.idle()
        self.assertEqual((await storage.load_dm_streams())["bob"], {"alice": ("dm:alice:bob", 2)})
        # One user's, as stored now (what another process wrote too).
        self.assertEqual(await storage.dm_streams("bob"), {"alice": ("dm:alice:bob", 2)})
        self.assertEqual(await storage.dm_streams("alice"), {"bob": ("dm:alice:bob", 5)})
        self.assertEqual(await storage.dm_streams("carol"), {})

    async def test_welcomes_and_admins(self) -> None:
        storage = await self._storage_with_users("alice", "bob")
        self.assertTrue(await storage.add_user("root", "hash", "admin"))
        self.assertFalse(await storage.is_welcomed("alice"))
        self.assertTrue(await storage.is_welcomed("nobody"))  # no such user: nothing to welcome
        await storage.write([("mark_welcomed", ("alice",))])
        self.assertTrue(await storage.is_welcomed("alice"))
        self.assertEqual(await storage.load_welcomed(), {"alice"})
        self.assertEqual(await storage.load_admins(), {"root"})

    async def test_idle_fires_once_everything_is_settled(self) -> None:
        storage = await self.make_storage()
        appended = storage.append(_event("room:i", "x"))
        await storage.idle()
        self.assertTrue(appended.called)

    # --- accounts and tokens ---------------------------------------------

    async def test_accounts(self) -> None:
        storage = await self._storage_with_users("alice")
        self.assertFalse(await storage.add_user("alice", "other", "user"))  # taken
        record = await storage.get_user("alice")
        self.assertEqual(
            (record.name, record.password_hash, record.role, record.disabled),
            ("alice", "hash-of-alice", "user", False),
        )
        self.assertIsNone(await storage.get_user("bob"))
        self.assertTrue(await storage.user_exists("alice"))
        self.assertFalse(await storage.user_exists("bob"))

    async def test_disabling_revokes_the_tokens_and_says_whether_the_user_exists(self) -> None:
        storage = await self._storage_with_users("alice")
        await storage.add_token("t1", "alice", 100, 10_000)
        audit = ("add_audit", (100, "root", "disable", None, "alice", ""))
        self.assertTrue(await storage.set_disabled("alice", True, audit))
        self.assertTrue((await storage.get_user("alice")).disabled)
        self.assertIsNone(await storage.token_account("t1", 200))
        self.assertFalse(await storage.set_disabled("nobody", True, audit))
        self.assertTrue(await storage.set_disabled("alice", False, audit))
        self.assertFalse((await storage.get_user("alice")).disabled)

    async def test_tokens_live_until_they_expire_or_are_revoked(self) -> None:
        storage = await self._storage_with_users("alice")
        await storage.add_token("live", "alice", 100, 1000)
        await storage.add_token("other", "alice", 100, 1000)
        self.assertEqual((await storage.token_account("live", 999)).name, "alice")
        self.assertIsNone(await storage.token_account("live", 1000))  # expired
        self.assertIsNone(await storage.token_account("unknown", 100))
        await storage.revoke_token("live")
        self.assertIsNone(await storage.token_account("live", 200))
        self.assertEqual((await storage.token_account("other", 200)).name, "alice")

    async def test_an_unknown_invite_code_registers_nobody(self) -> None:
        storage = await self.make_storage()
        outcome = await storage.register_with_invite("no such code", "mallory", "hash", 100)
        self.assertEqual(outcome, ("invite_invalid", None))
        self.assertFalse(await storage.user_exists("mallory"))

    # --- resumption tickets ---------------------------------------------------

    async def test_ticket_keys_rotate_and_old_ones_go(self) -> None:
        storage = await self.make_storage()
        self.assertEqual(await storage.ticket_keys(), [])
        first = await storage.rotate_ticket_keys(b"k" * 32, 100, 0)
        self.assertEqual([(secret, created) for _, secret, created in first], [(b"k" * 32, 100)])
        both = await storage.rotate_ticket_keys(b"l" * 32, 200, 50)
        self.assertEqual([created for _, _, created in both], [100, 200])
        last = await storage.rotate_ticket_keys(b"m" * 32, 300, 150)  # drops the one made at 100
        self.assertEqual([created for _, _, created in last], [200, 300])
        self.assertEqual(await storage.ticket_keys(), last)

    async def test_a_redeemed_ticket_is_remembered(self) -> None:
        storage = await self._storage_with_users("alice")
        await storage.add_token("tok", "alice", 100, 10_000)
        record, taken = await storage.ticket_state(b"ticket-1", "tok", 200)
        self.assertEqual((record.name, taken), ("alice", False))
        await storage.add_redeemed_tickets([(b"ticket-1", 10_000), (b"ticket-2", 10_000)])
        record, taken = await storage.ticket_state(b"ticket-1", "tok", 200)
        self.assertTrue(taken)
        record, taken = await storage.ticket_state(b"ticket-3", "gone", 200)
        self.assertEqual((record, taken), (None, False))

    # --- the device directory ----------------------------------------------

    async def test_a_device_is_added_with_its_keys_and_listed(self) -> None:
        storage = await self.make_storage()
        identity = ("C" * 43, "E" * 43, "S" * 86)
        keys = [("AAAAAAAAAAA", "K" * 43, "s" * 86), ("AAAAAAAAAAE", "L" * 43, "t" * 86)]
        answer = await storage.put_device("alice", "DEV1", "laptop", identity, keys, None, 5000, 20, 100)
        self.assertEqual(answer, ("ok", 2))
        found = await storage.devices(["alice", "bob"])
        self.assertEqual(list(found), ["alice"])  # no devices, no entry
        (record,) = found["alice"]
        self.assertEqual(
            (record.user, record.device, record.name, record.curve25519, record.ed25519, record.signature),
            ("alice", "DEV1", "laptop", "C" * 43, "E" * 43, "S" * 86),
        )
        self.assertEqual(record.created_at, 5000)
        # Again, with one key it has and one it has not: only the new one counts.
        more = [keys[1], ("AAAAAAAAAAI", "M" * 43, "u" * 86)]
        self.assertEqual(
            await storage.put_device("alice", "DEV1", None, None, more, None, 6000, 20, 100), ("ok", 3)
        )
        self.assertEqual((await storage.devices(["alice"]))["alice"][0].name, "laptop")  # no name: kept

    async def test_a_device_keeps_its_identity_and_the_limits_change_nothing(self) -> None:
        storage = await self.make_storage()
        identity = ("C" * 43, "E" * 43, "S" * 86)
        self.assertEqual(await storage.put_device("alice", "D", "", identity, [], None, 1, 2, 3), ("ok", 0))
        other = ("X" * 43, "E" * 43, "S" * 86)
        self.assertEqual(
            await storage.put_device("alice", "D", "", other, [], None, 1, 2, 3), ("conflict", 0)
        )
        self.assertEqual(
            await storage.put_device("alice", "NEW", "", None, [], None, 1, 2, 3), ("unknown", 0)
        )
        keys = [(f"k{i}", "K" * 43, "s" * 86) for i in range(4)]
        self.assertEqual(
            await storage.put_device("alice", "D", "x", None, keys, None, 1, 2, 3), ("too_many_keys", 0)
        )
        self.assertEqual((await storage.devices(["alice"]))["alice"][0].name, "")  # refused whole
        self.assertEqual(await storage.put_device("alice", "D2", "", identity, [], None, 1, 2, 3), ("ok", 0))
        self.assertEqual(
            await storage.put_device("alice", "D3", "", identity, [], None, 1, 2, 3), ("too_many_devices", 0)
        )
        self.assertEqual([d.device for d in (await storage.devices(["alice"]))["alice"]], ["D", "D2"])

    async def test_a_one_time_key_is_claimed_once_then_the_fallback_key_is_given(self) -> None:
        storage = await self.make_storage()
        identity = ("C" * 43, "E" * 43, "S" * 86)
        keys = [("k1", "A" * 43, "a" * 86), ("k2", "B" * 43, "b" * 86)]
        fallback = ("f1", "F" * 43, "f" * 86)
        await storage.put_device("bob", "D", "", identity, keys, fallback, 1, 20, 100)
        first = await storage.claim_keys([("bob", "D"), ("bob", "NONE"), ("carol", "D")])
        self.assertEqual(
            [(k.user, k.device, k.key_id, k.fallback) for k in first], [("bob", "D", "k1", False)]
        )
        self.assertEqual((first[0].key, first[0].signature), ("A" * 43, "a" * 86))
        second = await storage.claim_keys([("bob", "D")])
        self.assertEqual([(k.key_id, k.fallback) for k in second], [("k2", False)])
        for _ in range(2):  # the fallback key stays until it is replaced
            third = await storage.claim_keys([("bob", "D")])
            self.assertEqual([(k.key_id, k.key, k.fallback) for k in third], [("f1", "F" * 43, True)])
        await storage.put_device("bob", "D", None, None, [], ("f2", "G" * 43, "g" * 86), 1, 20, 100)
        self.assertEqual([k.key_id for k in await storage.claim_keys([("bob", "D")])], ["f2"])

    async def test_event_counts_count_what_each_stream_holds(self) -> None:
        storage = await self.make_storage()
        for body in ("x", "y", "z"):
            await storage.append(dict(_event("device:bob:D", body), type="to_device"))
        await storage.append(dict(_event("device:bob:E", "w"), type="to_device"))
        counts = await storage.event_counts(["device:bob:D", "device:bob:E", "device:bob:F"])
        self.assertEqual(counts, {"device:bob:D": 3, "device:bob:E": 1})
        await storage.write([("drop_inbox", ("device:bob:D", 2))])
        self.assertEqual(await storage.event_counts(["device:bob:D"]), {"device:bob:D": 1})
        self.assertEqual(await storage.event_counts([]), {})

    async def test_removing_a_device_drops_its_keys_and_its_inbox(self) -> None:
        storage = await self.make_storage()
        identity = ("C" * 43, "E" * 43, "S" * 86)
        await storage.put_device("bob", "D", "", identity, [("k1", "A" * 43, "a" * 86)], None, 1, 20, 100)
        await storage.put_device("bob", "E", "", identity, [("k1", "A" * 43, "a" * 86)], None, 1, 20, 100)
        inbox = dict(_event("device:bob:D", "x"), type="to_device")
        kept = await storage.append(dict(_event("device:bob:E", "y"), type="to_device"))
        await storage.append(inbox)
        await storage.append(dict(_event("device:bob:D", "z"), type="to_device"))
        await storage.write([("drop_inbox", ("device:bob:D", 1))])
        self.assertEqual(
            [json.loads(t)["body"] for t in await storage.history("device:bob:D", 0, None, 10)], ["z"]
        )
        self.assertTrue(
            await storage.remove_device(
                "bob", "D", 9, ("add_audit", (1, "bob", "device_remove", None, "bob", "D"))
            )
        )
        self.assertFalse(await storage.remove_device("bob", "D", 9, None))
        # Its id cannot come back, with its old keys or others.
        self.assertEqual(
            await storage.put_device("bob", "D", "", identity, [], None, 1, 20, 100), ("removed", 0)
        )
        self.assertEqual([d.device for d in (await storage.devices(["bob"]))["bob"]], ["E"])
        self.assertEqual(await storage.claim_keys([("bob", "D")]), [])
        self.assertEqual(await storage.history("device:bob:D", 0, None, 10), [])
        self.assertEqual(await storage.history("device:bob:E", 0, None, 10), [kept])
        # The stream's ids go on.
        again = dict(_event("device:bob:D", "w"), type="to_device")
        await storage.append(again)
        self.assertEqual(again["id"], 3)

    async def test_an_encrypted_room_loads_back_as_one(self) -> None:
        storage = await self.make_storage()
        await storage.write(
            [
                ("create_room", ("secret", "private", "alice", "", 1, True)),
                ("create_room", ("plain", "public", None, "", 1)),
            ]
        )
        rooms = await storage.load_rooms()
        self.assertTrue(rooms["secret"].encrypted)
        self.assertFalse(rooms["plain"].encrypted)
