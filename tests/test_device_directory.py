"""The device directory and device inboxes (docs/protocol.rst, "Devices"),
through real sessions to a real server, with real vodozemac keys: what
the server stores, hands out and refuses."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from chatclient.e2e.device import Device
from chatclient.session import ChatSession, ServerError
from tests.support import EventQueue, logged_in, start_server


async def upload(session: ChatSession, device: Device, keys: int = 3, **extra: Any) -> dict[str, Any]:
    request = {
        "type": "keys",
        "device": device.device_id,
        "name": "test device",
        "identity": device.identity(),
        "one_time_keys": device.one_time_keys(keys),
        "fallback_key": device.fallback_key(),
        # (checked only where the request declares the connection's device)
        "proof": device.proof(session.device_challenge),
    }
    request.update(extra)
    answer = await session.request({k: v for k, v in request.items() if v is not None})
    device.published()
    return answer


class DirectoryTests(unittest.TestCase):
    async def refused(self, session: ChatSession, request: dict[str, Any]) -> dict[str, Any]:
        with self.assertRaises(ServerError) as caught:
            await session.request(request)
        return caught.exception.event

    async def test_a_device_is_listed_with_its_signed_keys_and_its_one_time_keys_claimed_once(self) -> None:
        server = await start_server(self)
        alice = await logged_in(self, server, "alice")
        bob = await logged_in(self, server, "bob")
        laptop = Device.new("alice")
        answer = await upload(alice, laptop, keys=2)
        self.assertEqual(
            dict(answer, ref=None),
            {"type": "keys", "device": laptop.device_id, "one_time_keys": 2, "ref": None},
        )
        listing = await bob.request({"type": "devices", "users": ["alice", "carol", "nobody"]})
        self.assertEqual(listing["devices"]["carol"], [])  # no such user looks like no devices
        (entry,) = listing["devices"]["alice"]
        identity = laptop.identity()
        self.assertEqual(
            {k: entry[k] for k in ("device", "name", "curve25519", "ed25519")},
            {
                "device": laptop.device_id,
                "name": "test device",
                "curve25519": identity["curve25519"],
                "ed25519": identity["ed25519"],
            },
        )
        want = {"type": "claim", "devices": [{"user": "alice", "device": laptop.device_id}]}
        claimed = [(await bob.request(want))["keys"][0] for _ in range(3)]
        self.assertEqual([k["fallback"] for k in claimed], [False, False, True])
        self.assertNotEqual(claimed[0]["key"], claimed[1]["key"])
        # Topping up: the answer says how many are left.
        again = await alice.request(
            {"type": "keys", "device": laptop.device_id, "one_time_keys": laptop.one_time_keys(5)}
        )
        self.assertEqual(again["one_time_keys"], 5)

    async def test_forged_and_conflicting_uploads_are_refused(self) -> None:
        server = await start_server(self)
        alice = await logged_in(self, server, "alice")
        mallory = await logged_in(self, server, "mallory")
        laptop = Device.new("alice")
        # Alice's keys uploaded as mallory's: the signature covers the user.
        error = await self.refused(
            mallory, {"type": "keys", "device": laptop.device_id, "identity": laptop.identity()}
        )
        self.assertEqual((error["code"], error["field"]), ("bad_signature", "identity"))
        await upload(alice, laptop)
        other = Device("alice", laptop.device_id, Device.new("alice").account)
        second = await logged_in(self, server, "alice", register=False)
        error = await self.refused(
            second,
            {
                "type": "keys",
                "device": laptop.device_id,
                "identity": other.identity(),
                "proof": other.proof(second.device_challenge),
            },
        )
        self.assertEqual((error["code"], error["field"]), ("device_conflict", "identity"))
        # A key signed by another device's key.
        forged = other.one_time_keys(1)
        error = await self.refused(
            alice, {"type": "keys", "device": laptop.device_id, "one_time_keys": forged}
        )
        self.assertEqual((error["code"], error["field"]), ("bad_signature", "one_time_keys"))
        # One connection is one device.
        error = await self.refused(
            alice, {"type": "keys", "device": "OTHERDEVICE", "identity": laptop.identity()}
        )
        self.assertEqual((error["code"], error["field"]), ("bad_field", "device"))
        error = await self.refused(second, {"type": "keys", "device": "NEWDEVICE"})
        self.assertEqual((error["code"], error["field"]), ("unknown_device", "device"))

    async def test_a_connection_binds_a_device_only_with_its_key(self) -> None:
        server = await start_server(self)
        alice = await logged_in(self, server, "alice")
        laptop = Device.new("alice")
        await upload(alice, laptop)
        # Another session of the account knows the laptop's id and public
        # keys (any listing has them), but not its private key.
        thief = await logged_in(self, server, "alice", register=False)
        declare = {"type": "keys", "device": laptop.device_id, "identity": laptop.identity()}
        error = await self.refused(thief, declare)
        self.assertEqual((error["code"], error["field"]), ("missing_field", "proof"))
        error = await self.refused(thief, {"type": "keys", "device": laptop.device_id})
        self.assertEqual((error["code"], error["field"]), ("missing_field", "proof"))
        # A proof over another connection's challenge, or by another key.
        stale = laptop.proof(alice.device_challenge)
        forged = Device("alice", laptop.device_id, Device.new("alice").account).proof(thief.device_challenge)
        for proof in (stale, forged):
            error = await self.refused(thief, dict(declare, proof=proof))
            self.assertEqual((error["code"], error["field"]), ("bad_signature", "proof"))
        # Nothing was bound: the thief's connection has no inbox.
        error = await self.refused(thief, {"type": "to_device_ack", "upto": 1})
        self.assertEqual(error["code"], "no_device")
        # With the key, a second connection of the device is fine.
        answer = await thief.request(dict(declare, proof=laptop.proof(thief.device_challenge)))
        self.assertEqual(answer["device"], laptop.device_id)

    async def test_a_removed_device_is_gone_for_good_and_its_connections_closed(self) -> None:
        server = await start_server(self)
        alice = await logged_in(self, server, "alice")
        phone_session = await logged_in(self, server, "alice", register=False)
        laptop, phone = Device.new("alice"), Device.new("alice")
        await upload(alice, laptop)
        await upload(phone_session, phone)
        answer = await alice.request({"type": "remove_device", "device": phone.device_id})
        self.assertEqual((answer["type"], answer["device"]), ("device_removed", phone.device_id))
        listing = await alice.request({"type": "devices", "users": ["alice"]})
        self.assertEqual([d["device"] for d in listing["devices"]["alice"]], [laptop.device_id])
        claimed = await alice.request(
            {"type": "claim", "devices": [{"user": "alice", "device": phone.device_id}]}
        )
        self.assertEqual(claimed["keys"], [])
        error = await self.refused(alice, {"type": "remove_device", "device": phone.device_id})
        self.assertEqual(error["code"], "no_such_device")
        # The phone's connection was closed, and its id cannot come back.
        lost = await phone_session.closed
        self.assertEqual((lost.clean, lost.code), (True, "device_removed"))
        again = await logged_in(self, server, "alice", register=False)
        error = await self.refused(
            again,
            {
                "type": "keys",
                "device": phone.device_id,
                "identity": phone.identity(),
                "proof": phone.proof(again.device_challenge),
            },
        )
        self.assertEqual(error["code"], "device_removed")

    async def test_logging_out_removes_the_device(self) -> None:
        server = await start_server(self)
        alice = await logged_in(self, server, "alice")
        bob = await logged_in(self, server, "bob")
        laptop = Device.new("alice")
        await upload(alice, laptop)
        await alice.request({"type": "logout"})
        listing = await bob.request({"type": "devices", "users": ["alice"]})
        self.assertEqual(listing["devices"]["alice"], [])


class InboxTests(unittest.TestCase):
    async def test_messages_to_a_device_wait_for_it_and_go_once_confirmed(self) -> None:
        server = await start_server(self)
        alice = await logged_in(self, server, "alice")
        bob = await logged_in(self, server, "bob")
        laptop, phone = Device.new("alice"), Device.new("bob")
        await upload(alice, laptop)
        await upload(bob, phone)
        await bob.close()
        sent = await alice.request(
            {
                "type": "to_device",
                "messages": [
                    {"user": "bob", "device": phone.device_id, "body": {"n": 1}},
                    {"user": "bob", "device": phone.device_id, "body": {"n": 2}},
                    {"user": "bob", "device": "NOSUCHDEVICE", "body": {"n": 3}},
                ],
            }
        )
        self.assertEqual(sent["sent"], 2)
        self.assertEqual(sent["missing"], [{"user": "bob", "device": "NOSUCHDEVICE"}])
        # Bob's phone comes back: the backlog, in order, after the answer.
        bob = await logged_in(self, server, "bob", register=False)
        queue = EventQueue(bob)
        await bob.request(
            {"type": "keys", "device": phone.device_id, "proof": phone.proof(bob.device_challenge)}
        )
        first = await queue.next(lambda e: e["type"] == "to_device")
        second = await queue.next(lambda e: e["type"] == "to_device")
        self.assertEqual([first["body"], second["body"]], [{"n": 1}, {"n": 2}])
        self.assertEqual((first["from"], first["from_device"]), ("alice", laptop.device_id))
        self.assertEqual(second["id"], first["id"] + 1)
        # Live, too.
        await alice.request(
            {"type": "to_device", "messages": [{"user": "bob", "device": phone.device_id, "body": {"n": 4}}]}
        )
        live = await queue.next(lambda e: e["type"] == "to_device")
        self.assertEqual(live["body"], {"n": 4})
        # Confirmed up to the second: only the live one comes again.
        await bob.request({"type": "to_device_ack", "upto": second["id"]})
        await bob.close()
        bob = await logged_in(self, server, "bob", register=False)
        queue = EventQueue(bob)
        await bob.request(
            {"type": "keys", "device": phone.device_id, "proof": phone.proof(bob.device_challenge)}
        )
        again = await queue.next(lambda e: e["type"] == "to_device")
        self.assertEqual(again["body"], {"n": 4})

    async def test_a_full_inbox_refuses_more_and_says_so(self) -> None:
        server = await start_server(self)
        server.factory.chat.inboxes.max_inbox = 3  # (1000 by default)
        alice = await logged_in(self, server, "alice")
        bob = await logged_in(self, server, "bob")
        await upload(alice, Device.new("alice"))
        phone = Device.new("bob")
        await upload(bob, phone)
        await bob.close()  # nothing is confirmed while he is away
        message = {"user": "bob", "device": phone.device_id, "body": {"n": 0}}
        first = await alice.request({"type": "to_device", "messages": [message, message]})
        self.assertEqual((first["sent"], first["full"]), (2, []))
        second = await alice.request({"type": "to_device", "messages": [message, message]})
        gone = {"user": "bob", "device": phone.device_id}
        self.assertEqual((second["sent"], second["full"], second["missing"]), (1, [gone], []))
        third = await alice.request({"type": "to_device", "messages": [message]})
        self.assertEqual((third["sent"], third["full"]), (0, [gone]))

    async def test_a_connection_without_a_device_has_no_inbox(self) -> None:
        server = await start_server(self)
        alice = await logged_in(self, server, "alice")
        with self.assertRaises(ServerError) as caught:
            await alice.request(
                {"type": "to_device", "messages": [{"user": "bob", "device": "X", "body": {}}]}
            )
        self.assertEqual(caught.exception.event["code"], "no_device")


class ListingPageTests(unittest.TestCase):
    async def test_a_listing_too_long_for_a_record_comes_in_pages_of_whole_users(self) -> None:
        # A 4096-byte line holds a few device entries: 3 users with 4
        # devices each cannot come in one answer.
        server = await start_server(self, max_line_length=4096)
        devices: dict[str, set[str]] = {}
        first = None
        for user in ("alice", "bob", "carol"):
            for n in range(4):
                session = await logged_in(self, server, user, register=n == 0)
                first = first or session
                device = Device.new(user)
                await upload(session, device, keys=1)
                devices.setdefault(user, set()).add(device.device_id)
            if user != "alice":
                await session.request({"type": "join", "room": "lobby2"})
            else:
                await session.request({"type": "create", "room": "lobby2"})
        assert first is not None
        for request in (
            {"type": "devices", "room": "lobby2"},
            {"type": "devices", "users": ["carol", "bob", "alice"]},
        ):
            pages = []
            while True:
                answer = await first.request(request)
                pages.append(answer)
                if not answer["more"]:
                    break
                request = {**request, "after": max(answer["devices"])}
            self.assertGreater(len(pages), 1)
            users = [u for page in pages for u in page["devices"]]
            self.assertEqual(users, sorted(users))  # in name order, each user once, on one page
            self.assertEqual(
                {
                    u: {e["device"] for e in entries}
                    for page in pages
                    for u, entries in page["devices"].items()
                },
                devices,
            )
            if "room" in request:
                self.assertEqual(
                    {p["at"] for p in pages} and all(isinstance(p["at"], int) for p in pages), True
                )


class RecheckTests(unittest.TestCase):
    async def test_a_recheck_closes_what_storage_says_is_disabled_or_removed(self) -> None:
        # What another process decided while the hub's link was down: the
        # closings are lost, the records are not.
        server = await start_server(self)
        mallory = await logged_in(self, server, "mallory")
        alice = await logged_in(self, server, "alice")
        phone_session = await logged_in(self, server, "alice", register=False)
        laptop, phone = Device.new("alice"), Device.new("alice")
        await upload(alice, laptop)
        await upload(phone_session, phone)
        storage = server.factory.chat.storage
        await storage.set_disabled(
            "mallory", True, ("add_audit", (1, "root", "disable", None, "mallory", ""))
        )
        await storage.remove_device("alice", phone.device_id, 2, None)
        server.factory.chat.recheck_sessions()
        lost = await mallory.closed
        self.assertEqual(lost.code, "account_disabled")
        lost = await phone_session.closed
        self.assertEqual(lost.code, "device_removed")
        self.assertEqual((await alice.ping())["type"], "pong")  # nothing else is touched
