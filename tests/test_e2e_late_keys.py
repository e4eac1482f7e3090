"""A room message that comes before its room key (the key in the inbox's
backlog, behind the catch-up) is read once the key comes: two real
devices (vodozemac, sealed stores), their Olm session and Megolm room
key made as the clients make them, the events handed over in the bad
order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import task
from twisted.trial import unittest

from chatclient.e2e.client import EndToEnd
from chatclient.e2e.store import DeviceStore
from chatserver.wire import crypto, e2e


def room_message(sender: EndToEnd, event_id: int, session_id: str, ciphertext: str) -> dict[str, Any]:
    """A ``msg`` of room ``den`` as the server delivers it."""
    return {
        "type": "msg",
        "room": "den",
        "from": sender.user,
        "stream": "room:den",
        "id": event_id,
        "ts": 1,
        "e2e": {
            "algorithm": e2e.MEGOLM,
            "sender_key": sender.device.curve25519,
            "device": sender.device_id,
            "session_id": session_id,
            "ciphertext": ciphertext,
        },
    }


class LateKeyTests(unittest.TestCase):
    def device(self, user: str) -> EndToEnd:
        store = DeviceStore(Path(self.mktemp()), crypto.random_bytes(32))
        self.addCleanup(store.close)
        return EndToEnd(store, user, task.Clock())

    def test_a_message_waiting_for_its_key_is_told_again_when_the_key_comes(self) -> None:
        alice, bob = self.device("alice"), self.device("bob")
        told: list[dict[str, Any]] = []
        bob.emit = told.append
        # Bob knows alice's device (as from a device list), alice claims a key of bob's.
        alice_entry = {"device": alice.device_id, "name": "", **alice.device.identity()}
        bob.book.update("alice", [alice_entry])
        key = bob.device.one_time_keys(1)[0]
        bob.device.published()
        alice.olm.start(bob.device.curve25519, key["key"])
        alice.rooms.new_outbound("den", 0)
        share = alice.rooms.share("den")  # as a sender does: the key first, then the message
        session_id, ciphertext = alice.rooms.encrypt("den", "arrived before its key")
        message = room_message(alice, 7, session_id, ciphertext)
        first = bob.incoming(message)
        assert first is not None
        self.assertEqual(first["e2e"], {"ok": False, "reason": "no_key"})
        envelope = alice.olm.envelope("room_key", share, "bob", bob.device_id, bob.device.ed25519)
        inbox = {
            "type": "to_device",
            "stream": f"device:bob:{bob.device_id}",
            "id": 1,
            "ts": 2,
            "from": "alice",
            "from_device": alice.device_id,
            "body": {
                "algorithm": e2e.OLM,
                "sender_key": alice.device.curve25519,
                "ciphertext": alice.olm.encrypt(bob.device.curve25519, envelope),
            },
        }
        self.assertIsNone(bob.incoming(inbox))
        self.assertEqual([t["type"] for t in told], ["e2e_decrypted"])
        self.assertEqual(told[0]["event"]["body"], "arrived before its key")
        self.assertTrue(told[0]["event"]["e2e"]["ok"])

    def test_a_changed_room_message_reads_as_forged_not_as_old(self) -> None:
        import base64

        alice, bob = self.device("alice"), self.device("bob")
        alice.rooms.new_outbound("den", 0)
        share = alice.rooms.share("den")
        bob.rooms.receive(share, "alice", alice.device_id, alice.device.curve25519, alice.device.ed25519)
        session_id, ciphertext = alice.rooms.encrypt("den", "as sent")
        raw = bytearray(base64.b64decode(ciphertext + "=" * (-len(ciphertext) % 4)))
        raw[-1] ^= 1  # one bit of the signature
        changed = base64.b64encode(bytes(raw)).decode().rstrip("=")
        message = room_message(alice, 1, session_id, changed)
        shown = bob.incoming(message)
        assert shown is not None
        self.assertEqual(shown["e2e"], {"ok": False, "reason": "forged"})
        self.assertEqual(
            bob.incoming(dict(message, e2e=dict(message["e2e"], ciphertext=ciphertext)))["body"], "as sent"
        )
