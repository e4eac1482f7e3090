"""How committed events reach the processes whose sessions follow them: the
``Hub`` interface.

A process hands the hub each event after its commit (``publish``), says
which streams its sessions follow (``follow``) and which of its users are
online (``arrived``/``left``), and is told through its ``Receiver`` of the
events and room changes that concern it.  ``hub/local.py`` implements it in
process, ``hub/redis.py`` over Redis pub/sub for several processes and
nodes, and both are held to the same contract suite (tests/contract_hub.py).  Hence the
contract is that of a network, not of a function call:

* A process's own publications reach its own receiver, whatever it
  follows (its publisher's session is there); the others' reach it for
  the streams it follows and the users online on it.
* Delivery is asynchronous: ``publish`` may return before or after the
  receivers are told.  Nothing may depend on either.
* At least once, never out of order: the hub may see an event twice, or a
  later one first (a reconnection, two publishers).  Every event carries
  its stream id, and each process's hub drops what it has delivered and
  holds an event that comes early until the gap before it has been filled
  from storage (``hub/ordering.py``).  So a ``Receiver`` sees each followed
  stream exactly once and in id order, from where it started following.
* An event is published only after its commit, so storage always has what
  a gap needs.
* ``follow`` fires once the stream's events will be delivered here, with
  the stream's last id at that moment (from storage), or None if the
  process's own count is exact (the in-process hub): delivery goes on
  from exactly there.  ``arrived`` fires once the user's direct messages
  will be delivered here.  A session's catch-up starts after both.
* Presence is per process: a user is online while some process has said
  ``arrived`` more often than ``left`` for them (and, across machines, is
  alive: Redis's heartbeats expire).
* ``invalidate`` tells every *other* process that a room's state (members,
  sanctions, topic) changed under its cache; the process that changed it
  already knows.
* ``close_sessions`` tells every *other* process to close a user's
  sessions (a disabled account), or those of one of their devices (a
  removed device); the process that decided it closes its own.  A
  process whose link was down may have missed some: the hub then asks it
  to ``recheck_sessions`` against storage, as it reloads its rooms.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from twisted.internet.defer import Deferred


class Receiver(Protocol):
    """What a process is told by its hub."""

    def deliver(self, stream: str, event_id: int, encoded: bytes) -> None:
        """A committed event (its JSON, UTF-8), in id order per stream."""
        ...

    def room_changed(self, room: str) -> None:
        """Another process changed ``room``'s state: reload it."""
        ...

    def close_sessions(self, user: str, device: str | None, code: str) -> None:
        """Another process decided that ``user``'s sessions here (only
        those of ``device``, if given) end, with CLOSE ``code``."""
        ...

    def recheck_sessions(self) -> None:
        """Closings sent while this process's link was down may be lost:
        check the sessions here against storage."""
        ...


class Hub(Protocol):
    """One process's connection to the others."""

    #: This process's name, as ``where`` reports it.
    name: str
    #: Whether other processes share it (then state this process caches,
    #: such as a user's direct-message streams, is read again at login).
    shared: bool
    #: Where the processes count rate limits and login failures together
    #: (``hub/counters.py``), or None: each process counts its own.
    counters: Any

    def start(self, receiver: Receiver, positions: dict[str, int]) -> Deferred[None]:
        """Connect; from now on tell ``receiver``.  ``positions`` is the
        last id already delivered (or loaded) per stream."""
        ...

    def stop(self) -> Deferred[None]: ...

    def follow(self, stream: str) -> Deferred[int | None]:
        """Some session here wants ``stream``'s events from now on; fires
        when they come, with the last id before them (None: unchanged)."""
        ...

    def unfollow(self, stream: str) -> None:
        """No session here wants ``stream`` any more."""
        ...

    def publish(self, stream: str, event_id: int, encoded: bytes, users: Sequence[str] = ()) -> None:
        """A committed event, for every process that follows ``stream``
        and every process where one of ``users`` is online (a direct
        message reaches its recipient wherever they are)."""
        ...

    def arrived(self, user: str) -> Deferred[None]:
        """A session of ``user`` logged in here; fires when its direct
        messages come here."""
        ...

    def left(self, user: str) -> None:
        """A session of ``user`` here ended."""
        ...

    def is_online(self, user: str) -> bool:
        """Whether ``user`` has a session on any process."""
        ...

    def online_count(self) -> int:
        """How many users have a session on any process."""
        ...

    def where(self, user: str) -> set[str]:
        """The names of the processes where ``user`` has a session."""
        ...

    def invalidate(self, room: str) -> None:
        """``room``'s state changed here: tell the other processes."""
        ...

    def close_sessions(self, user: str, device: str | None, code: str) -> None:
        """Tell the other processes to close ``user``'s sessions (only those
        of ``device``, if given) with CLOSE ``code``."""
        ...
