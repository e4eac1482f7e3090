"""The durable event log, with group commit: the part of ``Storage`` that
is the same for every database.

``append`` returns a Deferred that fires once the event is committed.
The commit gives each event its id, in one of two ways.  With one writer
(SQLite), when a batch is formed every event in it takes the next id of
its stream from memory, in append order; if the batch fails, those ids are
given back, so a stream's ids have no gaps.  With several writers
(PostgreSQL, ``ids_in_commit``), the batch's transaction takes them from
the database, under the stream's row lock, and a rolled-back transaction
takes none; the events' JSON texts are then made there too.

Everything appended during one reactor turn, and everything appended while
a commit is running, goes into the next transaction, so under load many
events share one fsync while a lone event still commits at once.  Batches
commit in order and their Deferreds fire in append order, so whoever fans
out after the commit does so in id order.

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

from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatserver.storage.interface import Change, Changes, StoreClosed
from chatserver.wire.channel import json_text

log = Logger(namespace="chatserver.journal")

#: An event row as it is committed: (stream, id, ts, JSON text).
Row = tuple[str, int, int, str]
#: Runs one batch in one transaction: (rows, changes, notes) -> Deferred.
CommitBatch = Callable[[list[Row], list[Change], list[Change]], "Deferred[Any]"]
#: The same with ``ids_in_commit``: (events without ids, changes, notes) ->
#: Deferred of each event's (id, JSON text with that id), in order.  The
#: events themselves are left alone: the log sets their ids once committed.
CommitEvents = Callable[[list[dict[str, Any]], list[Change], list[Change]], "Deferred[list[tuple[int, str]]]"]


class EventLog:
    def __init__(
        self,
        commit_batch: CommitBatch | CommitEvents,
        reactor: Any,
        metrics: Any = None,
        *,
        ids_in_commit: bool = False,
    ) -> None:
        self._commit_batch: Any = commit_batch
        self.ids_in_commit = ids_in_commit
        self._reactor = reactor
        self.metrics = metrics
        #: The last committed id of each stream (see ``start``).
        self.heads: dict[str, int] = {}
        #: (event or None, its state changes, fired after the commit)
        self._queue: list[tuple[dict[str, Any] | None, Changes, Deferred[Any]]] = []
        self._notes: dict[Any, Change] = {}
        self._idle_waiters: list[Deferred[None]] = []
        self._busy = False  # a commit is scheduled or running
        self.commits = 0
        self.events_committed = 0

    def append(self, event: dict[str, Any], changes: Changes = ()) -> Deferred[str]:
        """Commit ``event`` and ``changes`` in the next transaction; fires
        with the event's JSON text (its ``id`` set) once committed."""
        d: Deferred[str] = Deferred()
        self._queue.append((event, changes, d))
        self._schedule()
        return d

    def write(self, changes: Changes) -> Deferred[None]:
        """Commit state changes that publish no event, in the next batch."""
        d: Deferred[None] = Deferred()
        self._queue.append((None, changes, d))
        self._schedule()
        return d

    def note(self, key: Any, change: Change) -> None:
        """Apply ``change`` in the next batch's transaction."""
        self._notes[key] = change
        self._schedule()

    def _schedule(self) -> None:
        if not self._busy:
            self._busy = True
            # Let the rest of this reactor turn join the batch.
            self._reactor.callLater(0, self._commit)

    def _commit(self) -> None:
        batch, self._queue = self._queue, []
        notes, self._notes = list(self._notes.values()), {}
        if self.ids_in_commit:
            self._commit_assigning(batch, notes)
            return
        # The ids, here, where the batch is formed: only one batch is ever
        # in flight, so these are the next ids, and a failure gives back
        # exactly these.
        heads = self.heads
        given_back: dict[str, int] = {}
        rows: list[Row] = []
        texts: list[str | None] = []
        #: The senders' ids of the events that have one (``_txn``: not part
        #: of the event's JSON), written with them.
        txns: list[Change] = []
        for event, _, _ in batch:
            if event is None:
                texts.append(None)
                continue
            stream = event["stream"]
            last = heads.get(stream, 0)
            given_back.setdefault(stream, last)
            heads[stream] = event["id"] = last + 1
            txn = event.pop("_txn", None)
            if txn is not None:
                txns.append(("set_txn", (txn, stream, last + 1)))
            text = json_text(event)
            rows.append((stream, last + 1, event["ts"], text))
            texts.append(text)
        changes = [change for _, entry_changes, _ in batch for change in entry_changes] + txns
        d: Deferred[Any] = self._commit_batch(rows, changes, notes)
        d.addBoth(self._committed, batch, texts, given_back, self._reactor.seconds())

    def _commit_assigning(self, batch: list[tuple[Any, Changes, Deferred[Any]]], notes: list[Change]) -> None:
        events = [event for event, _, _ in batch if event is not None]
        changes = [change for _, entry_changes, _ in batch for change in entry_changes]

        def done(result: Any) -> None:
            texts: list[str | None] = [None] * len(batch)
            if not isinstance(result, Failure):
                placed = iter(result)
                for at, (event, _, _) in enumerate(batch):
                    if event is not None:
                        event["id"], texts[at] = next(placed)
                        event.pop("_txn", None)
            self._committed(result, batch, texts, {}, started)

        started = self._reactor.seconds()
        d: Deferred[Any] = self._commit_batch(events, changes, notes)
        d.addBoth(done)

    def _committed(
        self,
        result: Any,
        batch: list[tuple[Any, Changes, Deferred[Any]]],
        texts: list[str | None],
        given_back: dict[str, int],
        started: float,
    ) -> None:
        failed = isinstance(result, Failure)
        if self.metrics is not None and not failed:
            self.metrics.commit_took(self._reactor.seconds() - started)
        if failed:
            self.heads.update(given_back)
        if failed and result.check(StoreClosed):
            # Stopping, or the database is gone (logged once, by the store):
            # one line per batch, not a traceback each.
            log.warn("event log commit refused ({count} entries): {why}", count=len(batch), why=result.value)
        elif failed:
            log.failure("event log commit failed ({count} events)", result, count=len(batch))
        else:
            self.commits += 1
            self.events_committed += len(batch)
        for (_, _, d), text in zip(batch, texts, strict=True):
            if failed:
                d.errback(result)
            else:
                d.callback(text)
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


class EventLogMethods:
    """The four ``Storage`` methods that are the event log's, for a
    storage whose ``events`` is an :class:`EventLog`."""

    events: EventLog

    def append(self, event: dict[str, Any], changes: Changes = ()) -> Deferred[str]:
        return self.events.append(event, changes)

    def write(self, changes: Changes) -> Deferred[None]:
        return self.events.write(changes)

    def note(self, key: Any, change: Change) -> None:
        self.events.note(key, change)

    def idle(self) -> Deferred[None]:
        return self.events.idle()
