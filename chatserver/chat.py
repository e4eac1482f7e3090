"""The chat core: rooms, direct messages, history and moderation.

A *member* is one logged-in connection: it has ``user``, ``role`` (the
account's server role), ``deliver(plaintext)`` for an already-encoded event
list, and ``close(code, message)``.

State lives in memory and every change is also written to storage (the
``Storage`` interface; no SQL here).  Checks (permissions, bans, limits) run
against memory, synchronously, so requests on one connection see each
other's effects in order.  Every published event is committed through the
storage's group-commit event log, whose commit gives it the next id of its
stream, and only then handed to the hub (the ``Hub`` interface), which
delivers it to whoever follows its stream, and acknowledged: nothing a
client has seen or been acknowledged can be lost.  This object is also the
hub's receiver for this process: ``deliver`` fans an event out to the
local connections in its room (or of its direct message's two users).

A state change (a membership, a topic, a ban) is committed in the same
transaction as the event that announces it, never on its own: acknowledged
means stored, for every request.  Memory changes at once, so that the next
request sees it, and is put back by the change's *undo* if the commit fails
(a full disk): the client gets an error and nothing of the change remains,
in memory or on disk.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Protocol

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatserver.devices import DeviceDirectory
from chatserver.hub.interface import Hub
from chatserver.inboxes import Inboxes
from chatserver.storage.interface import Change, Changes, RoomRecord, Storage, StoreClosed, UserRecord
from chatserver.wire import channel, safetext
from chatserver.wire import e2e as e2e_names
from chatserver.wire.errors import Refused
from chatserver.wire.names import RANK, dm_stream, room_stream

log = Logger(namespace="chatserver.chat")
audit = Logger(namespace="chatserver.audit")

HISTORY_PAGE_MAX = 200
#: The most entries of a ``who`` or ``rooms`` page.
LIST_PAGE_MAX = 200
#: Bytes of an answer's JSON kept for its other members (type, room, ref,
#: more ...) when a page is filled up to the size budget.
ANSWER_OVERHEAD = 512


#: The texts of the CLOSEs a decision about an account or device sends.
CLOSINGS = {
    "account_disabled": "this account was disabled by an admin",
    "device_removed": "this device was removed",
    "account_changed": "an admin changed this account's role: log in again",
    "signed_out": "an admin signed this account out",
    "account_deleted": "this account was deleted by an admin",
}


def fit(items: list[str], budget: int, newest_last: bool = False) -> int:
    """How many of the JSON texts ``items`` fit in ``budget`` bytes as
    members of one JSON array: from the front, or with ``newest_last``
    from the back.  At least one, which the caller's limits guarantee to
    fit on its own."""
    used = 0
    order = reversed(items) if newest_last else iter(items)
    for count, item in enumerate(order):
        used += len(item.encode("utf-8")) + 1
        if used > budget and count > 0:
            return count
    return len(items)


class Member(Protocol):
    user: str | None
    role: str
    #: The device this connection declared (end-to-end encryption), if any.
    device: str | None

    def deliver(self, encoded: bytes) -> None:
        """One event as compact JSON, encoded once for all recipients."""
        ...

    def close(self, code: str, message: str) -> None: ...


class ChatError(Refused):
    """A request that cannot be done; goes to the client as an error."""


@dataclasses.dataclass(frozen=True, slots=True)
class Audit:
    """One audited action: a row committed with the action, and a line in
    the audit log once that commit is done (never for what did not happen)."""

    ts: int
    actor: str
    action: str
    room: str | None
    target: str | None
    detail: str

    def row(self) -> Change:
        return ("add_audit", (self.ts, self.actor, self.action, self.room, self.target, self.detail))

    def logged(self, result: Any) -> Any:
        audit.info(
            "{actor} {action} room={room} target={target} {detail}",
            actor=self.actor,
            action=self.action,
            room=self.room or "-",
            target=self.target or "-",
            # Reasons may hold anything a client could type.
            detail=safetext.log_text(self.detail),
        )
        return result


def _page(entries: list[dict[str, Any]], limit: int, budget: int) -> tuple[list[dict[str, Any]], bool]:
    texts = [channel.json_text(entry) for entry in entries[:limit]]
    count = fit(texts, budget)
    return entries[:count], len(entries) > count


def _check_sender_key(own: str | None, e2e: dict[str, Any]) -> None:
    """The sending device is in the directory (its Curve25519 key ``own``),
    and the payload names that key."""
    if own is None:
        raise ChatError("device_removed", "this device is not in the directory", "e2e")
    if own != e2e["sender_key"]:
        raise ChatError("bad_field", "e2e: sender_key is not this device's key", "e2e")


def content(request: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
    """A say's or dm's ``body`` or ``e2e``: exactly one of the two."""
    body = request.get("body")
    e2e = request.get("e2e")
    if (body is None) == (e2e is None):
        raise ChatError("missing_field", "a message has a body or an e2e payload (not both)", "body")
    return body, e2e


def sent_once(request: dict[str, Any]) -> tuple[str | None, bool]:
    """A say's or dm's sender id and resend flag (see ``send_once``)."""
    txn_id = request.get("txn_id")
    resend = bool(request.get("resend", False))
    if resend and txn_id is None:
        raise ChatError("bad_field", "resend needs the txn_id of the first send", "resend")
    return txn_id, resend


#: How a room's ``deleted`` event begins, as committed (compact JSON with
#: ``type`` first): ``deliver`` knows it without decoding every event.
DELETED_EVENT = b'{"type":"deleted",'


class Room:
    __slots__ = (
        "name",
        "kind",
        "owner",
        "topic",
        "members",
        "invites",
        "sanctions",
        "online",
        "stream",
        "changes",
        "encrypted",
        "devices_digest",
    )

    def __init__(self, record: RoomRecord) -> None:
        self.name = record.name
        self.kind = record.kind
        self.owner = record.owner
        self.topic = record.topic
        self.members = record.members  # user -> member | moderator | owner
        self.invites = record.invites
        self.sanctions = record.sanctions  # (ban|mute, user) -> until ms or None
        self.online: dict[Member, None] = {}  # connections now in the room
        self.stream = room_stream(record.name)
        #: State changes made here (a reload read before one of them must
        #: not undo it: see ChatService.room_changed).
        self.changes = 0
        #: End-to-end encrypted: messages are Megolm ciphertext only.
        self.encrypted = record.encrypted
        #: The digest of the members' devices (wire.e2e.devices_digest),
        #: read when an encrypted message needs it, forgotten at every
        #: change of the members or of their devices.
        self.devices_digest: tuple[str, dict[tuple[str, str], str]] | None = None

    def listed(self) -> bool:
        return self.kind != "private"

    def summary(self) -> dict[str, Any]:
        return {
            "room": self.name,
            "kind": self.kind,
            "topic": self.topic,
            "members": len(self.members),
            "encrypted": self.encrypted,
        }


class ChatService:
    def __init__(
        self,
        db: Storage,
        hub: Hub,
        clock: Any,
        default_room: str = "lobby",
        max_room_members: int = 1000,
        max_rooms_per_user: int = 50,
    ) -> None:
        self.storage = db
        self.hub = hub
        self.devices = DeviceDirectory(db, clock)
        self.inboxes = Inboxes(db, hub, clock)
        self.metrics: Any = None  # set by the server (chatserver.metrics.Metrics)
        self._clock = clock
        self.default_room = default_room
        self.max_room_members = max_room_members
        self.max_rooms_per_user = max_rooms_per_user
        self.rooms: dict[str, Room] = {}
        self.last_ids: dict[str, int] = {}
        #: Rooms deleted whose ``deleted`` event has not been delivered here yet.
        self._deleted: dict[str, Room] = {}
        #: Server admins (loaded at start, and seen at login): no room
        #: moderator may kick, ban or mute them.
        self.admins: set[str] = set()
        self.user_rooms: dict[str, set[str]] = {}
        #: Users past their first login: theirs needs no database trip.
        self.welcomed: set[str] = set()
        self.dms: dict[str, dict[str, tuple[str, int]]] = {}  # user -> peer -> (stream, delivered)
        self.online: dict[str, dict[Member, None]] = {}
        self._syncing: dict[Member, set[str]] = {}  # DM streams still being pushed to a connection
        #: Streams whose following has not yet been confirmed by the hub
        #: (a shared hub reads where each stream is), and who waits for it.
        self._following: dict[str, list[Deferred[None]]] = {}
        #: Messages with a sender's id being stored here: "user txn_id" ->
        #: who waits for the same id (a resend that came meanwhile).
        self._sending: dict[str, list[Deferred[Any]]] = {}

    # --- start-up -----------------------------------------------------------

    @defer.inlineCallbacks
    def load(self) -> Any:
        records = yield self.storage.load_rooms()
        self.last_ids = yield self.storage.load_stream_ids()
        self.dms = yield self.storage.load_dm_streams()
        self.admins = yield self.storage.load_admins()
        self.welcomed = yield self.storage.load_welcomed()
        if self.default_room not in records:
            now = self._now()
            # Another process on the same new database may make it first
            # (workers start together): then theirs stands, read back.
            yield self.storage.write([("ensure_room", (self.default_room, "public", None, "", now))])
            records = yield self.storage.load_rooms()
        self.rooms = {name: Room(record) for name, record in records.items()}
        for room in self.rooms.values():
            for user in room.members:
                self.user_rooms.setdefault(user, set()).add(room.name)
        yield self.hub.start(self, self.last_ids)

    # --- helpers --------------------------------------------------------------

    def _now(self) -> int:
        return int(self._clock.seconds() * 1000)

    def _room(self, name: str, member: Member | None = None) -> Room:
        room = self.rooms.get(name)
        visible = room is not None and (
            room.listed() or member is None or self._rank(member, room) > 0 or member.user in room.invites
        )
        if room is None or not visible:
            raise ChatError("no_such_room", f"there is no room {name!r}", "room")
        return room

    def _rank(self, member: Member, room: Room) -> int:
        if member.role == "admin":
            return RANK["admin"]
        role = room.members.get(member.user or "")
        return RANK[role] if role else 0

    def _require_rank(self, member: Member, room: Room, rank: str, what: str) -> None:
        if self._rank(member, room) < RANK[rank]:
            raise ChatError("forbidden", f"only a room {rank} or an admin may {what}", "room")

    def _sanctioned(self, room: Room, kind: str, user: str) -> bool:
        if (kind, user) not in room.sanctions:
            return False
        until = room.sanctions[(kind, user)]
        if until is not None and until <= self._now():
            del room.sanctions[(kind, user)]  # expired; the row goes when lifted
            return False
        return True

    def publish(
        self,
        stream: str,
        event: dict[str, Any],
        changes: Changes = (),
        undo: Callable[[], None] | None = None,
        users: tuple[str, ...] = (),
        txn: str | None = None,
    ) -> Deferred[dict]:
        """Commit ``event`` with the state ``changes`` it stands for (the
        commit gives it the next id of ``stream``), then hand it to the hub,
        which delivers it to the followers of ``stream`` (and the sessions
        of ``users``) here and everywhere, and fire.  If the commit fails,
        ``undo()`` puts memory back as it was and the Deferred fails."""
        event["stream"] = stream
        event["id"] = 0  # its place among the fields; the commit sets it
        event["ts"] = self._now()
        if txn is not None:
            event["_txn"] = txn  # stored beside the event, not in it
        if changes and stream.startswith("room:"):
            room = self.rooms.get(stream[5:])
            if room is not None:
                room.changes += 1
                room.devices_digest = None
        d = self.storage.append(event, changes)

        def committed(text: str) -> dict[str, Any]:
            self.hub.publish(stream, event["id"], text.encode("utf-8"), users)
            if self.metrics is not None and event["type"] in ("msg", "dm"):
                self.metrics.count("messages_in")
            if changes and stream.startswith("room:"):
                self.hub.invalidate(stream[5:])
            return event

        def failed(failure: Failure) -> Failure:
            if undo is not None:
                undo()
            return failure

        return d.addCallbacks(committed, failed)

    def _publish_room(
        self,
        room: Room,
        event: dict[str, Any],
        changes: Changes = (),
        undo: Callable[[], None] | None = None,
        txn: str | None = None,
    ) -> Deferred[dict]:
        event["room"] = room.name
        return self.publish(room.stream, event, changes, undo, txn=txn)

    def send_once(
        self, user: str, txn_id: str | None, resend: bool, send: Callable[[str | None], Deferred[dict]]
    ) -> Deferred[dict]:
        """``send(txn)`` a message at most once per ``(user, txn_id)``.

        A client that lost its connection before the acknowledgement sends
        the message again with the same ``txn_id`` and ``resend``; if the
        first one was stored (by this process or any other), the answer is
        that event, and nothing is stored again.  A send with that id
        still under way here is waited for first.  Without ``resend`` the
        store is not asked (a first send is the common case, and costs no
        read)."""
        if txn_id is None:
            return send(None)  # the usual path, as before ids: no wrapping on every message
        key = f"{user} {txn_id}"
        under_way = self._sending.get(key)
        if under_way is not None:
            waiter: Deferred[Any] = Deferred()
            under_way.append(waiter)
            # If it failed, nothing was stored: this one goes ahead.
            return waiter.addCallbacks(
                lambda event: event, lambda _: self.send_once(user, txn_id, resend, send)
            )
        waiters: list[Deferred[Any]] = []
        self._sending[key] = waiters
        if resend:
            d = self.storage.find_sent(key).addCallback(
                lambda text: json.loads(text) if text is not None else send(key)
            )
        else:
            d = defer.maybeDeferred(send, key)

        def settled(result: Any) -> Any:
            if self._sending.get(key) is waiters:
                del self._sending[key]
            for waiter in waiters:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)
            return result

        return d.addBoth(settled)

    # --- the hub's receiver -----------------------------------------------------

    def deliver(self, stream: str, event_id: int, encoded: bytes) -> None:
        """A committed event, from the hub: to this process's sessions that
        follow ``stream``."""
        if event_id > self.last_ids.get(stream, 0):
            self.last_ids[stream] = event_id
        if stream.startswith("device:"):
            self.inboxes.deliver(stream, event_id, encoded)
            return
        if stream.startswith("room:"):
            room = self.rooms.get(stream[5:]) or self._deleted.get(stream[5:])
            members = list(room.online) if room is not None else []
            if room is not None and encoded.startswith(DELETED_EVENT):
                # The room's last event: its connections leave it once it
                # is theirs, whichever of it and the news comes first.
                for member in members:
                    member.deliver(encoded)
                self._forget_room(room)
                return
        else:
            # dm:A:B goes to both users' connections, but not to one that is
            # still being sent the stream's backlog (push_undelivered).
            _, a, b = stream.split(":", 2)
            members = [
                c
                for c in list(self.online.get(a, ())) + list(self.online.get(b, ()))
                if stream not in self._syncing.get(c, ())
            ]
            if self.hub.shared:
                # The sender's process marks only its own users' deliveries:
                # a recipient on this process is marked here.
                for user, peer in ((a, b), (b, a)):
                    if any(c.user == user for c in members):
                        self._mark_delivered(user, peer, stream, event_id)
        for member in members:
            member.deliver(encoded)
        if self.metrics is not None:
            self.metrics.count("messages_out", len(members))

    def close_sessions(self, user: str, device: str | None, code: str, keep: Any = None) -> None:
        """Close ``user``'s sessions here (of ``device`` only, if given;
        never ``keep``): the hub calls it for another process's decision."""
        for conn in list(self.online.get(user, ())):
            if conn is not keep and (device is None or conn.device == device):
                conn.close(code, CLOSINGS.get(code, code))  # (a newer process's code as itself)

    def recheck_sessions(self) -> None:
        """The hub's link was down, and another process's closings with it:
        close the sessions here of accounts now disabled and of devices now
        removed, as storage has them."""
        self._recheck_sessions().addErrback(lambda f: log.failure("rechecking the sessions failed", f))

    @defer.inlineCallbacks
    def _recheck_sessions(self) -> Any:
        users = sorted(self.online)
        for user in users:
            record = yield self.storage.get_user(user)
            if record is not None and record.disabled:
                self.close_sessions(user, None, "account_disabled")
        with_devices = sorted({m.user for ms in self.online.values() for m in ms if m.device and m.user})
        if not with_devices:
            return
        found = yield self.storage.devices(with_devices)
        for user in with_devices:
            listed = {record.device for record in found.get(user, ())}
            bound = {conn.device for conn in self.online.get(user, ()) if conn.device is not None}
            for device in sorted(bound - listed):
                self.close_sessions(user, device, "device_removed")

    def end_sessions(self, user: str, device: str | None, code: str, keep: Any = None) -> None:
        """Close ``user``'s sessions (of ``device`` only, if given; never
        ``keep``) here and on every other process."""
        self.close_sessions(user, device, code, keep)
        self.hub.close_sessions(user, device, code)

    @defer.inlineCallbacks
    def account_changed(self, user: str, code: str | None, rooms: list[str]) -> Any:
        """The admin tool changed ``user``'s account in the database: read
        its server role again, end its sessions everywhere with CLOSE
        ``code`` (if given; a new login reads the account afresh), and read
        ``rooms`` again here and on every other process."""
        record = yield self.storage.get_user(user)
        if record is not None and record.role == "admin" and not record.disabled:
            self.admins.add(user)
        else:
            self.admins.discard(user)
        if code is not None:
            self.end_sessions(user, None, code)
        for room in rooms:
            self.room_changed(room)
            self.hub.invalidate(room)

    # --- the admin tool's room commands (through control.py) --------------------

    @defer.inlineCallbacks
    def admin_set_owner(self, name: str, user: str, actor: str) -> Any:
        """Make ``user`` the owner of room ``name`` (``chatserver-admin room
        set-owner``): a member first if they are not one (a ``joined``
        event), then the owner (a ``role`` event, ``by`` null), and the old
        owner, if still a member, a moderator (another ``role`` event)."""
        record = yield self.storage.get_user(user)
        if record is None:
            raise ChatError("no_such_user", f"there is no user {user}", "user")
        if record.disabled:
            raise ChatError("forbidden", f"{user} is disabled or deleted: it cannot own a room", "user")
        room = self.rooms.get(name)
        if room is None:
            raise ChatError("no_such_room", f"there is no room {name!r}", "room")
        if self._sanctioned(room, "ban", user):
            raise ChatError("banned", f"{user} is banned from {name!r}: lift the ban first", "user")
        old = room.owner
        result = {"room": name, "owner": user, "was": old, "changed": old != user}
        if room.members.get(user) == "owner":
            return result
        if user not in room.members:
            if len(self.user_rooms.get(user, ())) >= self.max_rooms_per_user:
                raise ChatError("too_many_rooms", f"{user} is in {self.max_rooms_per_user} rooms already")
            yield self._add_member(room, user, "member")
            if self.rooms.get(name) is not room:
                raise ChatError("no_such_room", f"room {name!r} was deleted meanwhile", "room")
        demoted = old if old is not None and room.members.get(old) == "owner" else None
        before = (room.owner, room.members.get(user), room.members.get(demoted) if demoted else None)

        def put_back() -> None:
            room.owner = before[0]
            if user in room.members and before[1] is not None:
                room.members[user] = before[1]
            if demoted is not None and demoted in room.members:
                room.members[demoted] = "owner"

        room.owner = user
        room.members[user] = "owner"
        now = self._now()
        changes: list[Change] = [("set_owner", (name, user)), ("set_member", (name, user, "owner", now))]
        if demoted is not None:
            room.members[demoted] = "moderator"
            changes.append(("set_member", (name, demoted, "moderator", now)))
        audit = self._audit(actor, "set_owner", name, user, f"was {old or '-'}")
        changes.append(audit.row())
        event = {"type": "role", "user": user, "role": "owner", "by": None}
        yield self._publish_room(room, event, changes, put_back).addCallback(audit.logged)
        if demoted is not None:
            # Its state is committed with the owner's event above.
            yield self._publish_room(room, {"type": "role", "user": demoted, "role": "moderator", "by": None})
        return result

    def admin_delete_room(self, name: str, actor: str) -> Deferred[dict[str, Any]]:
        """Delete room ``name`` (``chatserver-admin room delete``): a
        ``deleted`` event to its members, committed with the deletion of
        the room, its memberships, invites, sanctions and history; then
        every process forgets it (``_forget_room``)."""
        room = self.rooms.get(name)
        if room is None:
            raise ChatError("no_such_room", f"there is no room {name!r}", "room")
        if name == self.default_room:
            raise ChatError(
                "forbidden", f"{name!r} is the default room, where every account is put: it stays", "room"
            )
        members = list(room.members)
        audit = self._audit(actor, "delete_room", name, None, f"{len(members)} members")
        # Out of this process's rooms at once: a request for it now gets
        # no_such_room, so nothing more is published in it here.  Its
        # connections still follow its stream, and get the event.
        self._room_gone(room)

        def put_back() -> None:
            if name not in self.rooms:
                self._deleted.pop(name, None)
                self.rooms[name] = room
                for user in members:
                    self.user_rooms.setdefault(user, set()).add(name)

        def deleted(event: dict[str, Any]) -> dict[str, Any]:
            return {"room": name, "members": sorted(members), "id": event["id"]}

        d = self._publish_room(
            room, {"type": "deleted", "by": None}, [("delete_room", (name,)), audit.row()], put_back
        )
        return d.addCallback(audit.logged).addCallback(deleted)

    def _room_gone(self, room: Room) -> None:
        """``room`` is being deleted, here or by another process: no request
        finds it any more, but its connections follow its stream until its
        ``deleted`` event reaches them (``deliver``)."""
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
        for user in room.members:
            self.user_rooms.get(user, set()).discard(room.name)
        self._deleted[room.name] = room
        if not room.online:
            self._forget_room(room)  # nobody here to wait for

    def _forget_room(self, room: Room) -> None:
        """``room``'s ``deleted`` event was delivered here: out of memory,
        its connections out of its stream, and what was being published in
        it while it went (by a process that had not learnt yet) out of the
        history once this process's own writes are done."""
        if self._deleted.get(room.name) is room:
            del self._deleted[room.name]
        elif self.rooms.get(room.name) is room:  # the event came before the news
            del self.rooms[room.name]
            for user in room.members:
                self.user_rooms.get(user, set()).discard(room.name)
        for conn in list(room.online):
            self._exit(room, conn)
        self.storage.idle().addCallback(
            lambda _: self.storage.write([("drop_history", (room.name,))])
        ).addErrback(
            lambda f: (
                None if f.check(StoreClosed) else log.failure("dropping a deleted room's history failed", f)
            )
        )

    def device_removed(self, user: str, device: str, keep: Any = None) -> None:
        """``user``'s ``device`` is out of the directory: its rooms' digests
        are stale, and its sessions, on every process, end."""
        self.devices_changed(user)
        self.end_sessions(user, device, "device_removed", keep)

    def room_changed(self, room: str) -> None:
        """Another process changed ``room``: read it again.

        Its state in memory changes before its commit (and is put back if
        that fails), so a read made before a change of this process's own
        could come back without it and undo it.  So the read waits until
        what was appended here is committed, and is made again if the room
        changed here meanwhile."""
        current = self.rooms.get(room)
        seen = current.changes if current is not None else 0
        d = self.storage.idle().addCallback(lambda _: self.storage.load_rooms())
        d.addCallback(self._reload_room, room, seen).addErrback(
            lambda f: (
                None if f.check(StoreClosed) else log.failure("reloading room {room} failed", f, room=room)
            )
        )

    def _reload_room(self, records: dict[str, RoomRecord], name: str, seen: int) -> None:
        room = self.rooms.get(name)
        if room is not None and room.changes != seen:
            self.room_changed(name)  # changed here meanwhile: read it again after that
            return
        record = records.get(name)
        if record is None:
            if room is not None:
                self._room_gone(room)  # deleted by another process
            return
        if room is None:
            room = self.rooms[name] = Room(record)
        before = set(room.members)
        room.devices_digest = None  # its members or their devices changed
        room.changes += 1  # and a digest being read now is of before
        room.kind, room.owner, room.topic = record.kind, record.owner, record.topic
        room.members, room.invites, room.sanctions = record.members, record.invites, record.sanctions
        for user in before - set(room.members):
            self.user_rooms.get(user, set()).discard(name)
            for conn in self.online.get(user, ()):
                self._exit(room, conn)
        for user in set(room.members) - before:
            self.user_rooms.setdefault(user, set()).add(name)
            for conn in self.online.get(user, ()):
                self._enter(room, conn)

    def _enter(self, room: Room, conn: Member) -> None:
        """``conn`` gets ``room``'s events from now on."""
        if not room.online:
            self._follow(room.stream)
        room.online[conn] = None

    def _follow(self, stream: str) -> None:
        waiters: list[Deferred[None]] = []
        self._following[stream] = waiters

        def followed(position: int | None) -> None:
            # A shared hub tells where the stream is now (this process
            # may not have seen it for a while): catch-up starts there.
            if position is not None and position > self.last_ids.get(stream, 0):
                self.last_ids[stream] = position
            if self._following.get(stream) is waiters:
                del self._following[stream]
            for waiter in waiters:
                waiter.callback(None)

        self.hub.follow(stream).addCallback(followed).addErrback(
            lambda f: log.failure("following {stream} failed", f, stream=stream)
        )

    def _followed(self, streams: list[str]) -> Deferred[Any] | None:
        """Fires once every one of ``streams`` is followed (None: they are)."""
        waiting = []
        for stream in streams:
            waiters = self._following.get(stream)
            if waiters is not None:
                d: Deferred[None] = Deferred()
                waiters.append(d)
                waiting.append(d)
        return defer.gatherResults(waiting) if waiting else None

    def _exit(self, room: Room, conn: Member) -> None:
        if conn in room.online:
            del room.online[conn]
            if not room.online:
                self.hub.unfollow(room.stream)

    def _audit(
        self, actor: str, action: str, room: str | None, target: str | None, detail: str = ""
    ) -> Audit:
        """The audit record of an action: its row goes into the action's
        transaction, its log line is written once that has committed."""
        return Audit(self._now(), actor, action, room, target, detail)

    # --- sessions -------------------------------------------------------------

    @defer.inlineCallbacks
    def connect(self, member: Member) -> Any:
        """A member logged in: put it in its rooms (at its first login, the
        default room too, unless banned from it) and fire with the welcome's
        ``rooms`` and ``streams`` (last id per stream: what a reconnecting
        client catches up to).  Then call :meth:`push_undelivered`."""
        user = member.user
        assert user is not None
        self.online.setdefault(user, {})[member] = None
        arrived = self.hub.arrived(user)
        # From now on its direct messages come by push_undelivered, which
        # starts from the delivered marks, so they must not move meanwhile.
        syncing = self._syncing[member] = {stream for stream, _ in self.dms.get(user, {}).values()}
        if self.hub.shared:
            # Another process may have begun a conversation with this user,
            # or delivered some of it: what is stored is the truth.
            stored = yield self.storage.dm_streams(user)
            mine = self.dms.setdefault(user, {})
            for peer, (stream, delivered) in stored.items():
                if peer not in mine or mine[peer][1] < delivered:
                    mine[peer] = (stream, delivered)
                syncing.add(stream)
        if member.role == "admin":
            self.admins.add(user)
        first = user not in self.welcomed and not (yield self.storage.is_welcomed(user))
        lobby = self.rooms[self.default_room]
        # Only once: a user who leaves the default room, or is kicked from
        # it, stays out.  The mark commits with the join (or alone), so a
        # failed commit leaves the first login to come again.
        welcome = [("mark_welcomed", (user,))]
        if first and user not in lobby.members and not self._sanctioned(lobby, "ban", user):
            yield self._add_member(lobby, user, "member", welcome)
        elif first:
            yield self.storage.write(welcome)
        self.welcomed.add(user)
        for name in self.user_rooms.get(user, ()):
            self._enter(self.rooms[name], member)
        # With a shared hub: the welcome's positions are the ones delivery
        # goes on from, and its direct messages come here before the
        # offline ones are read.  (At once with the in-process hub.)
        if not arrived.called:
            yield arrived
        followed = self._followed([self.rooms[name].stream for name in self.user_rooms.get(user, ())])
        if followed is not None:
            yield followed
        streams = {
            self.rooms[name].stream: self.last_ids.get(self.rooms[name].stream, 0)
            for name in self.user_rooms.get(user, ())
        }
        for stream, _ in self.dms.get(user, {}).values():
            streams[stream] = self.last_ids.get(stream, 0)
        rooms = sorted(self.user_rooms.get(user, ()))
        return {
            "rooms": rooms,
            "streams": streams,
            "encrypted_rooms": [name for name in rooms if self.rooms[name].encrypted],
        }

    def disconnect(self, member: Member) -> None:
        user = member.user
        if user is None:
            return
        self._syncing.pop(member, None)
        if member.device is not None:
            self.inboxes.unbind(member, member.device)
        conns = self.online.get(user)
        if conns is None or member not in conns:
            return  # never connected, or already gone
        del conns[member]
        if not conns:
            del self.online[user]
        self.hub.left(user)
        for name in self.user_rooms.get(user, ()):
            self._exit(self.rooms[name], member)

    @defer.inlineCallbacks
    def push_undelivered(self, member: Member) -> Any:
        """Offline delivery, after the welcome: direct messages that arrived
        while the user had no connection, in order."""
        user = member.user
        assert user is not None  # delivered to logged-in members only
        for peer, (stream, delivered) in list(self.dms.get(user, {}).items()):
            while True:
                texts = yield self.storage.history(stream, delivered, None, HISTORY_PAGE_MAX)
                if not texts or member not in self._syncing:
                    break
                for text in texts:  # each on its own: records stay under the line limit
                    member.deliver(text.encode("utf-8"))
                delivered = json.loads(texts[-1])["id"]
                # Noted with the page, not after the last query: a shutdown
                # that comes between the two waits for this note's commit
                # (the journal is busy with it), so the user does not get
                # the page again at the next login.
                self._mark_delivered(user, peer, stream, delivered)
            self._syncing.get(member, set()).discard(stream)

    def _mark_delivered(self, user: str, peer: str, stream: str, event_id: int) -> None:
        known = self.dms.setdefault(user, {}).get(peer)
        if known is None or known[1] < event_id:
            self.dms[user][peer] = (stream, event_id)
            # Lags safely: after a crash the user may get a few direct
            # messages again at login, which clients drop by id.
            self.storage.note(("delivered", user, peer), ("set_dm_stream", (user, peer, stream, event_id)))

    # --- rooms ------------------------------------------------------------------

    def _add_member(
        self, room: Room, user: str, role: str, changes: Changes = (), undo: Callable[[], None] | None = None
    ) -> Deferred[dict]:
        invited = user in room.invites
        room.members[user] = role
        room.invites.discard(user)
        self.user_rooms.setdefault(user, set()).add(room.name)
        for conn in self.online.get(user, ()):
            self._enter(room, conn)

        def put_back() -> None:
            room.members.pop(user, None)
            if invited:
                room.invites.add(user)
            self.user_rooms.get(user, set()).discard(room.name)
            for conn in self.online.get(user, ()):
                self._exit(room, conn)
            if undo is not None:
                undo()

        joined: dict[str, Any] = {"type": "joined", "user": user}
        if room.encrypted:
            joined["encrypted"] = True  # so a new member's client knows before it sends
        return self._publish_room(
            room,
            joined,
            [*changes, ("set_member", (room.name, user, role, self._now()))],
            put_back,
        )

    def _remove_member(
        self, room: Room, user: str, event: dict[str, Any], changes: Changes = (), audit: Audit | None = None
    ) -> Deferred[dict]:
        """Publish ``event`` (which removes ``user``) and take them out.  An
        owner's room passes to an heir in the same transaction, whoever
        removed them (``part``, or an admin's ``kick`` or ``ban``)."""
        role = room.members.pop(user)
        self.user_rooms.get(user, set()).discard(room.name)

        def put_back() -> None:
            room.members[user] = role
            self.user_rooms.setdefault(user, set()).add(room.name)

        # Published first, and the user's connections leave the room only
        # after the commit, so they still get the event.
        changes = [("set_member", (room.name, user, None, self._now())), *changes]
        if audit is not None:
            changes.append(audit.row())
        d = self._publish_room(room, event, changes, put_back)
        if audit is not None:
            d.addCallback(audit.logged)
        if role == "owner":
            self._pass_ownership(room)

        def drop_connections(result: Any) -> Any:
            # The event was delivered to them; now they are out.
            if user not in room.members:
                for conn in self.online.get(user, ()):
                    self._exit(room, conn)
            return result

        return d.addCallback(drop_connections)

    def create_room(
        self, member: Member, name: str, kind: str, topic: str, encrypted: bool = False
    ) -> Deferred[dict]:
        user = member.user
        assert user is not None
        if name in self.rooms:
            raise ChatError("room_exists", f"room {name!r} exists already", "room")
        if len(self.user_rooms.get(user, ())) >= self.max_rooms_per_user:
            raise ChatError("too_many_rooms", f"you are in {self.max_rooms_per_user} rooms already")
        record = RoomRecord(name, kind, user, topic, {}, set(), {}, encrypted)
        room = self.rooms[name] = Room(record)
        audit = self._audit(user, "create", name, None, kind + (" encrypted" if encrypted else ""))

        def put_back() -> None:
            if self.rooms.get(name) is room:
                del self.rooms[name]

        # The room's row goes first: the membership refers to it.
        d = self._add_member(
            room,
            user,
            "owner",
            [("create_room", (name, kind, user, topic, self._now(), encrypted)), audit.row()],
            put_back,
        )
        return d.addCallback(audit.logged)

    def join(self, member: Member, name: str) -> Deferred[dict]:
        user = member.user
        assert user is not None
        room = self._room(name, member)
        if user in room.members:
            raise ChatError("already_member", f"you are in {name!r} already", "room")
        if self._sanctioned(room, "ban", user) and member.role != "admin":
            raise ChatError("banned", f"you are banned from {name!r}", "room")
        if room.kind == "private" and user not in room.invites and member.role != "admin":
            raise ChatError("no_such_room", f"there is no room {name!r}", "room")
        # The default room has no member cap: every account is put in it at
        # its first login, so a wave of registrations must not lock the
        # next newcomers (or anyone who left and comes back) out of it.
        if name != self.default_room and len(room.members) >= self.max_room_members:
            raise ChatError("room_full", f"room {name!r} is full", "room")
        if len(self.user_rooms.get(user, ())) >= self.max_rooms_per_user:
            raise ChatError("too_many_rooms", f"you are in {self.max_rooms_per_user} rooms already")
        return self._add_member(room, user, "member")

    def part(self, member: Member, name: str) -> Deferred[dict]:
        user = member.user
        assert user is not None
        room = self._room(name, member)
        if user not in room.members:
            raise ChatError("not_member", "you are not in that room", "room")
        return self._remove_member(room, user, {"type": "left", "user": user})

    def _pass_ownership(self, room: Room) -> None:
        """A room keeps an owner while it has members: the senior
        moderator, or else the senior member, inherits it.  Called when the
        owner has just been taken out of ``room.members``; the ``role``
        event commits in the same batch as the removal's."""
        heirs = [u for u, r in room.members.items() if r == "moderator"] or list(room.members)
        old_owner = room.owner
        if not heirs:
            room.owner = None
            self.storage.write([("set_owner", (room.name, None))]).addErrback(
                lambda f: (
                    None if f.check(StoreClosed) else log.failure("recording an ownerless room failed", f)
                )
            )
            return
        heir = heirs[0]
        heir_role = room.members[heir]
        room.owner = heir
        room.members[heir] = "owner"

        def put_back() -> None:
            room.owner = old_owner
            if heir in room.members:
                room.members[heir] = heir_role

        audit = self._audit("server", "role", room.name, heir, "owner")
        changes: list[Change] = [
            ("set_owner", (room.name, heir)),
            ("set_member", (room.name, heir, "owner", self._now())),
            audit.row(),
        ]
        d = self._publish_room(
            room, {"type": "role", "user": heir, "role": "owner", "by": None}, changes, put_back
        )
        d.addCallback(audit.logged)
        # Whoever asked for the removal learns of a failure from its own
        # event, which shares this one's transaction.
        d.addErrback(lambda f: None)

    def list_rooms(
        self, member: Member, after: str | None = None, limit: int = LIST_PAGE_MAX, budget: int = 1 << 62
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page of the rooms ``member`` may see, by name after ``after``:
        at most ``limit`` and at most ``budget`` bytes of JSON; and whether
        there are more."""
        mine = self.user_rooms.get(member.user or "", set())
        visible = [
            dict(room.summary(), member=room.name in mine)
            for room in sorted(self.rooms.values(), key=lambda r: r.name)
            if (after is None or room.name > after)
            and (room.listed() or room.name in mine or member.role == "admin" or member.user in room.invites)
        ]
        return _page(visible, limit, budget)

    def set_topic(self, member: Member, name: str, topic: str) -> Deferred[dict]:
        room = self._room(name, member)
        self._require_rank(member, room, "moderator", "set the topic")
        old = room.topic
        room.topic = topic

        def put_back() -> None:
            room.topic = old

        return self._publish_room(
            room,
            {"type": "topic", "topic": topic, "by": member.user},
            [("set_topic", (name, topic))],
            put_back,
        )

    def invite(self, member: Member, name: str, user: str) -> Deferred[dict]:
        room = self._room(name, member)
        self._require_rank(member, room, "moderator", "invite")
        if user in room.members:
            raise ChatError("already_member", f"{user} is in {name!r} already", "user")
        d = self.storage.user_exists(user)

        def invited(exists: bool) -> Any:
            if not exists:
                raise ChatError("no_such_user", f"there is no user {user!r}", "user")
            if user in room.members:
                raise ChatError("already_member", f"{user} is in {name!r} already", "user")
            already = user in room.invites
            room.invites.add(user)
            audit = self._audit(member.user or "?", "invite", name, user)
            written = self.storage.write(
                [("add_invite", (name, user, member.user, self._now())), audit.row()]
            )

            def stored(_: Any) -> dict[str, Any]:
                audit.logged(None)
                notice = channel.encode_event({"type": "invited", "room": name, "by": member.user})
                for conn in self.online.get(user, ()):
                    conn.deliver(notice)
                return {"type": "invited", "room": name, "user": user}

            def failed(failure: Failure) -> Failure:
                if not already:
                    room.invites.discard(user)
                return failure

            return written.addCallbacks(stored, failed)

        return d.addCallback(invited)

    def who(
        self,
        member: Member,
        name: str,
        after: str | None = None,
        limit: int = LIST_PAGE_MAX,
        budget: int = 1 << 62,
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page of the room's members by name after ``after`` (at most
        ``limit`` and ``budget`` bytes of JSON), and whether there are more."""
        room = self._room(name, member)
        if member.role != "admin":
            if member.user not in room.members and not room.listed():
                raise ChatError("not_member", "you are not in that room", "room")
            if self._sanctioned(room, "ban", member.user or ""):
                raise ChatError("banned", f"you are banned from {name!r}", "room")
        members = [
            {"user": user, "role": role, "online": self.hub.is_online(user)}
            for user, role in sorted(room.members.items())
            if after is None or user > after
        ]
        # Each member is counted twice: in ``members`` and in ``users``.
        return _page(members, limit, budget // 2)

    def say(
        self,
        member: Member,
        name: str,
        body: str | None,
        txn_id: str | None = None,
        resend: bool = False,
        e2e: dict[str, Any] | None = None,
    ) -> Deferred[dict]:
        """Post ``body``, or in an encrypted room the Megolm payload ``e2e``."""
        if txn_id is None:
            return self._say(member, name, body, None, e2e)  # no id: nothing to send once (the hot path)
        user = member.user
        assert user is not None
        return self.send_once(user, txn_id, resend, lambda txn: self._say(member, name, body, txn, e2e))

    def _say(
        self, member: Member, name: str, body: str | None, txn: str | None, e2e: dict[str, Any] | None
    ) -> Deferred[dict]:
        user = member.user
        assert user is not None
        room = self._room(name, member)
        if user not in room.members:
            raise ChatError("not_member", "you are not in that room", "room")
        if self._sanctioned(room, "mute", user):
            raise ChatError("muted", f"you are muted in {name!r}", "room")
        if room.kind == "readonly" and self._rank(member, room) < RANK["moderator"]:
            raise ChatError("read_only", f"{name!r} is read-only", "room")
        if e2e is None:
            if room.encrypted:
                raise ChatError("encrypted_room", f"{name!r} is end-to-end encrypted: send e2e", "body")
            return self._publish_room(room, {"type": "msg", "from": user, "body": body}, txn=txn)
        if not room.encrypted:
            raise ChatError("not_encrypted", f"{name!r} is not an encrypted room", "e2e")
        self._check_device(member, e2e)
        if room.devices_digest is not None:
            # The usual case: the digest is known, no Deferred to chain.
            return self._say_encrypted(room.devices_digest, member, room, e2e, txn)
        return self._room_devices(room).addCallback(self._say_encrypted, member, room, e2e, txn)

    def _check_device(self, member: Member, e2e: dict[str, Any]) -> None:
        if member.device is None:
            raise ChatError("no_device", "declare this connection's device (keys) first", "e2e")
        if e2e["device"] != member.device:
            raise ChatError("bad_field", "e2e: device is not this connection's device", "e2e")

    def _room_devices(self, room: Room) -> Deferred[tuple[str, dict[tuple[str, str], str]]]:
        """(digest, {(user, device): Curve25519 key}) of the room's members'
        devices: remembered until the members or their devices change."""
        if room.devices_digest is not None:
            return defer.succeed(room.devices_digest)
        seen = room.changes

        def read(found: dict[str, dict[str, str]]) -> tuple[str, dict[tuple[str, str], str]]:
            keys = {(user, device): key for user, devices in found.items() for device, key in devices.items()}
            answer = (e2e_names.devices_digest((u, d, k) for (u, d), k in keys.items()), keys)
            if room.changes == seen:  # nothing changed while it was read
                room.devices_digest = answer
            return answer

        return self.devices.keys_of(list(room.members)).addCallback(read)

    def _say_encrypted(
        self,
        devices: tuple[str, dict[tuple[str, str], str]],
        member: Member,
        room: Room,
        e2e: dict[str, Any],
        txn: str | None,
    ) -> Deferred[dict]:
        user = member.user
        assert user is not None
        digest, keys = devices
        _check_sender_key(keys.get((user, e2e["device"])), e2e)
        if e2e["devices"] != digest:
            raise ChatError("devices_changed", "the room's devices changed: share the room key again", "e2e")
        # The session id names the sender's device and key, which every
        # receiver has from the key share: fanning them out too made each
        # delivery 13% longer (Matrix dropped them from its events too).
        payload = {key: e2e[key] for key in ("algorithm", "session_id", "ciphertext")}
        return self._publish_room(room, {"type": "msg", "from": user, "e2e": payload}, txn=txn)

    def room_of(self, member: Member, name: str) -> Room:
        """A room whose members ``member`` may know: theirs (or any, for an admin)."""
        room = self._room(name, member)
        if member.user not in room.members and member.role != "admin":
            raise ChatError("not_member", "you are not in that room", "room")
        return room

    def audit_of(
        self, actor: str, action: str, room: str | None, target: str | None, detail: str = ""
    ) -> Audit:
        return self._audit(actor, action, room, target, detail)

    def devices_changed(self, user: str) -> None:
        """``user`` added or removed a device: every room of theirs, here
        and on the other processes, forgets its devices' digest."""
        for name in self.user_rooms.get(user, ()):
            room = self.rooms.get(name)
            if room is not None:
                room.devices_digest = None
                room.changes += 1  # a digest being read now is of before
                self.hub.invalidate(name)

    # --- direct messages --------------------------------------------------------

    def knows_peer(self, user: str, peer: str) -> bool:
        """Whether the two have a direct-message stream already (a dm to
        that peer needs no lookup of the name)."""
        return peer in self.dms.get(user, {})

    def direct(
        self,
        member: Member,
        to: str,
        body: str | None,
        txn_id: str | None = None,
        resend: bool = False,
        e2e: dict[str, Any] | None = None,
    ) -> Deferred[dict]:
        """Send ``body``, or the Olm payload ``e2e`` (one ciphertext per
        device of the two users but the sender's own)."""
        sender = member.user
        assert sender is not None
        return self.send_once(sender, txn_id, resend, lambda txn: self._direct(member, to, body, txn, e2e))

    def _direct_devices(self, member: Member, to: str, e2e: dict[str, Any]) -> Deferred[None]:
        """Fires if ``e2e`` has a ciphertext for exactly the devices it must."""
        sender = member.user
        assert sender is not None
        self._check_device(member, e2e)

        def check(found: dict[str, dict[str, str]]) -> None:
            _check_sender_key(found[sender].get(e2e["device"]), e2e)
            wanted = {(to, device) for device in found[to]}
            wanted |= {(sender, device) for device in found[sender] if device != e2e["device"]}
            given = {(user, device) for user, devices in e2e["ciphertext"].items() for device in devices}
            if given != wanted:
                raise ChatError("devices_changed", "the devices of this conversation changed", "e2e")

        return self.devices.keys_of([sender, to]).addCallback(check)

    def _direct(
        self, member: Member, to: str, body: str | None, txn: str | None, e2e: dict[str, Any] | None
    ) -> Deferred[dict]:
        sender = member.user
        assert sender is not None
        if to == sender:
            raise ChatError("bad_field", "you cannot message yourself", "to")
        stream = dm_stream(sender, to)
        known = to in self.dms.get(sender, {})
        d = defer.succeed(True) if known else self.storage.user_exists(to)

        def checked(exists: bool) -> Any:
            if not exists:
                raise ChatError("no_such_user", f"there is no user {to!r}", "to")
            if e2e is not None:
                return self._direct_devices(member, to, e2e)
            return None

        def send(_: Any) -> Deferred[dict]:
            changes: list[Change] = []
            added: list[tuple[str, str]] = []
            for a, b in ((sender, to), (to, sender)):
                if b not in self.dms.setdefault(a, {}):
                    # The stream becomes known to both users with its
                    # first event, in the same transaction: a direct
                    # message is never stored without the marks that
                    # deliver it.
                    self.dms[a][b] = (stream, 0)
                    changes.append(("set_dm_stream", (a, b, stream, 0)))
                    added.append((a, b))

            def put_back() -> None:
                for a, b in added:
                    if self.dms.get(a, {}).get(b) == (stream, 0):
                        del self.dms[a][b]

            event: dict[str, Any] = {"type": "dm", "from": sender, "to": to}
            if e2e is None:
                event["body"] = body
            else:
                event["e2e"] = e2e
            published = self.publish(stream, event, changes, put_back, users=(sender, to), txn=txn)

            def delivered(event: dict[str, Any]) -> dict[str, Any]:
                self._mark_delivered(sender, to, stream, event["id"])
                if any(stream not in self._syncing.get(c, ()) for c in self.online.get(to, ())):
                    self._mark_delivered(to, sender, stream, event["id"])
                return event

            return published.addCallback(delivered)

        return d.addCallback(checked).addCallback(send)

    # --- history ------------------------------------------------------------------

    def history(
        self,
        member: Member,
        stream: str,
        after: int | None,
        before: int | None,
        limit: int,
        budget: int = 1 << 62,
    ) -> Deferred[dict]:
        """A page of ``stream``: at most ``limit`` events and at most
        ``budget`` bytes of their JSON, so that the answer fits in a line."""
        user = member.user
        if stream.startswith("room:"):
            try:
                room = self._room(stream[5:], member)
            except ChatError as e:
                raise ChatError(e.code, e.message, "stream") from None
            if member.role != "admin":
                if user not in room.members and not room.listed():
                    raise ChatError("not_member", "you are not in that room", "stream")
                if self._sanctioned(room, "ban", user or ""):
                    raise ChatError("banned", f"you are banned from {room.name!r}", "stream")
        elif stream.startswith("dm:") and user in stream[3:].split(":") and len(stream.split(":")) == 3:
            pass
        else:
            raise ChatError("no_such_stream", f"no stream {stream[:80]!r} for you", "stream")
        limit = max(1, min(limit, HISTORY_PAGE_MAX))
        d = self.storage.history(stream, after, before, limit + 1)

        def page(texts: list[str]) -> dict[str, Any]:
            more = len(texts) > limit
            texts = texts[:limit] if after is not None else texts[-limit:]
            # Pages run forward from ``after``, or back from ``before``:
            # what does not fit is what the next page starts with.
            count = fit(texts, budget, newest_last=after is None)
            if count < len(texts):
                more = True
                texts = texts[:count] if after is not None else texts[len(texts) - count :]
            return {
                "type": "history",
                "stream": stream,
                "events": [json.loads(t) for t in texts],
                "more": more,
            }

        return d.addCallback(page)

    # --- moderation -----------------------------------------------------------------

    def _moderate(self, member: Member, name: str, target: str) -> Deferred[Room]:
        """The room, once ``member`` may moderate ``target`` in it.  The
        target's server role is read from the database, not from what was
        loaded at start: an admin made with the admin tool while the server
        runs must be protected before their first login."""
        room = self._room(name, member)
        self._require_rank(member, room, "moderator", "moderate")
        d = self.storage.get_user(target)

        def check(record: UserRecord | None) -> Room:
            if record is not None and record.role == "admin":
                self.admins.add(target)
            else:
                self.admins.discard(target)
            target_role = "admin" if target in self.admins else room.members.get(target)
            target_rank = RANK[target_role] if target_role else 0
            if target_rank >= self._rank(member, room):
                raise ChatError("forbidden", f"{target} outranks or equals you in {name!r}", "user")
            return room

        return d.addCallback(check)

    def kick(self, member: Member, name: str, target: str, reason: str) -> Deferred[dict]:
        def kick(room: Room) -> Deferred[dict]:
            if target not in room.members:
                raise ChatError("not_member", f"{target} is not in {name!r}", "user")
            return self._remove_member(
                room,
                target,
                {"type": "kicked", "user": target, "by": member.user, "reason": reason},
                audit=self._audit(member.user or "?", "kick", name, target, reason),
            )

        return self._moderate(member, name, target).addCallback(kick)

    def sanction(
        self, member: Member, name: str, target: str, kind: str, duration: float | None, reason: str
    ) -> Deferred[dict]:
        def impose(room: Room) -> Deferred[dict]:
            until = None if duration is None else self._now() + int(duration * 1000)
            key = (kind, target)
            had, before = key in room.sanctions, room.sanctions.get(key)
            room.sanctions[key] = until

            def put_back() -> None:
                if had:
                    room.sanctions[key] = before
                else:
                    room.sanctions.pop(key, None)

            audit = self._audit(member.user or "?", kind, name, target, reason)
            row = ("set_sanction", (name, target, kind, until, member.user, self._now()))
            event = {
                "type": "banned" if kind == "ban" else "muted",
                "user": target,
                "by": member.user,
                "until": until,
                "reason": reason,
            }
            if kind == "ban" and target in room.members:
                d = self._remove_member(room, target, event, [row], audit)

                def restore(failure: Failure) -> Failure:
                    put_back()
                    return failure

                d.addErrback(restore)
                return d
            d = self._publish_room(room, event, [row, audit.row()], put_back)
            return d.addCallback(audit.logged)

        return self._moderate(member, name, target).addCallback(impose)

    def lift(self, member: Member, name: str, target: str, kind: str) -> Deferred[dict]:
        def lift(room: Room) -> Deferred[dict]:
            key = (kind, target)
            if key not in room.sanctions:
                raise ChatError("not_sanctioned", f"{target} is not {kind}ned in {name!r}", "user")
            before = room.sanctions.pop(key)

            def put_back() -> None:
                room.sanctions[key] = before

            audit = self._audit(member.user or "?", "un" + kind, name, target)
            event = {"type": "unbanned" if kind == "ban" else "unmuted", "user": target, "by": member.user}
            changes = [("set_sanction", (name, target, kind, None, None, self._now())), audit.row()]
            return self._publish_room(room, event, changes, put_back).addCallback(audit.logged)

        return self._moderate(member, name, target).addCallback(lift)

    def set_role(self, member: Member, name: str, target: str, role: str) -> Deferred[dict]:
        room = self._room(name, member)
        self._require_rank(member, room, "owner", "appoint moderators")
        if target not in room.members:
            raise ChatError("not_member", f"{target} is not in {name!r}", "user")
        if room.members[target] == "owner":
            raise ChatError("forbidden", "the owner's role cannot be changed", "user")
        before = room.members[target]
        room.members[target] = role

        def put_back() -> None:
            if room.members.get(target) == role:
                room.members[target] = before

        audit = self._audit(member.user or "?", "role", name, target, role)
        changes = [("set_member", (name, target, role, self._now())), audit.row()]
        d = self._publish_room(
            room, {"type": "role", "user": target, "role": role, "by": member.user}, changes, put_back
        )
        return d.addCallback(audit.logged)

    def disable_account(self, member: Member, target: str, disabled: bool) -> Deferred[dict]:
        if member.role != "admin":
            raise ChatError("forbidden", "only an admin may disable accounts", "user")
        if target == member.user:
            raise ChatError("forbidden", "you cannot disable yourself", "user")
        audit = self._audit(member.user or "?", "disable" if disabled else "enable", None, target)
        # One transaction: the flag, the revoked tokens and the audit row.
        d = self.storage.set_disabled(target, disabled, audit.row())

        def done(found: bool) -> Any:
            if not found:
                raise ChatError("no_such_user", f"there is no user {target!r}", "user")
            audit.logged(None)
            if disabled:
                self.end_sessions(target, None, "account_disabled")
            return {"type": "account", "user": target, "disabled": disabled}

        return d.addCallback(done)
