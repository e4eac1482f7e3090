"""Megolm for encrypted rooms: this device's outbound session per room,
the inbound sessions of every sender, the rotation rules and the replay
check (docs/protocol.rst, "Encrypted rooms").

Each sending device has its own outbound session in a room and shares
its key (at the index it has reached, so no earlier message opens) with
every member device, over Olm.  A new session is made when a device it
was shared with is no longer among the room's (its user left, was
removed, or removed the device), after ``ROTATE_MESSAGES`` messages, and
after ``ROTATE_MS``.
"""

from __future__ import annotations

import collections
import json
from typing import Any

import vodozemac

from chatclient.e2e.device import Device
from chatclient.e2e.store import DeviceStore
from chatserver.wire import e2e

ROTATE_MESSAGES = 100
#: Inbound sessions kept open in memory, the most recently used: a session
#: rotates every 100 messages per sender, so a long-running client in busy
#: rooms would otherwise keep thousands (the store has them all).
INBOUND_CACHE = 500
ROTATE_MS = 7 * 24 * 3600 * 1000


class MegolmError(Exception):
    """A room message that cannot be read; ``reason`` is one word."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def room_key_content(room: str, session_id: str, session_key: str, sender: str, sender_device: str) -> bytes:
    """What the signature of a room key share covers."""
    return e2e.canonical_json(
        {
            "room": room,
            "sender": sender,
            "sender_device": sender_device,
            "session_id": session_id,
            "session_key": session_key,
            "usage": e2e.USAGE_ROOM_KEY,
        }
    )


class RoomKeys:
    def __init__(self, device: Device, store: DeviceStore) -> None:
        self.device = device
        self.store = store
        #: Inbound sessions unpickled, by id: every message of a room
        #: would otherwise open its session from the store again.
        self._inbound: collections.OrderedDict[str, tuple[vodozemac.InboundGroupSession, dict[str, Any]]] = (
            collections.OrderedDict()
        )
        self.inbound_cache = INBOUND_CACHE

    # --- this device's outbound sessions ---------------------------------

    def outbound(self, room: str) -> dict[str, Any] | None:
        state: dict[str, Any] | None = self.store.get(f"outbound:{room}")
        return state

    def must_rotate(self, room: str, now: int, devices: set[str]) -> bool:
        """Whether the next message needs a new session: none yet, or one
        shared with a device no longer in ``devices`` ("user device"), or
        used ``ROTATE_MESSAGES`` times, or older than ``ROTATE_MS``."""
        state = self.outbound(room)
        if state is None or state.get("rotate"):
            return True
        if state["count"] >= ROTATE_MESSAGES or now - state["created"] >= ROTATE_MS:
            return True
        return bool(set(state["shared"]) - devices)

    def rotate_later(self, room: str) -> None:
        """Someone left: the next message starts a new session."""
        state = self.outbound(room)
        if state is not None:
            state["rotate"] = True
            self.store.put(f"outbound:{room}", state)

    def new_outbound(self, room: str, now: int) -> str:
        """A new session for ``room``; its key also opens this device's own
        messages (kept as an inbound session).  Fires with its id."""
        session = vodozemac.GroupSession()
        state = {"pickle": session.pickle(self.store.key), "created": now, "count": 0, "shared": []}
        with self.store.transaction():
            self.store.put(f"outbound:{room}", state)
            self._add_inbound(
                room,
                session.session_key.to_base64(),
                self.device.user,
                self.device.device_id,
                self.device.curve25519,
                self.device.ed25519,
            )
        return str(session.session_id)

    def share(self, room: str) -> dict[str, Any]:
        """The ``room_key`` content for devices that are to read from now on:
        the session key at its current index, signed by this device."""
        state = self.outbound(room)
        assert state is not None
        session = vodozemac.GroupSession.from_pickle(state["pickle"], self.store.key)
        key = session.session_key.to_base64()
        content = room_key_content(room, session.session_id, key, self.device.user, self.device.device_id)
        return {
            "room": room,
            "session_id": session.session_id,
            "session_key": key,
            "signature": self.device.sign(content),
        }

    def shared_with(self, room: str) -> set[str]:
        state = self.outbound(room)
        return set(state["shared"]) if state is not None else set()

    def mark_shared(self, room: str, devices: list[str]) -> None:
        state = self.outbound(room)
        assert state is not None
        state["shared"] = sorted(set(state["shared"]) | set(devices))
        self.store.put(f"outbound:{room}", state)

    def encrypt(self, room: str, body: str) -> tuple[str, str]:
        """(session id, ciphertext) of a message in ``room``."""
        state = self.outbound(room)
        assert state is not None
        session = vodozemac.GroupSession.from_pickle(state["pickle"], self.store.key)
        plaintext = e2e.canonical_json({"type": "msg", "room": room, "body": body})
        message = session.encrypt(plaintext)
        state["pickle"] = session.pickle(self.store.key)
        state["count"] += 1
        self.store.put(f"outbound:{room}", state)
        return str(session.session_id), str(message.to_base64())

    # --- everyone's inbound sessions ---------------------------------------

    def _add_inbound(self, room: str, key: str, sender: str, device: str, curve: str, ed25519: str) -> None:
        session = vodozemac.InboundGroupSession(vodozemac.SessionKey(key))
        name = f"inbound:{session.session_id}"
        known = self.store.get(name)
        if known is not None:
            if (known["sender"], known["device"], known["room"]) != (sender, device, room):
                raise MegolmError("conflict", "a session of that id belongs to another sender")
            old = vodozemac.InboundGroupSession.from_pickle(known["pickle"], self.store.key)
            if old.first_known_index <= session.first_known_index:
                return  # what we have opens as much or more
        self._inbound.pop(str(session.session_id), None)
        self.store.put(
            name,
            {
                "pickle": session.pickle(self.store.key),
                "room": room,
                "sender": sender,
                "device": device,
                "curve25519": curve,
                "ed25519": ed25519,
            },
        )

    def receive(self, content: dict[str, Any], sender: str, device: str, curve: str, ed25519: str) -> str:
        """A ``room_key`` from the device (``curve``, ``ed25519``) that the
        Olm envelope came from: its signature checked, kept.  The room id."""
        try:
            room, session_id, key = content["room"], content["session_id"], content["session_key"]
            signed = room_key_content(room, session_id, key, sender, device)
            ok = e2e.signed_by(ed25519, content["signature"], signed)
        except (KeyError, TypeError):
            ok = False
        if not ok:
            raise MegolmError("bad_signature", "a room key's signature is not its sender's")
        try:
            self._add_inbound(room, key, sender, device, curve, ed25519)
        except (vodozemac.SessionKeyDecodeException, ValueError):
            raise MegolmError("malformed", "a room key does not decode") from None
        return str(room)

    def export(self) -> list[dict[str, Any]]:
        """Every inbound session, exported at its first known index."""
        sessions = []
        for name, value in self.store.items("inbound:"):
            session = vodozemac.InboundGroupSession.from_pickle(value["pickle"], self.store.key)
            exported = session.export_at(session.first_known_index)
            sessions.append(
                {
                    "session_id": name.split(":", 1)[1],
                    "room": value["room"],
                    "sender": value["sender"],
                    "device": value["device"],
                    "curve25519": value["curve25519"],
                    "ed25519": value["ed25519"],
                    "key": exported.to_base64() if exported is not None else None,
                }
            )
        return [s for s in sessions if s["key"] is not None]

    def import_sessions(self, sessions: list[dict[str, Any]]) -> int:
        """Sessions from ``export`` (of this user's other device): how many
        were new or opened more than ours."""
        count = 0
        for item in sessions:
            session = vodozemac.InboundGroupSession.import_session(vodozemac.ExportedSessionKey(item["key"]))
            name = f"inbound:{session.session_id}"
            known = self.store.get(name)
            if known is not None:
                old = vodozemac.InboundGroupSession.from_pickle(known["pickle"], self.store.key)
                if old.first_known_index <= session.first_known_index:
                    continue
            self._inbound.pop(str(session.session_id), None)
            self.store.put(
                name,
                {
                    "pickle": session.pickle(self.store.key),
                    "room": item["room"],
                    "sender": item["sender"],
                    "device": item["device"],
                    "curve25519": item["curve25519"],
                    "ed25519": item["ed25519"],
                },
            )
            count += 1
        return count

    def decrypt(self, event: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """(the body, the session's sender facts) of a room ``msg`` whose
        ``e2e`` is Megolm: refused if its session is unknown, of another
        room or sender, or if its index was seen on another event."""
        payload = event["e2e"]
        session_id = str(payload.get("session_id"))
        cached = self._inbound.get(session_id)
        if cached is None:
            known = self.store.get(f"inbound:{session_id}")
            if known is None:
                raise MegolmError("no_key", "the room key of this message has not arrived")
            cached = self._inbound[session_id] = (
                vodozemac.InboundGroupSession.from_pickle(known["pickle"], self.store.key),
                known,
            )
            if len(self._inbound) > self.inbound_cache:
                self._inbound.popitem(last=False)  # read again from the store at need
        else:
            self._inbound.move_to_end(session_id)
        session, known = cached
        if known["room"] != event.get("room") or known["sender"] != event.get("from"):
            raise MegolmError("wrong_sender", "the message's session is another sender's or room's")
        try:
            message = vodozemac.MegolmMessage.from_base64(payload["ciphertext"])
            decrypted = session.decrypt(message)
        except vodozemac.MegolmDecryptionException as e:
            if "signature" in str(e).lower() or "mac" in str(e).lower():
                # Not what the session's owner sent: a forgery, not history.
                raise MegolmError("forged", "the message is not signed by its session's sender") from None
            raise MegolmError("undecryptable", "the message is from before this device got the key") from None
        except (vodozemac.DecodeException, KeyError, TypeError, ValueError):
            raise MegolmError("malformed", "the Megolm message is malformed") from None
        seen_name = f"seen:{payload['session_id']}:{decrypted.message_index}"
        here = f"{event.get('stream')}:{event.get('id')}"
        seen = self.store.get(seen_name)
        if seen is None:
            self.store.put(seen_name, here)
        elif seen != here:
            raise MegolmError("replayed", "this message index was used by another event")
        try:
            inner = json.loads(decrypted.plaintext)
        except ValueError:
            raise MegolmError("malformed", "the Megolm plaintext is not JSON") from None
        if (
            not isinstance(inner, dict)
            or inner.get("room") != event.get("room")
            or inner.get("type") != "msg"
        ):
            raise MegolmError("wrong_room", "the message was encrypted for another room")
        body = inner.get("body")
        if not isinstance(body, str):
            raise MegolmError("malformed", "the Megolm plaintext has no body")
        return body, known
