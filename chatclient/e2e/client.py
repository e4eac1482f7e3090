"""End-to-end encryption for one logged-in device, over a client
connection (``ReconnectingClient``): what it asks of the server, and
what becomes of the events it gets.

- At every connection: declare this device (``keys``), with its identity
  and enough one-time keys; its inbox (room keys, verification) follows.
- Sending a direct message: the devices of both users from the server,
  each checked (signature, trust), an Olm session with every one (a
  claimed one-time key, its signature checked), one ciphertext each.
- Sending in an encrypted room: this device's Megolm session, rotated by
  the rules of ``megolm``, its key shared over Olm with every member
  device that lacks it, then one ciphertext.
- Receiving: a direct message or room message is decrypted (and the
  plaintext kept, so history reads again after a restart); what cannot
  be read says why, in place of its body.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import vodozemac
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from chatclient.e2e.device import Device
from chatclient.e2e.megolm import MegolmError, RoomKeys
from chatclient.e2e.olm import OlmError, OlmSessions
from chatclient.e2e.store import PASSPHRASE_LOG2_N, DeviceStore, StoreError, StoreKey
from chatclient.e2e.trust import DeviceBook, Notice, safety_number
from chatclient.e2e.verification import Verifications
from chatserver.wire import crypto, e2e

if TYPE_CHECKING:
    from chatclient.reconnect import ReconnectingClient
    from chatclient.session import ChatSession

log = Logger(namespace="chatclient.e2e")

#: One-time keys this device keeps on the server, and the level at which
#: it tops them up.
ONE_TIME_KEYS = 50
TOP_UP_BELOW = 25
#: Room messages kept waiting for their keys, in all.
AWAIT_KEY_MAX = 1000
#: How often a device replaces its fallback key.
FALLBACK_ROTATION_MS = 7 * 24 * 3600 * 1000
#: How often a message is encrypted again when the server says the
#: devices changed meanwhile.
RETRIES = 3
#: The most pages of one devices listing read (a bound, far above a room of
#: 1000 members with 20 devices each).
MAX_PAGES = 1000

#: The associated data of a key export's seal.
EXPORT_AAD = b"chatserver-key-export-v1"

#: Why a message reads as it does, in place of its body.
REASONS = {
    "before_device": "sent before this device was added",
    "not_for_device": "not encrypted for this device",
    "no_key": "the room key of this message is not on this device",
    "undecryptable": "sent before this device could read the room",
    "forged": "refused: not what its sender's device sent (a forged message)",
    "replayed": "refused: a replayed message",
    "misdirected": "refused: this message was meant for another device",
    "wrong_sender": "refused: not encrypted by its sender",
    "not_member": "refused: its sender was not a member then",
    "mismatch": "refused: the sender's device keys do not match",
    "malformed": "could not be read: malformed",
    "no_session": "could not be read: no session with the sender's device",
    "conflict": "refused: the room key belongs to another sender",
    "bad_signature": "refused: a bad signature",
    "wrong_room": "refused: encrypted for another room",
}


class SendBlocked(Exception):
    """Sending to this user is held back: a verified device of theirs
    changed (the user must look first, ``acknowledge``), or they have no
    device that can read an encrypted message."""


def digest_of(listing: dict[str, list[dict[str, Any]]]) -> str:
    return e2e.devices_digest(
        (user, entry["device"], entry["curve25519"]) for user, entries in listing.items() for entry in entries
    )


class EndToEnd:
    def __init__(self, store: DeviceStore, user: str, clock: Any) -> None:
        self.store = store
        self.user = user
        self._clock = clock
        saved = store.get("account")
        if saved is None:
            self.device = Device.new(user)
            self.created = self._now()
            self._save_account()
        else:
            account = vodozemac.Account.from_pickle(saved["pickle"], store.key)
            self.device = Device(user, saved["device"], account)
            self.created = int(saved["created"])
        self.book = DeviceBook(store)
        self._build()
        self.client: ReconnectingClient | None = None
        #: Where the store's key is kept (``keyring`` or ``passphrase``), as
        #: whoever opened the store says.
        self.store_key_method = "passphrase"
        #: Events the front ends should see that are no server's: notices.
        self.emit: Callable[[dict[str, Any]], None] = lambda event: None
        #: Room devices as the server listed them (per room), until a change.
        self._room_devices: dict[str, dict[str, list[dict[str, Any]]]] = {}
        #: Per room being listed: the membership events seen meanwhile.
        self._moves_while_listing: dict[str, list[dict[str, Any]]] = {}
        self._topping_up = False
        #: Highest inbox id handled and not yet confirmed to the server.
        self._inbox_done = 0
        self._confirm_call: Any = None
        #: A pre-key message came (a one-time key of ours may be used up).
        self._used_one_time_key = False
        self._learning: set[str] = set()
        #: Room messages waiting for their key, by session id.
        self._awaiting: dict[str, list[dict[str, Any]]] = {}
        #: room -> (the stream id it is known at, the members then)
        self._members: dict[str, tuple[int, set[str]]] = {}

    @classmethod
    def open(
        cls,
        directory: Path,
        user: str,
        clock: Any,
        passphrase: Callable[[], str] | None,
        name: str,
        prefer: str = "auto",
    ) -> EndToEnd:
        """The device of ``user`` whose store is in ``directory``, made (and
        called ``name``) if there is none; ``passphrase()`` is asked only
        where the store's key comes from one.  StoreError if it cannot be
        opened."""
        try:
            key, method = StoreKey(directory, passphrase).open_or_make(prefer)
        except OSError as e:
            raise StoreError(f"cannot open {directory}: {e.strerror or e}") from None
        store = DeviceStore(directory, key)
        device = cls(store, user, clock)
        device.store_key_method = method
        if store.get("name") is None:
            store.put("name", name[:64])
        return device

    def _build(self) -> None:
        self.olm = OlmSessions(self.device, self.store, self._save_account)
        self.rooms = RoomKeys(self.device, self.store)
        self.verifications = Verifications(self.device, self.book, self._send_plain, lambda e: self.emit(e))

    def forget(self) -> None:
        """This device is gone (it logged out, or was removed): its keys,
        sessions and what it decrypted are deleted here too, and the next
        connection makes a new device (which its peers are told of).  What
        it knows of other devices, and which rooms are encrypted, stay."""
        with self.store.transaction():
            for prefix in ("account", "olm:", "outbound:", "inbound:", "seen:", "plain:", "sent:"):
                for name, _ in list(self.store.items(prefix)):
                    self.store.delete(name)
        self.device = Device.new(self.user)
        self.created = self._now()
        self._save_account()
        self._build()
        self._room_devices.clear()
        self._inbox_done = 0

    def _now(self) -> int:
        return int(self._clock.seconds() * 1000)

    def _save_account(self) -> None:
        self.store.put(
            "account",
            {
                "pickle": self.device.account.pickle(self.store.key),
                "device": self.device.device_id,
                "created": self.created,
            },
        )

    @property
    def device_id(self) -> str:
        return self.device.device_id

    # --- the connection ----------------------------------------------------

    def attach(self, client: ReconnectingClient) -> None:
        self.client = client
        client.e2e = self
        self.emit = client._emit

    def setup(self, session: ChatSession, welcome: dict[str, Any]) -> Deferred[Any]:
        """Declare this device on a new connection (its inbox follows); a
        device the server has removed (from another of the user's
        devices) is forgotten, and a new one declared."""
        for room in welcome.get("encrypted_rooms", []):
            self.mark_encrypted(room)
        d = self._declare(session)
        rooms = list(welcome.get("encrypted_rooms", []))

        def listed(result: Any) -> Any:
            # Their members, so that a message from a non-member is refused
            # from the start (not only once this device has sent there).
            for room in rooms:
                self.list_room(room).addErrback(lambda f: None)
            return result

        d.addCallback(listed)

        def removed(failure: Any) -> Any:
            if getattr(failure.value, "code", None) != "device_removed":
                return failure
            log.info("this device was removed; making a new one")
            self.forget()
            return self._declare(session)

        return d.addErrback(removed)

    def _declare(self, session: ChatSession) -> Deferred[Any]:
        request = {
            "type": "keys",
            "device": self.device_id,
            "name": self.store.get("name", "chatclient"),
            "identity": self.device.identity(),
            "proof": self.device.proof(session.device_challenge),
        }
        # A new fallback key once a week, not at every connection: vodozemac
        # keeps only the last two, and a session may start on an older one.
        if self._now() - int(self.store.get("fallback_at", 0)) >= FALLBACK_ROTATION_MS:
            request["fallback_key"] = self.device.fallback_key()
        d = session.request(request)

        def declared(answer: dict[str, Any]) -> Any:
            self.device.published()
            self._save_account()
            if "fallback_key" in request:
                self.store.put("fallback_at", self._now())
            return self._top_up(session, int(answer.get("one_time_keys", 0)))

        return d.addCallback(declared)

    @defer.inlineCallbacks
    def _top_up(self, session: ChatSession, count: int) -> Any:
        if count >= TOP_UP_BELOW or self._topping_up:
            return
        self._topping_up = True
        try:
            keys = self.device.one_time_keys(ONE_TIME_KEYS - count)
            if keys:
                yield session.request({"type": "keys", "device": self.device_id, "one_time_keys": keys})
                self.device.published()
                self._save_account()
        finally:
            self._topping_up = False

    def _request(self, event: dict[str, Any]) -> Deferred[dict[str, Any]]:
        assert self.client is not None
        return self.client.request(event)

    # --- devices ---------------------------------------------------------------

    @defer.inlineCallbacks
    def devices_of(self, users: list[str]) -> Any:
        """{user: {device: entry}} the server lists and this device accepts;
        notices of changes are emitted on the way."""
        listing, _ = yield self._listing({"type": "devices", "users": users})
        return self._accept(listing, users)

    @defer.inlineCallbacks
    def _listing(self, request: dict[str, Any]) -> Any:
        """(every page of a ``devices`` answer as one {user: entries}, the
        first page's ``at``): pages follow in name order while ``more``."""
        listing: dict[str, Any] = {}
        at = None
        for _ in range(MAX_PAGES):
            answer = yield self._request(request)
            page = answer.get("devices") if isinstance(answer.get("devices"), dict) else {}
            listing.update(page)
            if at is None:
                at = answer.get("at")
            if answer.get("more") is not True or not page:
                break
            request = {**request, "after": max(page)}
        return listing, at

    def _accept(self, listing: Any, users: list[str] | None = None) -> dict[str, dict[str, dict[str, Any]]]:
        """The devices of ``listing`` this device accepts.  Only the users
        asked for (``users``; for a room: its members, as listed) count: a
        server that adds someone to a conversation adds no one."""
        usable: dict[str, dict[str, dict[str, Any]]] = {}
        if not isinstance(listing, dict):
            return usable
        for user, entries in listing.items():
            if (users is not None and user not in users) or not isinstance(entries, list):
                continue
            accepted, notices = self.book.update(user, entries)
            if user == self.user:
                accepted.pop(self.device_id, None)
                notices = [n for n in notices if n.device != self.device_id]
            usable[user] = accepted
            for notice in notices:
                self._notice(notice)
        return usable

    def _notice(self, notice: Notice) -> None:
        log.info(
            "device notice: {kind} {user} {device}", kind=notice.kind, user=notice.user, device=notice.device
        )
        self.emit(notice.event())

    @defer.inlineCallbacks
    def _ensure_sessions(self, targets: list[tuple[str, str, dict[str, Any]]]) -> Any:
        """An Olm session with each (user, device, entry), claiming a
        one-time key for those without one.  The devices that have one."""
        missing = [(u, d, entry) for u, d, entry in targets if not self.olm.has_session(entry["curve25519"])]
        for start in range(0, len(missing), e2e.MAX_LISTED):
            batch = missing[start : start + e2e.MAX_LISTED]
            answer = yield self._request(
                {"type": "claim", "devices": [{"user": u, "device": d} for u, d, _ in batch]}
            )
            entries = {(u, d): entry for u, d, entry in batch}
            for key in answer["keys"]:
                if not isinstance(key, dict):
                    continue
                entry = entries.get((str(key.get("user")), str(key.get("device"))))
                if entry is None:
                    continue
                try:
                    content = e2e.one_time_key_content(
                        key["user"],
                        key["device"],
                        str(key["key_id"]),
                        str(key["key"]),
                        key["fallback"] is True,
                    )
                    ok = e2e.signed_by(entry["ed25519"], str(key["signature"]), content)
                    if ok:
                        self.olm.start(entry["curve25519"], key["key"])
                except Exception:  # a claimed key that does not parse is no key
                    ok = False
                if not ok:
                    self._notice(Notice("bad_signature", key["user"], key["device"], entry.get("name", "")))
        return [(u, d, entry) for u, d, entry in targets if self.olm.has_session(entry["curve25519"])]

    # --- direct messages ---------------------------------------------------------

    @defer.inlineCallbacks
    def dm_request(self, to: str) -> Any:
        """The devices a direct message to ``to`` goes to: [(user, device, entry)]."""
        if self.book.blocked(to):
            raise SendBlocked(f"a verified device of {to} changed: look at their devices first")
        found = yield self.devices_of(sorted({to, self.user}))
        found = {user: found.get(user, {}) for user in {to, self.user}}
        if not found.get(to):
            raise SendBlocked(f"{to} has no device that can read an encrypted message (or no such user)")
        targets = [(u, d, entry) for u in sorted(found) for d, entry in sorted(found[u].items())]
        ready = yield self._ensure_sessions(targets)
        return ready

    def encrypt_dm(
        self, to: str, body: str, targets: list[tuple[str, str, dict[str, Any]]]
    ) -> dict[str, Any]:
        ciphertext: dict[str, dict[str, Any]] = {}
        for user, device, entry in targets:
            envelope = self.olm.envelope("dm", {"body": body, "to": to}, user, device, entry["ed25519"])
            ciphertext.setdefault(user, {})[device] = self.olm.encrypt(entry["curve25519"], envelope)
        payload = {
            "algorithm": e2e.OLM,
            "sender_key": self.device.curve25519,
            "device": self.device_id,
            "ciphertext": ciphertext,
        }
        size = sum(len(m["body"]) for per_device in ciphertext.values() for m in per_device.values())
        if size > e2e.MAX_CIPHERTEXT:
            # One ciphertext per device, all in one event of one record.
            most = max(1, len(body) * e2e.MAX_CIPHERTEXT // size)
            raise SendBlocked(
                f"too long to encrypt for {len(targets)} devices: shorten it to about {most} characters"
            )
        # This device is not among its own recipients: it keeps what it sent.
        self.store.put(f"sent:{_fingerprint(payload)}", body)
        return payload

    @defer.inlineCallbacks
    def send_dm(self, to: str, body: str) -> Any:
        """Encrypt and send; fires with the ``ack``."""
        assert self.client is not None
        for attempt in range(RETRIES):
            targets = yield self.dm_request(to)
            payload = self.encrypt_dm(to, body, targets)
            try:
                ack = yield self.client.send_once({"type": "dm", "to": to, "e2e": payload})
            except Exception as e:
                if getattr(e, "code", None) == "devices_changed" and attempt + 1 < RETRIES:
                    continue
                raise
            # What this device sent, at the place the server says it went:
            # bound to that event, so it shows only for the very event.
            sent = {"type": "dm", "from": self.user, "to": to, "e2e": payload}
            kept = {"body": body, "own": True, "bound": _bound(sent)}
            self.store.put(f"plain:{ack['stream']}:{ack['id']}", kept)
            return ack
        raise AssertionError("unreachable")

    # --- encrypted rooms -----------------------------------------------------------

    def mark_encrypted(self, room: str) -> None:
        """Once seen encrypted, a room stays encrypted here: a server that
        says otherwise later is not believed."""
        if not self.store.get(f"encrypted:{room}"):
            self.store.put(f"encrypted:{room}", True)

    def is_encrypted(self, room: str) -> bool:
        return bool(self.store.get(f"encrypted:{room}"))

    @defer.inlineCallbacks
    def send_say(self, room: str, body: str) -> Any:
        assert self.client is not None
        for attempt in range(RETRIES):
            listing = self._room_devices.get(room)
            if listing is None:
                listing = yield self.list_room(room)
            found = self._accept(listing)
            now = self._now()
            everyone = {f"{u} {d}" for u, devices in found.items() for d in devices}
            if self.rooms.must_rotate(room, now, everyone):
                self.rooms.new_outbound(room, now)
            targets = [
                (u, d, entry)
                for u in sorted(found)
                for d, entry in sorted(found[u].items())
                if f"{u} {d}" not in self.rooms.shared_with(room)
            ]
            if targets:
                yield self._share(room, targets)
            session_id, ciphertext = self.rooms.encrypt(room, body)
            payload = {
                "algorithm": e2e.MEGOLM,
                "sender_key": self.device.curve25519,
                "device": self.device_id,
                "session_id": session_id,
                "ciphertext": ciphertext,
                "devices": digest_of(listing),
            }
            try:
                ack = yield self.client.send_once({"type": "say", "room": room, "e2e": payload})
            except Exception as e:
                if getattr(e, "code", None) == "devices_changed" and attempt + 1 < RETRIES:
                    self._room_devices.pop(room, None)
                    continue
                raise
            return ack
        raise AssertionError("unreachable")

    @defer.inlineCallbacks
    def _share(self, room: str, targets: list[tuple[str, str, dict[str, Any]]]) -> Any:
        """Send this device's room key to ``targets`` over Olm."""
        ready = yield self._ensure_sessions(targets)
        content = self.rooms.share(room)
        messages = []
        for user, device, entry in ready:
            envelope = self.olm.envelope("room_key", content, user, device, entry["ed25519"])
            body = {
                "algorithm": e2e.OLM,
                "sender_key": self.device.curve25519,
                "ciphertext": self.olm.encrypt(entry["curve25519"], envelope),
            }
            messages.append({"user": user, "device": device, "body": body})
        unsent = set()
        for batch in e2e.batches(messages):  # each request within a record
            answer = yield self._request({"type": "to_device", "messages": batch})
            for item in answer.get("full", []) + answer.get("missing", []):
                unsent.add(f"{item.get('user')} {item.get('device')}")
        # A device whose inbox was full is shared with again at the next message.
        self.rooms.mark_shared(room, [f"{u} {d}" for u, d, _ in ready if f"{u} {d}" not in unsent])

    # --- what comes in -----------------------------------------------------------------

    @defer.inlineCallbacks
    def list_room(self, room: str) -> Any:
        """The room's devices as the server lists them, kept until its
        members or their devices change; its members are known from then
        on (as of the stream position the answer gives)."""
        # Membership events that come while the pages are read move the
        # set as of the first page; they are replayed once it is known.
        moves = self._moves_while_listing.setdefault(room, [])
        try:
            listing, at = yield self._listing({"type": "devices", "room": room})
        finally:
            self._moves_while_listing.pop(room, None)
        if not moves:  # (else its pages are of different moments: listed again at need)
            self._room_devices[room] = listing
        if isinstance(at, int) and not isinstance(at, bool):
            self._know_members(room, set(listing), at)
            for event in moves:
                self._move_member(room, event)
        return listing

    def _know_members(self, room: str, members: set[str], at: int) -> None:
        """The room's members as of stream id ``at``: later events move
        the set, in order."""
        known = self._members.get(room)
        if known is None or known[0] <= at:
            self._members[room] = (at, members)

    def _move_member(self, room: str, event: dict[str, Any]) -> None:
        """A joined, left, kicked or banned event moves the known members."""
        known = self._members.get(room)
        if known is not None and isinstance(event.get("id"), int) and event["id"] > known[0]:
            users = set(known[1])
            (users.add if event.get("type") == "joined" else users.discard)(str(event.get("user")))
            self._members[room] = (event["id"], users)

    def _member_then(self, event: dict[str, Any]) -> bool | None:
        """Whether the sender of a room event was a member at that point,
        or None if this client cannot tell (before what it knows)."""
        known = self._members.get(str(event.get("room")))
        if known is None or not isinstance(event.get("id"), int) or event["id"] <= known[0]:
            return None
        return event.get("from") in known[1]

    def incoming(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """The event as the front ends should see it (None: not for them)."""
        kind = event.get("type")
        if kind == "to_device":
            self._inbox(event)
            return None
        if kind in ("joined", "left", "kicked", "banned") and isinstance(event.get("room"), str):
            room = event["room"]
            if room in self._moves_while_listing:
                self._moves_while_listing[room].append(event)
            self._move_member(room, event)
            self._room_devices.pop(room, None)
            if kind == "joined" and event.get("encrypted") and event.get("user") == self.user:
                self.mark_encrypted(room)
                if self.client is not None and self.client.state == "online":
                    self.list_room(room).addErrback(lambda f: None)
            if kind != "joined":
                self.rooms.rotate_later(room)
            return event
        if isinstance(event.get("e2e"), dict) and kind in ("dm", "msg"):
            if kind == "msg" and self._member_then(event) is False:
                # A server may deliver anything; a member's device sent this
                # or no one did.
                return self._shown(event, {"error": "not_member"})
            return self.decrypt(event)
        return event

    def decrypt(self, event: dict[str, Any]) -> dict[str, Any]:
        """A copy of an encrypted ``dm`` or ``msg`` with its ``body``, and an
        ``e2e`` member that says how it was read: ``{"ok": true, "trust":
        "verified" | "unverified" | "unknown" | "own", "device": id}`` or
        ``{"ok": false, "reason": word}`` (the body then says why)."""
        name = f"plain:{event.get('stream')}:{event.get('id')}"
        kept = self.store.get(name)
        if isinstance(kept, dict) and kept.get("bound") == _bound(event):
            return self._shown(event, kept)
        # (A kept plaintext of another event at that place: a server
        # passing an old message off under another sender or room.  What
        # the event itself decrypts to is shown instead, or its refusal.)
        try:
            kept = self._decrypt(event)
        except (OlmError, MegolmError) as e:
            if e.reason == "no_key":
                self._await_key(event)
            return self._shown(event, {"error": e.reason})
        except Exception as e:  # anything a hostile server could make of an event
            log.info("an encrypted event could not be read: {kind}", kind=type(e).__name__)
            return self._shown(event, {"error": "malformed"})
        return self._shown(event, kept)

    def _await_key(self, event: dict[str, Any]) -> None:
        """A room message whose key has not come (it may be in the inbox's
        backlog, behind the catch-up): read again when it does."""
        session_id = str(event.get("e2e", {}).get("session_id"))
        waiting = self._awaiting.setdefault(session_id, [])
        if len(waiting) < AWAIT_KEY_MAX and all(e.get("id") != event.get("id") for e in waiting):
            waiting.append(event)
        while sum(len(v) for v in self._awaiting.values()) > AWAIT_KEY_MAX:
            del self._awaiting[next(iter(self._awaiting))]

    def _key_arrived(self, session_id: str) -> None:
        """Messages that waited for this key, told again as they read now
        (an ``e2e_decrypted`` event holding each)."""
        for event in self._awaiting.pop(session_id, []):
            shown = self.decrypt(event)
            if shown.get("e2e", {}).get("ok"):
                self.emit({"type": "e2e_decrypted", "event": shown})

    def _decrypt(self, event: dict[str, Any]) -> dict[str, Any]:
        if event["type"] == "dm":
            kept = self._decrypt_dm(event)
        else:
            body, sender = self.rooms.decrypt(event)
            kept = {
                "body": body,
                "device": sender["device"],
                "curve25519": sender["curve25519"],
                "ed25519": sender["ed25519"],
            }
        kept["bound"] = _bound(event)
        self.store.put(f"plain:{event.get('stream')}:{event.get('id')}", kept)
        return kept

    def _decrypt_dm(self, event: dict[str, Any]) -> dict[str, Any]:
        payload = event["e2e"]
        ciphertext = payload.get("ciphertext")
        mine = None
        if isinstance(ciphertext, dict) and isinstance(ciphertext.get(self.user), dict):
            mine = ciphertext[self.user].get(self.device_id)
        if mine is None:
            if event.get("from") == self.user:
                sent = self.store.get(f"sent:{_fingerprint(payload)}")
                if sent is not None:
                    return {"body": sent, "own": True}
            ts = event.get("ts")
            reason = "before_device" if isinstance(ts, int) and ts < self.created else "not_for_device"
            raise OlmError(reason, REASONS[reason])
        envelope = self.olm.decrypt(str(payload.get("sender_key")), mine)
        if mine.get("type") == 0:
            self._used_one_time_key = True
            self._confirm_later()  # a one-time key may have gone: top up soon
        sender, device = envelope.get("sender"), envelope.get("sender_device")
        ed25519 = envelope["keys"].get("ed25519")
        content = envelope["content"]
        if (
            envelope.get("type") != "dm"
            or sender != event.get("from")
            or device != payload.get("device")
            or content.get("to") != event.get("to")
            or not isinstance(content.get("body"), str)
        ):
            raise OlmError("wrong_sender", REASONS["wrong_sender"])
        if (
            self.book.trust_of(str(sender), str(device), str(payload.get("sender_key")), str(ed25519))
            == "mismatch"
        ):
            raise OlmError("mismatch", REASONS["mismatch"])
        return {
            "body": content["body"],
            "device": device,
            "curve25519": payload["sender_key"],
            "ed25519": ed25519,
        }

    def _shown(self, event: dict[str, Any], kept: dict[str, Any]) -> dict[str, Any]:
        """What the front ends get; the trust is as of now (a device
        verified later shows so in history too)."""
        shown = {k: v for k, v in event.items() if k != "e2e"}
        if "error" in kept:
            shown["body"] = REASONS.get(kept["error"], "could not be read")
            shown["e2e"] = {"ok": False, "reason": kept["error"]}
            return shown
        shown["body"] = kept["body"]
        sender, device = str(event.get("from")), kept.get("device")
        if kept.get("own") or (sender == self.user and device == self.device_id):
            trust = "own"
        else:
            trust = self.book.trust_of(
                sender, str(device), str(kept.get("curve25519")), str(kept.get("ed25519"))
            )
            if trust == "unknown":
                self._learn(sender)
        shown["e2e"] = {"ok": True, "trust": trust, "device": device}
        return shown

    def _learn(self, user: str) -> None:
        """A device never listed wrote: read the user's devices (the next
        messages, and history, then show how far it is trusted)."""
        if user in self._learning or self.client is None or self.client.state != "online":
            return
        self._learning.add(user)
        d = self.devices_of([user])
        d.addErrback(lambda f: None)
        d.addBoth(lambda _: self._learning.discard(user))

    def _inbox(self, event: dict[str, Any]) -> None:
        """One inbox event: a room key over Olm, or a verification step."""
        body = event.get("body")
        sender, device = str(event.get("from")), str(event.get("from_device"))
        try:
            if isinstance(body, dict) and "verify" in body:
                # Verification is not secret (the SAS is what stops a man in
                # the middle), so it travels in the clear.
                self.verifications.received(sender, device, body["verify"])
            else:
                self._inbox_olm(sender, device, body)
        except (OlmError, MegolmError, KeyError, TypeError) as e:
            log.info(
                "inbox message from {user}/{device} refused: {why}",
                user=sender[:40],
                device=device[:40],
                why=getattr(e, "reason", "malformed"),
            )
        event_id = event.get("id")
        if isinstance(event_id, int) and event_id > self._inbox_done:
            self._inbox_done = event_id
            self._confirm_later()

    def _inbox_olm(self, sender: str, device: str, body: Any) -> None:
        if not isinstance(body, dict) or body.get("algorithm") != e2e.OLM:
            raise OlmError("malformed", "not an Olm message")
        if isinstance(body.get("ciphertext"), dict) and body["ciphertext"].get("type") == 0:
            self._used_one_time_key = True
        envelope = self.olm.decrypt(str(body.get("sender_key")), body["ciphertext"])
        if envelope.get("sender") != sender or envelope.get("sender_device") != device:
            raise OlmError("wrong_sender", REASONS["wrong_sender"])
        ed25519 = str(envelope["keys"].get("ed25519"))
        if self.book.trust_of(sender, device, str(body.get("sender_key")), ed25519) == "mismatch":
            raise OlmError("mismatch", REASONS["mismatch"])
        if envelope.get("type") != "room_key":
            raise OlmError("wrong_sender", "an inbox message that is not a room key")
        self.rooms.receive(envelope["content"], sender, device, str(body["sender_key"]), ed25519)
        self._key_arrived(str(envelope["content"].get("session_id")))

    def _send_plain(self, user: str, device: str, body: dict[str, Any]) -> None:
        d = self._request({"type": "to_device", "messages": [{"user": user, "device": device, "body": body}]})
        d.addErrback(
            lambda f: log.info("a verification message was not sent: {why}", why=f.getErrorMessage())
        )

    # --- verification ---------------------------------------------------------------

    @defer.inlineCallbacks
    def verify(self, user: str, device: str | None = None) -> Any:
        """Start verifying a device of ``user`` (the only one, if no
        ``device`` is named); fires with the exchange's ``txn``.  Its
        progress comes as ``e2e_verify`` events."""
        found = yield self.devices_of([user])
        devices = found.get(user, {})
        if device is None:
            if len(devices) != 1:
                names = ", ".join(sorted(devices)) or "none"
                raise SendBlocked(f"{user} has {len(devices)} devices ({names}): name one")
            (device,) = devices
        elif device not in devices:
            raise SendBlocked(f"{user} has no device {device}")
        return self.verifications.start(user, device)

    def confirm(self, txn: str, match: bool) -> None:
        self.verifications.confirm(txn, match)

    def stop(self) -> None:
        """The client stopped: nothing more is due."""
        if self._confirm_call is not None and self._confirm_call.active():
            self._confirm_call.cancel()
        self._confirm_call = None

    def _confirm_later(self) -> None:
        # One confirmation for a backlog's worth of events.
        if self.client is not None and self.client.state in ("stopped", "failed"):
            return
        if self._confirm_call is None:
            self._confirm_call = self._clock.callLater(0.2, self._confirm)

    def _confirm(self) -> None:
        self._confirm_call = None
        if self.client is None or self.client.session is None:
            return
        if self._inbox_done:
            self.client.session.request({"type": "to_device_ack", "upto": self._inbox_done}).addErrback(
                lambda f: None  # unconfirmed events come again: handled again, harmlessly
            )
        self._after_inbox()

    def _after_inbox(self) -> None:
        """Pre-key messages used up one-time keys: top up if need be."""
        if self.client is None or self.client.session is None or not self._used_one_time_key:
            return
        self._used_one_time_key = False
        session = self.client.session
        d = session.request({"type": "keys", "device": self.device_id})
        d.addCallback(lambda answer: self._top_up(session, int(answer.get("one_time_keys", 0))))
        d.addErrback(lambda f: None)

    # --- moving room keys to another device -----------------------------------------

    def export_keys(self, passphrase: str, log2_n: int = PASSPHRASE_LOG2_N) -> str:
        """Every room key this device holds, sealed under ``passphrase``
        (docs/protocol.rst, "Key export"): a JSON text for a file."""
        if len(passphrase) < 8:
            raise SendBlocked("an export passphrase is at least 8 characters")
        salt, nonce = crypto.random_bytes(16), crypto.random_bytes(12)
        key = crypto.passphrase_key(passphrase, salt, log2_n)
        sealed = crypto.AEAD(key).seal(nonce, e2e.canonical_json(self.rooms.export()), EXPORT_AAD)
        return json.dumps(
            {
                "version": 1,
                "kdf": "scrypt",
                "log2_n": log2_n,
                "salt": e2e.b64encode(salt),
                "nonce": e2e.b64encode(nonce),
                "ciphertext": e2e.b64encode(sealed),
            },
            indent=1,
        )

    def export_keys_file(self, path: Path, passphrase: str) -> None:
        """``export_keys`` into a new 0600 file (OSError, SendBlocked)."""
        sealed = self.export_keys(passphrase)
        fd = os.open(path.expanduser(), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(sealed + "\n")

    def import_keys_file(self, path: Path, passphrase: str) -> int:
        """``import_keys`` from a file (OSError, SendBlocked)."""
        return self.import_keys(path.expanduser().read_text(encoding="utf-8"), passphrase)

    def import_keys(self, text: str, passphrase: str) -> int:
        """Room keys from ``export_keys``; how many were new here."""
        try:
            sealed = json.loads(text)
            if sealed.get("version") != 1 or sealed.get("kdf") != "scrypt":
                raise ValueError("not a key export this client knows")
            log2_n = int(sealed["log2_n"])
            if not 10 <= log2_n <= 22:
                raise ValueError("an unreasonable scrypt cost")
            key = crypto.passphrase_key(passphrase, e2e.b64decode(sealed["salt"]), log2_n)
            plain = crypto.AEAD(key).open(
                e2e.b64decode(sealed["nonce"]), e2e.b64decode(sealed["ciphertext"]), EXPORT_AAD
            )
        except crypto.CryptoError:
            raise SendBlocked("wrong passphrase, or the export was changed") from None
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise SendBlocked(f"not a key export: {e}") from None
        try:
            return self.rooms.import_sessions(json.loads(plain))
        except Exception as e:  # a damaged list, a key vodozemac refuses
            raise SendBlocked(f"the export's keys could not be read: {type(e).__name__}") from None

    # --- trust -----------------------------------------------------------------------

    @defer.inlineCallbacks
    def safety_number(self, peer: str) -> Any:
        found = yield self.devices_of(sorted({peer, self.user}))
        mine = [e["ed25519"] for e in found.get(self.user, {}).values()] + [self.device.ed25519]
        theirs = [e["ed25519"] for e in found.get(peer, {}).values()]
        return safety_number(self.user, mine, peer, theirs)


def _bound(event: dict[str, Any]) -> str:
    """What ties a kept plaintext to its event: the digest of who sent it,
    to whom or where, and its ciphertext (never the plaintext)."""
    e2e_part = event.get("e2e")
    if isinstance(e2e_part, dict):
        e2e_part = {k: v for k, v in e2e_part.items() if k != "devices"}
    facts = {
        "type": event.get("type"),
        "from": event.get("from"),
        "to": event.get("to"),
        "room": event.get("room"),
    }
    return crypto.sha256(e2e.canonical_json({"event": facts, "e2e": e2e_part})).hex()


def _fingerprint(payload: dict[str, Any]) -> str:
    """What identifies a sent payload when it comes back."""
    return crypto.sha256(e2e.canonical_json(payload["ciphertext"])).hex()
