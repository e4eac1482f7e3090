"""The device directory of end-to-end encryption (docs/protocol.rst,
"End-to-end encryption").

Each client installation is a *device* of its account, with Curve25519 and
Ed25519 identity keys that it signed itself, one-time keys and a fallback
key for others to start Olm sessions with.  The server keeps the public
halves and hands them out; it checks every signature before it stores
anything (so the directory holds nothing a client would refuse), but the
clients check again, since they need not trust the server.  It never sees
a private key or a plaintext.
"""

from __future__ import annotations

from typing import Any, Sequence

from twisted.internet import defer
from twisted.internet.defer import Deferred

from chatserver.storage.interface import ClaimedKey, DeviceRecord, SignedKey, Storage
from chatserver.wire import e2e
from chatserver.wire.errors import Refused


class DeviceError(Refused):
    """A device request the directory refuses."""


#: put_device's refusals: (error code, field, message).
_REFUSALS = {
    "removed": ("device_removed", "device", "that device was removed; make a new one"),
    "unknown": ("unknown_device", "device", "a new device needs its identity keys"),
    "conflict": ("device_conflict", "identity", "that device exists with other identity keys"),
    "too_many_devices": ("too_many_devices", "device", "the account has as many devices as it may"),
    "too_many_keys": ("too_many_keys", "one_time_keys", "the device holds as many one-time keys as it may"),
}


def device_entry(record: DeviceRecord) -> dict[str, Any]:
    """A device as the ``devices`` answer lists it."""
    return {
        "device": record.device,
        "name": record.name,
        "curve25519": record.curve25519,
        "ed25519": record.ed25519,
        "signature": record.signature,
        "created": record.created_at,
    }


def claimed_entry(key: ClaimedKey) -> dict[str, Any]:
    return {
        "user": key.user,
        "device": key.device,
        "key_id": key.key_id,
        "key": key.key,
        "signature": key.signature,
        "fallback": key.fallback,
    }


class DeviceDirectory:
    def __init__(self, storage: Storage, clock: Any, max_devices: int = 20, max_keys: int = 100) -> None:
        self.storage = storage
        self._clock = clock
        self.max_devices = max_devices
        self.max_keys = max_keys

    def _now(self) -> int:
        return int(self._clock.seconds() * 1000)

    @defer.inlineCallbacks
    def upload(
        self,
        user: str,
        device: str,
        name: str | None,
        identity: dict[str, str] | None,
        one_time_keys: Sequence[dict[str, str]],
        fallback: dict[str, str] | None,
        challenge: str | None = None,
        proof: str | None = None,
    ) -> Any:
        """Add or update a device; fires with (how many one-time keys it has
        on the server now, whether it is new).  Every signature is checked
        first, in the order of the request's members: the identity's, then
        with a ``challenge`` (the connection declares the device) the
        ``proof`` over it, then each key's."""
        known = yield self.storage.devices([user])
        record = next((d for d in known.get(user, ()) if d.device == device), None)
        if identity is not None:
            content = e2e.device_content(user, device, identity["curve25519"], identity["ed25519"])
            if not e2e.signed_by(identity["ed25519"], identity["signature"], content):
                raise DeviceError("bad_signature", "the identity's signature is not valid", "identity")
            signer = identity["ed25519"]
        elif record is None:
            # A removed device's id is refused below, by the storage.
            signer = ""
        else:
            signer = record.ed25519
        if challenge is not None and signer:
            if proof is None:
                raise DeviceError("missing_field", "declaring a device needs its proof", "proof")
            if not e2e.signed_by(signer, proof, e2e.device_proof_content(user, device, challenge)):
                raise DeviceError("bad_signature", "the proof is not the device's signature", "proof")
        keys: list[SignedKey] = []
        for field, items, is_fallback in (
            ("one_time_keys", one_time_keys, False),
            ("fallback_key", [fallback] if fallback is not None else [], True),
        ):
            for key in items:
                content = e2e.one_time_key_content(user, device, key["key_id"], key["key"], is_fallback)
                if signer and not e2e.signed_by(signer, key["signature"], content):
                    raise DeviceError("bad_signature", f"a key's signature is not valid ({field})", field)
                if not is_fallback:
                    keys.append((key["key_id"], key["key"], key["signature"]))
        claimed_fallback = (
            (fallback["key_id"], fallback["key"], fallback["signature"]) if fallback is not None else None
        )
        triple = (
            (identity["curve25519"], identity["ed25519"], identity["signature"])
            if identity is not None
            else None
        )
        status, count = yield self.storage.put_device(
            user, device, name, triple, keys, claimed_fallback, self._now(), self.max_devices, self.max_keys
        )
        if status != "ok":
            code, field, message = _REFUSALS[status]
            raise DeviceError(code, message, field)
        return count, record is None

    def listing(self, users: Sequence[str]) -> Deferred[dict[str, list[dict[str, Any]]]]:
        """Every one of ``users`` with its devices (an empty list for a user
        with none, or no such user: the answer does not tell them apart)."""
        d = self.storage.devices(users)
        return d.addCallback(
            lambda found: {user: [device_entry(r) for r in found.get(user, [])] for user in users}
        )

    def keys_of(self, users: Sequence[str]) -> Deferred[dict[str, dict[str, str]]]:
        """{user: {device: Curve25519 key}}: where an encrypted message must go."""
        d = self.storage.devices(users)
        return d.addCallback(
            lambda found: {user: {r.device: r.curve25519 for r in found.get(user, [])} for user in users}
        )

    def claim(self, wanted: Sequence[tuple[str, str]]) -> Deferred[list[dict[str, Any]]]:
        return self.storage.claim_keys(wanted).addCallback(lambda keys: [claimed_entry(k) for k in keys])

    def remove(self, user: str, device: str, audit: Any) -> Deferred[bool]:
        return self.storage.remove_device(user, device, self._now(), audit)
