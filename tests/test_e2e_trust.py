"""Trust between devices: SAS verification between real clients, and a
server that substitutes a device key (a test double of the directory's
answer, driven through the real client) being caught."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial import unittest

from chatclient.e2e.client import SendBlocked
from chatclient.e2e.device import Device
from chatclient.reconnect import ReconnectingClient
from chatserver.wire import e2e
from tests.e2e_support import e2e_client
from tests.support import start_server


def verify_state(state: str) -> Any:
    return lambda e: e.get("type") == "e2e_verify" and e.get("state") == state


class SubstitutingDirectory(ReconnectingClient):
    """A client whose ``devices`` answers come from a directory that puts
    an impostor's keys in place of one device's (``substitute``: user ->
    (device id, impostor Device, whether to sign the forgery validly))."""

    substitute: dict[str, tuple[str, Device, bool]] = {}

    def request(self, event: dict[str, Any]) -> Deferred[dict[str, Any]]:
        d = super().request(event)
        if event.get("type") == "devices":
            d.addCallback(self._forged)
        return d

    def _forged(self, answer: dict[str, Any]) -> dict[str, Any]:
        for user, (device_id, impostor, signed) in self.substitute.items():
            for entry in answer["devices"].get(user, []):
                if entry["device"] == device_id:
                    entry["curve25519"] = impostor.curve25519
                    entry["ed25519"] = impostor.ed25519
                    content = e2e.device_content(user, device_id, impostor.curve25519, impostor.ed25519)
                    entry["signature"] = impostor.sign(content) if signed else entry["signature"]
        return answer


class VerificationTests(unittest.TestCase):
    async def test_matching_emoji_verify_the_devices_on_both_sides(self) -> None:
        server = await start_server(self)
        base = Path(self.mktemp())
        alice, alice_e2e, alice_events = await e2e_client(self, server, "alice", base / "alice")
        bob, bob_e2e, bob_events = await e2e_client(self, server, "bob", base / "bob")
        await bob_e2e.devices_of(["alice"])  # as a conversation would have
        txn = await alice_e2e.verify("bob")
        mine = await alice_events.next(verify_state("sas"))
        theirs = await bob_events.next(verify_state("sas"))
        self.assertEqual(mine["txn"], txn)
        self.assertEqual(len(mine["emoji"]), 7)
        self.assertEqual(mine["emoji"], theirs["emoji"])  # what the users compare
        self.assertEqual(mine["decimals"], theirs["decimals"])
        self.assertTrue(all(1000 <= n <= 9191 for n in mine["decimals"]))
        alice_e2e.confirm(txn, True)
        bob_e2e.confirm(txn, True)
        await alice_events.next(verify_state("done"))
        await bob_events.next(verify_state("done"))
        self.assertTrue(alice_e2e.book.known("bob")[bob_e2e.device_id]["verified"])
        self.assertTrue(bob_e2e.book.known("alice")[alice_e2e.device_id]["verified"])
        # And a message shows it.
        await alice.dm("bob", "verified now")
        got = await bob_events.next(lambda e: e.get("type") == "dm")
        self.assertEqual(got["e2e"]["trust"], "verified")

    async def test_emoji_that_do_not_match_leave_both_unverified(self) -> None:
        server = await start_server(self)
        base = Path(self.mktemp())
        _, alice_e2e, alice_events = await e2e_client(self, server, "alice", base / "alice")
        _, bob_e2e, bob_events = await e2e_client(self, server, "bob", base / "bob")
        await bob_e2e.devices_of(["alice"])
        txn = await alice_e2e.verify("bob")
        await bob_events.next(verify_state("sas"))
        await alice_events.next(verify_state("sas"))
        bob_e2e.confirm(txn, False)
        cancelled = await alice_events.next(verify_state("cancelled"))
        self.assertEqual(cancelled["code"], "mismatch")
        self.assertFalse(alice_e2e.book.known("bob")[bob_e2e.device_id]["verified"])
        self.assertFalse(bob_e2e.book.known("alice")[alice_e2e.device_id]["verified"])


class SubstitutionTests(unittest.TestCase):
    async def test_a_substituted_key_fails_its_signature_and_is_never_used(self) -> None:
        server = await start_server(self)
        base = Path(self.mktemp())
        _, alice_e2e, _ = await e2e_client(self, server, "alice", base / "alice")
        impostor = Device("bob", "IMPOSTOR", Device.new("bob").account)
        SubstitutingDirectory.substitute = {}
        bob_real, bob_e2e, _ = await e2e_client(self, server, "bob", base / "bob")
        SubstitutingDirectory.substitute = {"bob": (bob_e2e.device_id, impostor, False)}
        alice2, _, events = await e2e_client(
            self, server, "alice", base / "alice2", register=False, client_class=SubstitutingDirectory
        )
        with self.assertRaises(SendBlocked):  # bob's only device is refused
            await alice2.dm("bob", "for bob only")
        notice = await events.next(lambda e: e.get("type") == "e2e_notice" and e["kind"] == "bad_signature")
        self.assertEqual((notice["user"], notice["device"]), ("bob", bob_e2e.device_id))
        self.assertFalse(alice2.e2e.olm.has_session(impostor.curve25519))
        del alice_e2e, bob_real

    async def test_a_validly_signed_substitute_is_caught_by_the_sas(self) -> None:
        server = await start_server(self)
        base = Path(self.mktemp())
        impostor = Device("bob", "X", Device.new("bob").account)
        _, bob_e2e, bob_events = await e2e_client(self, server, "bob", base / "bob")
        impostor.device_id = bob_e2e.device_id
        SubstitutingDirectory.substitute = {"bob": (bob_e2e.device_id, impostor, True)}
        alice, alice_e2e, alice_events = await e2e_client(
            self, server, "alice", base / "alice", client_class=SubstitutingDirectory
        )
        await bob_e2e.devices_of(["alice"])
        # First contact: the forgery is trusted on first use ...
        txn = await alice_e2e.verify("bob")
        await alice_events.next(verify_state("sas"))
        await bob_events.next(verify_state("sas"))
        alice_e2e.confirm(txn, True)
        bob_e2e.confirm(txn, True)
        # ... but the real device's MAC is not of the key alice was given.
        cancelled = await alice_events.next(verify_state("cancelled"))
        self.assertEqual(cancelled["code"], "key_mismatch")
        self.assertFalse(alice_e2e.book.known("bob")[bob_e2e.device_id]["verified"])
        del alice


class AddingDirectory(ReconnectingClient):
    """A directory that lists one more user than was asked for, with a
    validly signed device of the server's own."""

    extra: Device | None = None

    def request(self, event: dict[str, Any]) -> Deferred[dict[str, Any]]:
        d = super().request(event)
        if event.get("type") == "devices" and self.extra is not None:
            extra = self.extra

            def added(answer: dict[str, Any]) -> dict[str, Any]:
                identity = extra.identity()
                entry = {"device": extra.device_id, "name": "", "created": 0, **identity}
                answer["devices"]["mallory"] = [entry]
                return answer

            d.addCallback(added)
        return d


class DirectoryAnswerTests(unittest.TestCase):
    async def test_a_user_the_client_did_not_ask_for_is_not_a_recipient(self) -> None:
        server = await start_server(self)
        base = Path(self.mktemp())
        _, _, bob_events = await e2e_client(self, server, "bob", base / "bob")
        mallory = Device.new("mallory")
        AddingDirectory.extra = mallory
        alice, alice_e2e, _ = await e2e_client(
            self, server, "alice", base / "alice", client_class=AddingDirectory
        )
        await alice.dm("bob", "for bob alone")
        got = await bob_events.next(lambda e: e.get("type") == "dm")
        self.assertEqual(got["body"], "for bob alone")
        self.assertFalse(alice_e2e.olm.has_session(mallory.curve25519))
        self.assertEqual(alice_e2e.book.known("mallory"), {})

    def test_a_removed_device_listed_again_with_other_keys_is_a_changed_device(self) -> None:
        from chatclient.e2e.store import DeviceStore
        from chatclient.e2e.trust import DeviceBook

        directory = Path(self.mktemp())
        store = DeviceStore(directory, bytes(32))
        self.addCleanup(store.close)
        book = DeviceBook(store)
        phone = Device.new("bob")

        def entry(device: Device, device_id: str) -> dict[str, Any]:
            signed = Device("bob", device_id, device.account)
            return {"device": device_id, "name": "phone", **signed.identity()}

        book.update("bob", [entry(phone, "PHONE")])
        self.assertTrue(book.set_verified("bob", "PHONE", phone.ed25519))
        _, notices = book.update("bob", [])
        self.assertEqual([n.kind for n in notices], ["removed_device"])
        self.assertEqual(book.trust_of("bob", "PHONE", phone.curve25519, phone.ed25519), "removed")
        impostor = Device.new("bob")
        usable, notices = book.update("bob", [entry(impostor, "PHONE")])
        self.assertEqual(usable, {})
        self.assertEqual([(n.kind, n.blocking) for n in notices], [("changed_device", True)])
        self.assertTrue(book.blocked("bob"))
