"""The encrypted room of ``fanout_r100_e2e``: the fan-out's members in an
end-to-end encrypted room, each connection a device, each sender with a
real Megolm session (vodozemac), so the server stores and fans out real
ciphertext, checked against the room's devices digest on every message,
exactly as it does for the clients.  Sampled receivers decrypt what they
time.  Room keys are not shared over Olm here: that is the clients'
business, measured on its own (``client_costs``)."""

from __future__ import annotations

import json
from typing import Any

import vodozemac

from chatclient.e2e.client import digest_of
from chatclient.e2e.device import Device
from chatserver.wire import e2e

ROOM = "sealed"


class Sealed:
    def __init__(self, devices: list[Device], digest: str) -> None:
        self.devices = devices
        self.digest = digest
        self.outbound = [vodozemac.GroupSession() for _ in devices]
        self.inbound = {
            session.session_id: vodozemac.InboundGroupSession(session.session_key)
            for session in self.outbound
        }

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
            await clients.wait(
                session.request({"type": "keys", "device": device.device_id, "identity": device.identity()}),
                "keys",
            )
            devices[id(session)] = device
        listing = (await clients.wait(senders[0].request({"type": "devices", "room": room}), "devices"))[
            "devices"
        ]
        return cls([devices[id(s)] for s in senders], digest_of(listing))

    def request(self, s: int, room: str, body: str) -> dict[str, Any]:
        device, session = self.devices[s], self.outbound[s]
        plaintext = e2e.canonical_json({"body": body, "room": room, "type": "msg"})
        return {
            "type": "say",
            "room": room,
            "e2e": {
                "algorithm": e2e.MEGOLM,
                "sender_key": device.curve25519,
                "device": device.device_id,
                "session_id": session.session_id,
                "ciphertext": session.encrypt(plaintext).to_base64(),
                "devices": self.digest,
            },
        }

    def body(self, event: dict[str, Any]) -> str:
        payload = event["e2e"]
        message = vodozemac.MegolmMessage.from_base64(payload["ciphertext"])
        text: str = json.loads(self.inbound[payload["session_id"]].decrypt(message).plaintext)["body"]
        return text
