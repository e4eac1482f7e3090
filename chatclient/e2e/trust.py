"""What this device knows of other devices, and how far it trusts them.

Devices are trusted on first use, as the server's key is: the first list
of a user's devices that this device sees is taken as theirs.  After
that, a device that appears, changes its keys or goes is a *notice* in
the conversation, and a device that was verified (by SAS) and then
changes blocks sending to that
user until the user has looked (``acknowledge``); a removed device that comes back
with other keys is a changed device too.  Every device entry's
signature is checked here, whatever the server says.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from chatclient.e2e.store import DeviceStore
from chatserver.wire import crypto, e2e

#: Signal's numeric fingerprint: iterations of SHA-512, and the digits.
_FINGERPRINT_ITERATIONS = 5200
_FINGERPRINT_VERSION = b"\x00\x00"


@dataclasses.dataclass(frozen=True)
class Notice:
    """Something the user should see about a user's devices: ``kind`` is
    ``new_device``, ``changed_device``, ``removed_device`` or
    ``bad_signature``."""

    kind: str
    user: str
    device: str
    name: str = ""
    blocking: bool = False

    def event(self) -> dict[str, Any]:
        """As the clients show it (an event of their own, not the server's)."""
        return {
            "type": "e2e_notice",
            "kind": self.kind,
            "user": self.user,
            "device": self.device,
            "name": self.name,
            "blocking": self.blocking,
        }


def entry_is_signed(user: str, entry: dict[str, Any]) -> bool:
    """Whether a ``devices`` entry carries the device's own valid signature."""
    try:
        content = e2e.device_content(user, entry["device"], entry["curve25519"], entry["ed25519"])
        return e2e.signed_by(entry["ed25519"], entry["signature"], content)
    except (KeyError, TypeError):
        return False


def safety_number(user: str, keys: list[str], peer: str, peer_keys: list[str]) -> str:
    """The safety number of two users: Signal's numeric fingerprint (30
    digits per side, the two sides sorted) over each user's name and the
    Ed25519 keys of all their devices, sorted.  It changes when either
    user's devices change; both users see the same 60 digits."""

    def side(name: str, ed_keys: list[str]) -> str:
        key = b"".join(sorted(e2e.b64decode(k) for k in ed_keys))
        digest = crypto.sha512(_FINGERPRINT_VERSION + key + name.encode("utf-8"))
        for _ in range(_FINGERPRINT_ITERATIONS - 1):
            digest = crypto.sha512(digest + key)
        return "".join(f"{int.from_bytes(digest[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5))

    first, second = sorted((side(user, keys), side(peer, peer_keys)))
    digits = first + second
    return " ".join(digits[i : i + 5] for i in range(0, 60, 5))


class DeviceBook:
    def __init__(self, store: DeviceStore) -> None:
        self.store = store

    def known(self, user: str) -> dict[str, dict[str, Any]]:
        """{device id: {"curve25519", "ed25519", "name", "verified", "removed"}}"""
        return dict(self.store.get(f"known:{user}", {}))

    def active(self, user: str) -> dict[str, dict[str, Any]]:
        return {d: entry for d, entry in self.known(user).items() if not entry.get("removed")}

    def update(
        self, user: str, listing: list[dict[str, Any]]
    ) -> tuple[dict[str, dict[str, Any]], list[Notice]]:
        """Take the server's list of ``user``'s devices: (the devices to
        use, each with a valid signature and keys this device accepts, and
        the notices to show)."""
        known = self.known(user)
        first_sight = not known
        notices: list[Notice] = []
        usable: dict[str, dict[str, Any]] = {}
        listed = set()
        for entry in listing:
            device = entry.get("device")
            if not isinstance(device, str):
                continue
            listed.add(device)
            if not entry_is_signed(user, entry):
                notices.append(Notice("bad_signature", user, device, str(entry.get("name", ""))))
                continue
            mine = known.get(device)
            name = str(entry.get("name", ""))
            if mine is not None and mine.get("removed"):
                if (mine["curve25519"], mine["ed25519"]) == (entry["curve25519"], entry["ed25519"]):
                    # Listed again as it was (a listing that missed it).
                    del mine["removed"]
                    usable[device] = mine
                    continue
                # A removed id never comes back on a real server: another
                # key under it is a substitution, like any changed key.
                blocking = bool(mine.get("verified"))
                notices.append(Notice("changed_device", user, device, name, blocking))
                if blocking:
                    self.store.put(f"blocked:{user}", True)
                continue
            if mine is None:
                known[device] = {
                    "curve25519": entry["curve25519"],
                    "ed25519": entry["ed25519"],
                    "name": name,
                    "verified": False,
                }
                if not first_sight:
                    notices.append(Notice("new_device", user, device, name))
            elif (mine["curve25519"], mine["ed25519"]) != (entry["curve25519"], entry["ed25519"]):
                # The server refuses this for a real device: whoever serves
                # this list is substituting keys.
                blocking = bool(mine.get("verified"))
                notices.append(Notice("changed_device", user, device, name, blocking))
                if blocking:
                    self.store.put(f"blocked:{user}", True)
                continue  # never use the substitute
            else:
                mine["name"] = name
            usable[device] = known[device]
        for device, mine in known.items():
            if device not in listed and not mine.get("removed"):
                mine["removed"] = True
                notices.append(Notice("removed_device", user, device, str(mine.get("name", ""))))
        self.store.put(f"known:{user}", known)
        return usable, notices

    def trust_of(self, user: str, device: str, curve: str, ed25519: str) -> str:
        """``verified``, ``unverified`` (trusted on first use), ``unknown``
        (not in any list seen), ``removed`` (no longer listed) or
        ``mismatch`` (other keys than the ones known for that device)."""
        mine = self.known(user).get(device)
        if mine is None:
            return "unknown"
        if (mine["curve25519"], mine["ed25519"]) != (curve, ed25519):
            return "mismatch"
        if mine.get("removed"):
            return "removed"
        return "verified" if mine.get("verified") else "unverified"

    def set_verified(self, user: str, device: str, ed25519: str, verified: bool = True) -> bool:
        """Mark a device verified (its Ed25519 key as checked); False if the
        key is not the one known for it."""
        known = self.known(user)
        mine = known.get(device)
        if mine is None or mine["ed25519"] != ed25519:
            return False
        mine["verified"] = verified
        self.store.put(f"known:{user}", known)
        return True

    def blocked(self, user: str) -> bool:
        return bool(self.store.get(f"blocked:{user}", False))

    def acknowledge(self, user: str) -> None:
        """The user has seen that a verified device of ``user`` changed."""
        self.store.delete(f"blocked:{user}")
