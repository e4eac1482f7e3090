"""End-to-end encryption: the formats both sides share (docs/protocol.rst,
"End-to-end encryption").

The server keeps a directory of devices (their public keys, signed by each
device's Ed25519 key) and stores and forwards ciphertext; the clients do
the encrypting with vodozemac (Olm and Megolm).  What both sides must
agree on byte for byte lives here: the canonical JSON that signatures
cover, the signed contents, the request members' shapes, and the digest
of a room's devices that an encrypted message is checked against.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any, Iterable

from chatserver.wire import crypto

#: The algorithms of the two payloads: Olm (direct messages and key
#: shares, one ciphertext per device) and Megolm (encrypted rooms, one
#: ciphertext per message).
OLM = "olm.v1"
MEGOLM = "megolm.v1"

#: What each signature is for, inside what it signs: a signature made for
#: one purpose is never valid for another.
USAGE_DEVICE = "chatserver.device.v1"
USAGE_ONE_TIME_KEY = "chatserver.one_time_key.v1"
USAGE_ROOM_KEY = "chatserver.room_key.v1"
USAGE_DEVICE_PROOF = "chatserver.device_proof.v1"

DEVICE_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
KEY_ID = re.compile(r"[A-Za-z0-9+/]{1,32}")
# Unpadded standard base64, as vodozemac writes it: 32 bytes are 43
# characters, a 64-byte signature 86.
B64 = re.compile(r"[A-Za-z0-9+/]*")
KEY_LENGTH = 43
SIGNATURE_LENGTH = 86
DIGEST = re.compile(r"[0-9a-f]{64}")

#: Bounds that keep every event that carries ciphertext within one record
#: (a stored event is a little larger than the request that made it).
MAX_CIPHERTEXT = 40000  # characters of ciphertext in one dm or say
MAX_ONE_TIME_KEYS = 50  # per keys request
MAX_LISTED = 100  # users per devices request, devices per claim, messages per to_device
MAX_TO_DEVICE_BODY = 16000  # characters of one to_device body, as compact JSON
MAX_DEVICE_NAME = 64
#: Bytes of JSON a client puts in one request that lists things (to_device's
#: messages), so that the request fits in a record at the default line
#: length (49135 bytes of plaintext) with room for its other members.
REQUEST_BUDGET = 48000


def batches(items: list[Any], most: int = MAX_LISTED, budget: int = REQUEST_BUDGET) -> Iterable[list[Any]]:
    """``items`` in order, cut into lists of at most ``most`` items and
    ``budget`` bytes of compact JSON (an item larger than that alone)."""
    batch: list[Any] = []
    used = 0
    for item in items:
        size = len(json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode("utf-8")) + 1
        if batch and (len(batch) == most or used + size > budget):
            yield batch
            batch, used = [], 0
        batch.append(item)
        used += size
    if batch:
        yield batch


def canonical_json(value: Any) -> bytes:
    """The bytes a signature covers: compact JSON with sorted keys, UTF-8,
    no escapes beyond JSON's own (so every implementation makes the same
    bytes from the same object)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def b64encode(data: bytes) -> str:
    """Unpadded standard base64 (RFC 4648, section 4, without ``=``)."""
    return base64.b64encode(data).decode("ascii").rstrip("=")


def b64decode(text: str) -> bytes:
    """The bytes of unpadded standard base64; ValueError if it is not."""
    if not B64.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise ValueError("not unpadded base64") from None


def device_content(user: str, device: str, curve25519: str, ed25519: str) -> bytes:
    """What a device's identity signature covers."""
    return canonical_json(
        {"curve25519": curve25519, "device": device, "ed25519": ed25519, "usage": USAGE_DEVICE, "user": user}
    )


def device_proof_content(user: str, device: str, challenge: str) -> bytes:
    """What a connection's proof that it holds the device's Ed25519 key
    covers: the challenge of its welcome, fresh for each login."""
    return canonical_json(
        {"challenge": challenge, "device": device, "usage": USAGE_DEVICE_PROOF, "user": user}
    )


def one_time_key_content(user: str, device: str, key_id: str, key: str, fallback: bool) -> bytes:
    """What the signature of a one-time key (or the fallback key) covers."""
    return canonical_json(
        {
            "device": device,
            "fallback": fallback,
            "key": key,
            "key_id": key_id,
            "usage": USAGE_ONE_TIME_KEY,
            "user": user,
        }
    )


def signed_by(ed25519: str, signature: str, content: bytes) -> bool:
    """Whether ``signature`` (base64) is ``ed25519``'s (base64) signature of
    ``content``."""
    try:
        return crypto.ed25519_verify(b64decode(ed25519), b64decode(signature), content)
    except ValueError:
        return False


def devices_digest(devices: Iterable[tuple[str, str, str]]) -> str:
    """The digest of a room's devices, each (user, device id, Curve25519
    key): SHA-256, in hex, of their lines ``user device key`` sorted and
    joined with newlines.  An encrypted message names the digest of the
    devices its sender shared the room key with; the server refuses it
    when that is not the room's devices now."""
    lines = sorted(f"{user} {device} {key}" for user, device, key in devices)
    return crypto.sha256("\n".join(lines).encode("utf-8")).hex()
