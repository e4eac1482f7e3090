"""The encrypted room of ``fanout_r100_e2e``: the fan-out's members in an
end-to-end encrypted room, each connection a device, each sender with a
real Megolm session (vodozemac), so the server stores and fans out real
ciphertext, checked against the room's devices digest on every message,
exactly as it does for the clients.  Room keys are not shared over Olm
here: that is the clients' business, measured on its own
(``bench/client_costs.py``).

The generator must not be what is measured: decrypting every message at
every sampled receiver cost it more than its core.  So a sampled
receiver reads the body its sender kept for that ciphertext, and one
message in ``CHECK_EVERY`` is decrypted for real and compared."""

from __future__ import annotations

import json
from typing import Any

import vodozemac

from chatclient.e2e.client import digest_of
from chatclient.e2e.device import Device
from chatserver.wire import e2e

ROOM = "sealed"
CHECK_EVERY = 100
#: Ciphertexts whose bodies the senders keep for the sampled receivers.
KEPT = 200_000


class Sealed:
    def __init__(self, devices: list[Device], digest: str) -> None:
        self.devices = devices
        self.digest = digest
        self.outbound = [vodozemac.GroupSession() for _ in devices]
        self.inbound = {s.session_id: vodozemac.InboundGroupSession(s.session_key) for s in self.outbound}
        self.sent: dict[str, str] = {}
        self.reads = 0

    @classmethod
    async def make(cls, clients: Any, receivers: list[Any], senders: list[Any], room: str) -> Sealed:
        everyone = receivers + senders
        await clients.wait(senders[0].request({"type": "create", "room": room, "encrypted": True}), "create")
        for session in everyone:
            if session is not senders[0]:
                await clients.wait(session.request({"type": "join", "room": room}), "join")
        devices = {}
        for session in everyone:
            device = Device.new(session.user)
            declare = {
                "type": "keys",
                "device": device.device_id,
                "identity": device.identity(),
                "proof": device.proof(session.device_challenge),
            }
            await clients.wait(session.request(declare), "keys")
            devices[id(session)] = device
        listing: dict[str, Any] = {}
        request: dict[str, Any] = {"type": "devices", "room": room}
        while True:  # the listing comes in pages
            page = await clients.wait(senders[0].request(request), "devices")
            listing.update(page["devices"])
            if not page["more"]:
                break
            request["after"] = max(page["devices"])
        return cls([devices[id(s)] for s in senders], digest_of(listing))

    def request(self, s: int, room: str, body: str) -> dict[str, Any]:
        device, session = self.devices[s], self.outbound[s]
        plaintext = e2e.canonical_json({"body": body, "room": room, "type": "msg"})
        ciphertext = session.encrypt(plaintext).to_base64()
        self.sent[ciphertext] = body
        if len(self.sent) > KEPT:
            del self.sent[next(iter(self.sent))]
        return {
            "type": "say",
            "room": room,
            "e2e": {
                "algorithm": e2e.MEGOLM,
                "sender_key": device.curve25519,
                "device": device.device_id,
                "session_id": session.session_id,
                "ciphertext": ciphertext,
                "devices": self.digest,
            },
        }

    def body(self, event: dict[str, Any]) -> str:
        payload = event["e2e"]
        kept = self.sent[payload["ciphertext"]]
        self.reads += 1
        if self.reads % CHECK_EVERY == 0:
            message = vodozemac.MegolmMessage.from_base64(payload["ciphertext"])
            text = json.loads(self.inbound[payload["session_id"]].decrypt(message).plaintext)["body"]
            if text != kept:
                raise ValueError("a ciphertext does not decrypt to what was sent")
        return kept
