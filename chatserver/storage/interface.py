"""What the chat core asks of its database: the ``Storage`` interface.

The core (chat, accounts, tickets) speaks only these methods, the records
and the change vocabulary below; no SQL, no cursors.  ``storage/sqlite.py``
implements it today and a PostgreSQL implementation is planned; both are
held to the same contract suite (tests/contract_storage.py).

The contract, beyond each method's docstring:

* Every method returns a Deferred and never blocks the event loop for
  longer than a small point read.
* ``append`` commits an event with the state changes it stands for in one
  transaction, and the *commit* gives the event its id: the next of its
  stream, with no gaps and no duplicates, in the order of the ``append``
  calls.  Until that Deferred fires nothing about the event may be shown
  to anyone; when it fails, nothing of it was stored and no id was used.
* Appends made close together share one commit (group commit); a lone one
  still commits at once.
* ``note`` is bookkeeping that may lag behind (how far a user has received
  a stream): it rides on the next commit, the latest note per key wins.
* Reads see every commit whose Deferred has fired.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, Sequence

from twisted.internet.defer import Deferred

#: One state change, named and with its arguments, as the core writes it;
#: each implementation knows how to apply every name in ``CHANGES``.
Change = tuple[str, tuple[Any, ...]]
Changes = Sequence[Change]

#: The state changes an event (or ``write``) may carry, with their arguments.
CHANGES = {
    "create_room": "(name, kind, owner or None, topic, now ms)",
    "ensure_room": "(name, kind, owner or None, topic, now ms); nothing if the room exists",
    "set_member": "(room, user, role or None to remove, now ms); also drops the user's invite",
    "set_owner": "(room, owner or None)",
    "set_topic": "(room, topic)",
    "add_invite": "(room, user, invited by, now ms)",
    "set_sanction": "(room, user, ban|mute, until ms or None, by or None to lift, now ms)",
    "mark_welcomed": "(user,): the first login has happened",
    "set_dm_stream": "(user, peer, stream, delivered id); the delivered id only grows",
    "add_audit": "(now ms, actor, action, room or None, target or None, detail)",
    "drop_inbox": "(stream, up to id): a device confirmed its inbox's events up to that id",
    "set_last_login": "(user, now s): the account logged in (password or token)",
    "delete_room": "(room,): the room, its members, invites, sanctions and history; "
    "the stream's last id stays, so a room made again under the name goes on from it",
    "drop_history": "(room,): the history of a room that no longer exists (events that were "
    "being published in it while it was deleted)",
}


class UnusableDatabase(Exception):
    """The database cannot be served (missing where there was one,
    damaged, unreachable, of a newer schema ...).  The message is one line
    for the operator, naming the database and what to do."""


class StoreClosed(Exception):
    """The storage was asked for something while it is not running."""


class DatabaseLost(StoreClosed):
    """The database went away under the running server (a file deleted or
    replaced): nothing more may be acknowledged into it."""


class DatabaseUnreachable(StoreClosed):
    """A database server did not answer (down, restarting, or the network
    between): this request failed, and nothing of it was acknowledged, but
    the next one may succeed.  ``retry_after``: seconds a client should
    wait before trying again."""

    retry_after = 2.0


@dataclasses.dataclass(frozen=True)
class UserRecord:
    name: str
    password_hash: str
    role: str
    disabled: bool


@dataclasses.dataclass
class RoomRecord:
    name: str
    kind: str
    owner: str | None
    topic: str
    members: dict[str, str]  # user -> role, in joining order
    invites: set[str]
    sanctions: dict[tuple[str, str], int | None]  # (kind, user) -> until (ms) or None
    encrypted: bool = False


@dataclasses.dataclass(frozen=True)
class InviteRecord:
    """A registration invite (never its code: only the code's hash is kept)."""

    id: int
    created_by: str
    created_at: int
    expires_at: int
    used_by: str | None
    used_at: int | None
    revoked_at: int | None

    def state(self, now: int) -> str:
        """``used``, ``revoked``, ``expired`` or ``usable`` at ``now``."""
        if self.used_at is not None:
            return "used"
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= now:
            return "expired"
        return "usable"


@dataclasses.dataclass(frozen=True)
class DeviceRecord:
    """A device in the directory: its public identity keys as it signed
    them (the server checked the signature; clients check it again)."""

    user: str
    device: str
    name: str
    curve25519: str
    ed25519: str
    signature: str
    created_at: int


@dataclasses.dataclass(frozen=True)
class ClaimedKey:
    """A device's one-time key (or its fallback key), handed out for one
    Olm session."""

    user: str
    device: str
    key_id: str
    key: str
    signature: str
    fallback: bool


#: Keys as a device uploads them: (key id, key, signature).
SignedKey = tuple[str, str, str]


#: A ticket key: (id, secret, created_at).
TicketKey = tuple[int, bytes, int]


class Storage(Protocol):
    """The chat core's database."""

    # --- accounts --------------------------------------------------------

    def get_user(self, name: str) -> Deferred[UserRecord | None]: ...

    def user_exists(self, name: str) -> Deferred[bool]: ...

    def add_user(self, name: str, password_hash: str, role: str) -> Deferred[bool]:
        """Create an account; False if the name is taken."""
        ...

    def register_with_invite(
        self, code_hash: str, name: str, password_hash: str, now: int
    ) -> Deferred[tuple[str, int | None]]:
        """In one transaction: check the invite, create the account and use
        the invite up, with an audit row.  (``ok``, invite id);
        (``invite_invalid``, None) for a code unknown, used, revoked or
        expired; (``username_taken``, id), the invite staying unused."""
        ...

    def set_disabled(self, user: str, disabled: bool, audit: Change) -> Deferred[bool]:
        """Disable (revoking every token) or enable an account, with its
        audit row, in one transaction; False if there is no such user."""
        ...

    # --- session tokens and resumption tickets ---------------------------

    def add_token(self, token_hash: str, user: str, now: int, expires_at: int) -> Deferred[None]: ...

    def token_account(self, token_hash: str, now: int) -> Deferred[UserRecord | None]:
        """The account of a live (unexpired) session token."""
        ...

    def revoke_token(self, token_hash: str) -> Deferred[None]: ...

    def ticket_keys(self) -> Deferred[list[TicketKey]]:
        """Every ticket key, oldest first."""
        ...

    def rotate_ticket_keys(self, secret: bytes, now: int, drop_before: int) -> Deferred[list[TicketKey]]:
        """Add a key, drop the keys made before ``drop_before`` and the
        redeemed tickets expired at ``now``; the keys as they are now."""
        ...

    def ticket_state(
        self, ticket_hash: bytes, token_hash: str, now: int
    ) -> Deferred[tuple[UserRecord | None, bool]]:
        """(the account of the ticket's live session token or None, whether
        the ticket was redeemed before): reads only."""
        ...

    def add_redeemed_tickets(self, rows: list[tuple[bytes, int]]) -> Deferred[None]:
        """Remember redeemed tickets as (hash, expires_at), many at once."""
        ...

    # --- what the core loads at start ------------------------------------

    def load_rooms(self) -> Deferred[dict[str, RoomRecord]]: ...

    def load_stream_ids(self) -> Deferred[dict[str, int]]:
        """The last committed id of every stream."""
        ...

    def load_dm_streams(self) -> Deferred[dict[str, dict[str, tuple[str, int]]]]:
        """user -> {peer: (stream, delivered id)}"""
        ...

    def find_sent(self, txn: str) -> Deferred[str | None]:
        """The event (its JSON) first stored with the sender's id ``txn``
        (the ``_txn`` member of an appended event: stored beside it, not in
        its JSON), or None."""
        ...

    def dm_streams(self, user: str) -> Deferred[dict[str, tuple[str, int]]]:
        """One user's {peer: (stream, delivered id)}, as stored now."""
        ...

    def load_admins(self) -> Deferred[set[str]]: ...

    def load_welcomed(self) -> Deferred[set[str]]:
        """The users whose first login has happened."""
        ...

    def is_welcomed(self, name: str) -> Deferred[bool]:
        """Whether the first login has happened (True for no such user)."""
        ...

    # --- the device directory (end-to-end encryption) ---------------------

    def devices(self, users: Sequence[str]) -> Deferred[dict[str, list[DeviceRecord]]]:
        """The devices of each of ``users`` (oldest first; a user with none,
        or no such user, is absent)."""
        ...

    def event_counts(self, streams: Sequence[str]) -> Deferred[dict[str, int]]:
        """How many committed events each of ``streams`` holds (a stream
        with none is absent): how full a device inbox is."""
        ...

    def put_device(
        self,
        user: str,
        device: str,
        name: str | None,
        identity: tuple[str, str, str] | None,
        keys: Sequence[SignedKey],
        fallback: SignedKey | None,
        now: int,
        max_devices: int,
        max_keys: int,
    ) -> Deferred[tuple[str, int]]:
        """In one transaction: add the device (``identity`` is (Curve25519,
        Ed25519, signature)) or find it, set its name if given, add the
        one-time keys it does not have and replace its fallback key.
        (``ok``, its one-time keys now); (``removed``, 0) for a removed
        device's id; (``conflict``, 0) if it exists with
        other identity keys, (``unknown``, 0) if it does not exist and no
        identity came, (``too_many_devices``, 0) if the user has
        ``max_devices`` already, (``too_many_keys``, n) if it would hold
        more than ``max_keys``: then nothing changed."""
        ...

    def claim_keys(self, wanted: Sequence[tuple[str, str]]) -> Deferred[list[ClaimedKey]]:
        """For each (user, device): one of its one-time keys, which no one
        else will get, or else its fallback key; none if it has neither."""
        ...

    def remove_device(self, user: str, device: str, now: int, audit: Change | None) -> Deferred[bool]:
        """Remove a device: delete its keys and its inbox's events and keep
        it as a tombstone (``put_device`` answers ``removed`` for its id
        from now on), with its audit row, in one transaction; False if
        there was no such device (or it was removed before)."""
        ...

    # --- the event log ---------------------------------------------------

    def append(self, event: dict[str, Any], changes: Changes = ()) -> Deferred[str]:
        """Commit ``event`` (which has ``stream`` and ``ts``; its ``id`` is
        set here, in place, by the commit) with ``changes``; fires with the
        event's JSON text as stored, once committed."""
        ...

    def write(self, changes: Changes) -> Deferred[None]:
        """Commit state changes that have no event, in the next batch."""
        ...

    def note(self, key: Any, change: Change) -> None:
        """Apply ``change`` with the next commit; a later note with the
        same ``key`` replaces one still waiting."""
        ...

    def idle(self) -> Deferred[None]:
        """Fires once everything appended or written so far is settled."""
        ...

    def history(self, stream: str, after: int | None, before: int | None, limit: int) -> Deferred[list[str]]:
        """Events' JSON texts of ``stream`` ascending by id: with ``after``
        the first ``limit`` after it (and before ``before``, if given);
        otherwise the last ``limit`` before ``before`` (or the newest)."""
        ...
