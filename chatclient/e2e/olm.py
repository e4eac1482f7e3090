"""Olm between this device and each other device: the sessions, kept in
the store, and the signed envelope every Olm plaintext is (docs/protocol.rst,
"Olm payloads").

The envelope names its sender and recipient with their Ed25519 keys, so
a ciphertext cannot be passed off as from another device or replayed to
another recipient; vodozemac refuses a message whose key was used before.
"""

from __future__ import annotations

import json
from typing import Any

import vodozemac

from chatclient.e2e.device import Device
from chatclient.e2e.store import DeviceStore
from chatserver.wire import e2e

#: Sessions kept per peer device: the newest few (a peer that lost its
#: state starts a new one; an older one may still have messages in flight).
KEEP_SESSIONS = 4


class OlmError(Exception):
    """A message that does not decrypt, or whose envelope is wrong.
    ``reason`` is one word for the user interface."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class OlmSessions:
    def __init__(self, device: Device, store: DeviceStore, save_account: Any) -> None:
        self.device = device
        self.store = store
        #: Called after the account changed (a one-time key was used).
        self._save_account = save_account
        self._cache: dict[str, list[vodozemac.Session]] = {}

    # --- sessions -----------------------------------------------------------

    def _sessions(self, curve: str) -> list[vodozemac.Session]:
        sessions = self._cache.get(curve)
        if sessions is None:
            pickles = self.store.get(f"olm:{curve}", [])
            sessions = [vodozemac.Session.from_pickle(p, self.store.key) for p in pickles]
            self._cache[curve] = sessions
        return sessions

    def _save(self, curve: str) -> None:
        sessions = self._cache[curve][:KEEP_SESSIONS]
        self._cache[curve] = sessions
        self.store.put(f"olm:{curve}", [s.pickle(self.store.key) for s in sessions])

    def has_session(self, curve: str) -> bool:
        return bool(self._sessions(curve))

    def start(self, curve: str, one_time_key: str) -> None:
        """A new outbound session to the device with identity key ``curve``,
        on a one-time key the caller has checked the signature of."""
        session = self.device.account.create_outbound_session(
            vodozemac.Curve25519PublicKey.from_base64(curve),
            vodozemac.Curve25519PublicKey.from_base64(one_time_key),
        )
        self._sessions(curve).insert(0, session)
        self._save(curve)

    # --- envelopes ----------------------------------------------------------

    def envelope(
        self, kind: str, content: dict[str, Any], user: str, device: str, ed25519: str
    ) -> dict[str, Any]:
        return {
            "type": kind,
            "content": content,
            "sender": self.device.user,
            "sender_device": self.device.device_id,
            "keys": {"ed25519": self.device.ed25519},
            "recipient": user,
            "recipient_device": device,
            "recipient_keys": {"ed25519": ed25519},
        }

    def encrypt(self, curve: str, payload: dict[str, Any]) -> dict[str, Any]:
        """``{"type": 0 | 1, "body": base64}`` for the device ``curve``, on
        its newest session (one must exist: see ``start``)."""
        sessions = self._sessions(curve)
        message = sessions[0].encrypt(e2e.canonical_json(payload))
        kind, data = message.to_parts()
        self._save(curve)
        return {"type": kind, "body": e2e.b64encode(data)}

    def decrypt(self, curve: str, message: dict[str, Any]) -> dict[str, Any]:
        """The envelope of a message from the device ``curve``, checked to
        be for this device.  A pre-key message for no session we have
        starts one (using up a one-time key)."""
        try:
            data = e2e.b64decode(message["body"])
            kind = message["type"]
            sender = vodozemac.Curve25519PublicKey.from_base64(curve)
            any_message = vodozemac.AnyOlmMessage.from_parts(kind, data)
            pre_key = any_message.to_pre_key() if kind == 0 else None
        except (ValueError, KeyError, TypeError, vodozemac.DecodeException, vodozemac.KeyException):
            raise OlmError("malformed", "the Olm message is malformed") from None
        sessions = self._sessions(curve)
        plaintext: bytes | None = None
        for session in sessions:
            if pre_key is not None and not session.session_matches(pre_key):
                continue
            try:
                plaintext = session.decrypt(any_message)
            except vodozemac.OlmDecryptionException:
                if kind == 0:
                    raise OlmError("replayed", "the Olm message was decrypted before") from None
                continue
            break
        if plaintext is None:
            if pre_key is None:
                raise OlmError("no_session", "no Olm session with that device decrypts it")
            try:
                session, plaintext = self.device.account.create_inbound_session(sender, pre_key)
            except vodozemac.SessionCreationException:
                # Its one-time key is gone: used before (a replay) or never ours.
                raise OlmError(
                    "replayed", "the Olm message's one-time key is not (or no longer) ours"
                ) from None
            sessions.insert(0, session)
            self._save_account()
        else:
            # The session that decrypted it is the one to answer on.
            sessions.remove(session)
            sessions.insert(0, session)
        self._save(curve)
        try:
            payload = json.loads(plaintext)
        except ValueError:
            raise OlmError("malformed", "the Olm plaintext is not JSON") from None
        self._check_recipient(payload)
        return payload

    def _check_recipient(self, payload: Any) -> None:
        me = self.device
        if (
            not isinstance(payload, dict)
            or payload.get("recipient") != me.user
            or payload.get("recipient_device") != me.device_id
            or payload.get("recipient_keys") != {"ed25519": me.ed25519}
            or not isinstance(payload.get("keys"), dict)
            or not isinstance(payload.get("content"), dict)
        ):
            raise OlmError("misdirected", "the Olm message was not for this device")
