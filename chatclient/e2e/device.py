"""This device: its vodozemac ``Account`` (the Curve25519 and Ed25519
identity keys, one-time keys and the fallback key) and what it signs."""

from __future__ import annotations

import secrets
from typing import Any

import vodozemac

from chatserver.wire import e2e

#: Letters of a new device's id: ten of them, as Matrix makes them.
_ID_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def new_device_id() -> str:
    return "".join(secrets.choice(_ID_LETTERS) for _ in range(10))


class Device:
    def __init__(self, user: str, device_id: str, account: vodozemac.Account) -> None:
        self.user = user
        self.device_id = device_id
        self.account = account

    @classmethod
    def new(cls, user: str) -> Device:
        return cls(user, new_device_id(), vodozemac.Account())

    @property
    def curve25519(self) -> str:
        return str(self.account.curve25519_key.to_base64())

    @property
    def ed25519(self) -> str:
        return str(self.account.ed25519_key.to_base64())

    def sign(self, content: bytes) -> str:
        return str(self.account.sign(content).to_base64())

    def proof(self, challenge: str) -> str:
        """The ``proof`` member of the ``keys`` that declares this device on
        a connection: its signature over the welcome's challenge."""
        return self.sign(e2e.device_proof_content(self.user, self.device_id, challenge))

    def identity(self) -> dict[str, str]:
        """The ``identity`` member of ``keys``: the keys and their signature."""
        content = e2e.device_content(self.user, self.device_id, self.curve25519, self.ed25519)
        return {"curve25519": self.curve25519, "ed25519": self.ed25519, "signature": self.sign(content)}

    def _signed(self, key_id: str, key: Any, fallback: bool) -> dict[str, str]:
        text = key.to_base64()
        content = e2e.one_time_key_content(self.user, self.device_id, key_id, text, fallback)
        return {"key_id": key_id, "key": text, "signature": self.sign(content)}

    def one_time_keys(self, wanted: int) -> list[dict[str, str]]:
        """Up to ``wanted`` signed one-time keys not yet published (made now
        if need be): the account holds at most 50 at a time."""
        have = len(self.account.one_time_keys)
        room = self.account.max_number_of_one_time_keys - have
        if wanted > have and room > 0:
            self.account.generate_one_time_keys(min(wanted - have, room))
        keys = list(self.account.one_time_keys.items())[:wanted]
        return [self._signed(key_id, key, False) for key_id, key in keys]

    def fallback_key(self) -> dict[str, str]:
        """The signed fallback key, made if there is none unpublished."""
        # (vodozemac's type stubs lack the fallback key's two members.)
        account: Any = self.account
        if not account.fallback_key:
            account.generate_fallback_key()
        ((key_id, key),) = account.fallback_key.items()
        return self._signed(key_id, key, True)

    def published(self) -> None:
        """The server stored the keys: they are no longer offered again."""
        self.account.mark_keys_as_published()
