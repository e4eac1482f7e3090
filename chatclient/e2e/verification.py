"""Verifying another device by SAS (short authentication strings), on
vodozemac's ``Sas``: both users compare seven emoji (or three numbers)
that the two devices derived from an X25519 exchange; if they match, no
one (the server included) sat in the middle, and each device checks the
other's Ed25519 key by a MAC under the shared secret.

The steps (docs/protocol.rst, "Verification"), carried in device inboxes
as ``{"verify": {...}}``, with the same ``txn`` throughout:

1. the initiator: ``start``;
2. the responder: ``accept``, with a commitment to its SAS key (the
   SHA-256 of its key and the ``start``), so it cannot choose its key
   after seeing the initiator's;
3. the initiator: ``key``; 4. the responder: ``key`` (the initiator
   checks the commitment);
5. each user compares the emoji and says whether they match: on a match
   the device sends ``mac``; on no match, ``cancel`` (``mismatch``);
6. each device checks the other's ``mac`` against the Ed25519 key it
   knows for that device: if it is right, the device is verified.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import vodozemac

from chatclient.e2e.device import Device
from chatclient.e2e.trust import DeviceBook
from chatserver.wire import crypto, e2e

SAS_INFO = "CHATSERVER_SAS_V1"
#: Exchanges open at once (a flood of starts is not answered), finished
#: ones remembered, and the longest ``txn``.
MAX_OPEN = 8
KEEP_FINISHED = 16
MAX_TXN = 64
MAC_INFO = "CHATSERVER_SAS_MAC_V1"

#: The 64 SAS emoji and their names, as the Matrix specification numbers
#: them (so a user comparing with a Matrix client's list sees the same).
EMOJI = [
    ("🐶", "Dog"), ("🐱", "Cat"), ("🦁", "Lion"), ("🐎", "Horse"), ("🦄", "Unicorn"), ("🐷", "Pig"),
    ("🐘", "Elephant"), ("🐰", "Rabbit"), ("🐼", "Panda"), ("🐓", "Rooster"), ("🐧", "Penguin"),
    ("🐢", "Turtle"), ("🐟", "Fish"), ("🐙", "Octopus"), ("🦋", "Butterfly"), ("🌷", "Flower"),
    ("🌳", "Tree"), ("🌵", "Cactus"), ("🍄", "Mushroom"), ("🌏", "Globe"), ("🌙", "Moon"),
    ("☁️", "Cloud"), ("🔥", "Fire"), ("🍌", "Banana"), ("🍎", "Apple"), ("🍓", "Strawberry"),
    ("🌽", "Corn"), ("🍕", "Pizza"), ("🎂", "Cake"), ("❤️", "Heart"), ("😀", "Smiley"), ("🤖", "Robot"),
    ("🎩", "Hat"), ("👓", "Glasses"), ("🔧", "Spanner"), ("🎅", "Santa"), ("👍", "Thumbs Up"),
    ("☂️", "Umbrella"), ("⌛", "Hourglass"), ("⏰", "Clock"), ("🎁", "Gift"), ("💡", "Light Bulb"),
    ("📕", "Book"), ("✏️", "Pencil"), ("📎", "Paperclip"), ("✂️", "Scissors"), ("🔒", "Lock"),
    ("🔑", "Key"), ("🔨", "Hammer"), ("☎️", "Telephone"), ("🏁", "Flag"), ("🚂", "Train"),
    ("🚲", "Bicycle"), ("✈️", "Aeroplane"), ("🚀", "Rocket"), ("🏆", "Trophy"), ("⚽", "Ball"),
    ("🎸", "Guitar"), ("🎺", "Trumpet"), ("🔔", "Bell"), ("⚓", "Anchor"), ("🎧", "Headphones"),
    ("📁", "Folder"), ("📌", "Pin"),
]  # fmt: skip


@dataclasses.dataclass
class Exchange:
    """One verification in progress."""

    txn: str
    user: str
    device: str
    initiator: bool
    sas: Any = None
    established: Any = None
    start: dict[str, Any] | None = None
    commitment: str | None = None
    their_key: str | None = None
    confirmed: bool = False
    their_mac: dict[str, Any] | None = None
    state: str = "started"


def _commitment(key: str, start: dict[str, Any]) -> str:
    return e2e.b64encode(crypto.sha256(key.encode("ascii") + e2e.canonical_json(start)))


class Verifications:
    def __init__(
        self,
        device: Device,
        book: DeviceBook,
        send: Callable[[str, str, dict[str, Any]], Any],
        emit: Callable[[dict[str, Any]], None],
    ) -> None:
        """``send(user, device, body)`` puts a message in that device's
        inbox; ``emit(event)`` tells the front ends."""
        self.device = device
        self.book = book
        self._send = send
        self._emit = emit
        self.exchanges: dict[str, Exchange] = {}

    def _tell(self, x: Exchange, **extra: Any) -> None:
        event = {
            "type": "e2e_verify",
            "txn": x.txn,
            "user": x.user,
            "device": x.device,
            "state": x.state,
            "initiator": x.initiator,
        }
        event.update(extra)
        self._emit(event)

    def _message(self, x: Exchange, step: str, **content: Any) -> None:
        self._send(x.user, x.device, {"verify": dict(content, step=step, txn=x.txn)})

    # --- what the user does -------------------------------------------------

    def start(self, user: str, device: str) -> str:
        txn = e2e.b64encode(crypto.random_bytes(12))
        x = self.exchanges[txn] = Exchange(txn, user, device, initiator=True)
        x.start = {"step": "start", "txn": txn, "from_device": self.device.device_id}
        self._send(user, device, {"verify": x.start})
        self._tell(x)
        return txn

    def confirm(self, txn: str, match: bool) -> None:
        """The user compared the emoji (or numbers): they match, or not."""
        x = self.exchanges.get(txn)
        if x is None or x.established is None or x.state not in ("sas",):
            return
        if not match:
            self._cancel(x, "mismatch", tell_peer=True)
            return
        x.confirmed = True
        me = self.device
        info = self._mac_info(me.user, me.device_id, x.user, x.device, x.txn)
        key_id = f"ed25519:{me.device_id}"
        self._message(
            x,
            "mac",
            mac=x.established.calculate_mac(me.ed25519, info + key_id),
            keys=x.established.calculate_mac(key_id, info + "KEY_IDS"),
        )
        x.state = "confirmed"
        self._tell(x)
        self._check_mac(x)

    def cancel(self, txn: str) -> None:
        x = self.exchanges.get(txn)
        if x is not None:
            self._cancel(x, "user", tell_peer=True)

    # --- what the other device sends --------------------------------------------

    def received(self, sender: str, sender_device: str, content: Any) -> None:
        if not isinstance(content, dict) or not isinstance(content.get("txn"), str):
            return
        step, txn = content.get("step"), content["txn"]
        if not 1 <= len(txn) <= MAX_TXN:
            return
        x = self.exchanges.get(txn)
        if step == "start" and x is None:
            self._forget_finished()
            if sum(1 for e in self.exchanges.values() if e.state not in ("done", "cancelled")) >= MAX_OPEN:
                return  # a flood of starts gets no answers
            self._started(sender, sender_device, content)
            return
        if x is None or (x.user, x.device) != (sender, sender_device) or x.state in ("done", "cancelled"):
            return
        try:
            if step == "key" and x.initiator and x.commitment is None:
                raise ValueError("a key before the accept")
            if step == "accept" and x.initiator and x.commitment is None:
                x.commitment = str(content["commitment"])
                x.sas = vodozemac.Sas()
                self._message(x, "key", key=x.sas.public_key.to_base64())
            elif step == "key" and x.their_key is None:
                self._their_key(x, str(content["key"]))
            elif step == "mac" and x.their_mac is None:
                x.their_mac = content
                self._check_mac(x)
            elif step == "cancel":
                self._cancel(x, str(content.get("code", "cancelled"))[:40], tell_peer=False)
            elif step == "done":
                pass
        except Exception:  # any step out of order or malformed ends the exchange
            self._cancel(x, "malformed", tell_peer=True)

    def _started(self, sender: str, sender_device: str, start: dict[str, Any]) -> None:
        x = self.exchanges[start["txn"]] = Exchange(start["txn"], sender, sender_device, initiator=False)
        x.start = start
        x.sas = vodozemac.Sas()
        self._message(x, "accept", commitment=_commitment(x.sas.public_key.to_base64(), start))
        self._tell(x)

    def _forget_finished(self) -> None:
        finished = [t for t, e in self.exchanges.items() if e.state in ("done", "cancelled")]
        for txn in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self.exchanges[txn]

    def _their_key(self, x: Exchange, key: str) -> None:
        if x.sas is None or x.start is None:
            raise ValueError("a key before the exchange began")
        mine = x.sas.public_key.to_base64()
        if x.initiator and _commitment(key, x.start) != x.commitment:
            self._cancel(x, "commitment", tell_peer=True)
            return
        x.their_key = key
        x.established = x.sas.diffie_hellman(vodozemac.Curve25519PublicKey.from_base64(key))
        if not x.initiator:
            self._message(x, "key", key=mine)
        me = self.device
        first = (me.user, me.device_id, mine) if x.initiator else (x.user, x.device, key)
        second = (x.user, x.device, key) if x.initiator else (me.user, me.device_id, mine)
        info = "|".join([SAS_INFO, *first, *second, x.txn])
        sas_bytes = x.established.bytes(info)
        emoji = [list(EMOJI[i]) for i in sas_bytes.emoji_indices]
        x.state = "sas"
        self._tell(x, emoji=emoji, decimals=list(sas_bytes.decimals))

    @staticmethod
    def _mac_info(user: str, device: str, peer: str, peer_device: str, txn: str) -> str:
        return "|".join([MAC_INFO, user, device, peer, peer_device, txn]) + "|"

    def _check_mac(self, x: Exchange) -> None:
        if not x.confirmed or x.their_mac is None or x.established is None:
            return
        known = self.book.known(x.user).get(x.device)
        if known is None:
            self._cancel(x, "unknown_device", tell_peer=True)
            return
        me = self.device
        info = self._mac_info(x.user, x.device, me.user, me.device_id, x.txn)
        key_id = f"ed25519:{x.device}"
        try:
            x.established.verify_mac(key_id, info + "KEY_IDS", str(x.their_mac["keys"]))
            x.established.verify_mac(known["ed25519"], info + key_id, str(x.their_mac["mac"]))
        except (vodozemac.SasException, KeyError, TypeError):
            # The emoji matched, but the key this device knows is not the
            # one the other device has: the directory gave a false key.
            self._cancel(x, "key_mismatch", tell_peer=True)
            return
        self.book.set_verified(x.user, x.device, known["ed25519"])
        x.state = "done"
        self._message(x, "done")
        self._tell(x)

    def _cancel(self, x: Exchange, code: str, tell_peer: bool) -> None:
        if x.state in ("done", "cancelled"):
            return
        x.state = "cancelled"
        if tell_peer:
            self._message(x, "cancel", code=code)
        self._tell(x, code=code)
