"""The durable event log, with group commit.

``append`` returns a Deferred that fires once the event is committed to
SQLite.  Everything appended during one reactor turn, and everything
appended while a commit is running, goes into the next transaction, so
under load many events share one fsync while a lone event still commits at
once.  Batches commit in order and their Deferreds fire in append order, so
whoever fans out after the commit does so in id order.

An event may carry the state changes it stands for (a ``joined`` event the
new membership row, a ``topic`` event the new topic): they run in the same
transaction as the event, so an acknowledged change is stored exactly when
its event is, and a failed commit stores neither.  ``write`` commits state
changes that have no event (an invitation) the same way.

``note`` adds bookkeeping that may lag behind (how far each user has
received a direct-message stream) to the next batch instead of a
transaction and an fsync of its own; a later note with the same key
replaces an earlier one that is still waiting.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatserver import store
from chatserver.store import Store

log = Logger(namespace="chatserver.journal")

#: State changes that belong to an event: ``(query, args)`` pairs.
Changes = Sequence[tuple[Callable[..., Any], tuple[Any, ...]]]


class EventLog:
    def __init__(self, db: Store, reactor: Any, metrics: Any = None) -> None:
        self._db = db
        self._reactor = reactor
        self._metrics = metrics
        #: (event row or None, its state changes, fired after the commit)
        self._queue: list[tuple[tuple[str, int, int, str] | None, Changes, Deferred[None]]] = []
        self._notes: dict[Any, tuple[Any, tuple[Any, ...]]] = {}
        self._idle_waiters: list[Deferred[None]] = []
        self._busy = False  # a commit is scheduled or running
        self.commits = 0
        self.events_committed = 0

    def append(
        self, stream: str, event_id: int, ts: int, event_json: str, changes: Changes = ()
    ) -> Deferred[None]:
        """Commit the event and ``changes`` (``(query, args)`` pairs, each
        run as ``query(cursor, *args)``) in the next transaction."""
        d: Deferred[None] = Deferred()
        self._queue.append(((stream, event_id, ts, event_json), changes, d))
        self._schedule()
        return d

    def write(self, changes: Changes) -> Deferred[None]:
        """Commit state changes that publish no event, in the next batch."""
        d: Deferred[None] = Deferred()
        self._queue.append((None, changes, d))
        self._schedule()
        return d

    def note(self, key: Any, query: Any, *args: Any) -> None:
        """Run ``query(cursor, *args)`` in the next batch's transaction."""
        self._notes[key] = (query, args)
        self._schedule()

    def _schedule(self) -> None:
        if not self._busy:
            self._busy = True
            # Let the rest of this reactor turn join the batch.
            self._reactor.callLater(0, self._commit)

    def _commit(self) -> None:
        batch, self._queue = self._queue, []
        notes, self._notes = list(self._notes.values()), {}
        rows = [row for row, _, _ in batch if row is not None]
        changes = [change for _, entry_changes, _ in batch for change in entry_changes]
        d = self._db.run(store.commit_batch, rows, changes, notes)
        d.addBoth(self._committed, batch, self._reactor.seconds())

    def _committed(
        self, result: Any, batch: list[tuple[Any, Changes, Deferred[None]]], started: float
    ) -> None:
        failed = isinstance(result, Failure)
        if self._metrics is not None and not failed:
            self._metrics.commit_took(self._reactor.seconds() - started)
        if failed and result.check(store.StoreClosed):
            # Stopping, or the database is gone (logged once, by the store):
            # one line per batch, not a traceback each.
            log.warn("event log commit refused ({count} entries): {why}", count=len(batch), why=result.value)
        elif failed:
            log.failure("event log commit failed ({count} events)", result, count=len(batch))
        else:
            self.commits += 1
            self.events_committed += len(batch)
        for _, _, d in batch:
            if failed:
                d.errback(result)
            else:
                d.callback(None)
        if self._queue or self._notes:
            self._commit()
        else:
            self._busy = False
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def idle(self) -> Deferred[None]:
        """Fires once everything appended so far is committed (or failed)."""
        if not self._busy:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle_waiters.append(d)
        return d
