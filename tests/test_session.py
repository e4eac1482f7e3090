"""The session and its handlers, driven with no socket.

A ``Session`` needs only a ``Link`` of its connection; here that is
``RecordingLink``, which keeps what the session would have sealed and
sent, and which reads it has held.  The chat core under it is the real
one (a real SQLite file, the in-process hub); the clock of timeouts and
rate limits and the reactor of "next turn" calls are one ``task.Clock``,
so a test says exactly when a turn ends.  The database thread answers on
the real reactor, so tests wait for answers with ``until``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet import reactor, task
from twisted.trial import unittest

from chatserver.accounts import Accounts
from chatserver.chat import ChatService
from chatserver.handlers import table
from chatserver.hub.local import LocalHub
from chatserver.identity import load_or_create
from chatserver.protocol import ChatFactory
from chatserver.session import Session
from chatserver.storage.sqlite import SqliteStorage
from chatserver.wire import crypto
from chatserver.wire.validation import REQUESTS
from chatserver.workers import CryptoPool
from tests.support import PASSWORD, install_identity, make_settings, until


class RecordingLink:
    """A connection as the session sees it, keeping what it is given."""

    def __init__(self, peer: str = "192.0.2.7", max_plaintext: int = 60_000) -> None:
        self.peer = peer
        self.max_plaintext = max_plaintext
        self.channel: Any = None  # no secure channel: no resumption ticket
        self.records: list[list[dict[str, Any]]] = []
        self.holds: set[str] = set()
        self.closed: tuple[str, str] | None = None
        self.logins = 0

    def hold(self, reason: str) -> None:
        self.holds.add(reason)

    def release(self, reason: str) -> None:
        self.holds.discard(reason)

    def write_plaintext(self, plaintext: bytes) -> None:
        self.records.append(json.loads(plaintext))

    def close(self, code: str, message: str) -> None:
        self.closed = (code, message)

    def logged_in(self) -> None:
        self.logins += 1

    def events(self) -> list[dict[str, Any]]:
        return [event for record in self.records for event in record]

    def answers(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["type"] == kind]


class SessionTests(unittest.TestCase):
    async def setUp(self) -> None:
        base = Path(self.mktemp())
        self.settings = make_settings(base, messages_rate=1.0, messages_burst=2, abuse_strikes=3)
        install_identity(self.settings.data_path)
        identity, _ = load_or_create(self.settings.data_path / "server_key.pem")
        self.clock = task.Clock()
        self.storage = SqliteStorage(self.settings.database_path, "NORMAL", create=True, reactor=reactor)
        self.storage.startService()
        self.addCleanup(self.storage.stopService)
        self.chat = ChatService(self.storage, LocalHub(self.storage.history), self.clock)
        await self.chat.load()
        pool = CryptoPool(reactor, 1, 8)  # password hashes, in a thread
        pool.startService()
        self.addCleanup(pool.stopService)
        self.factory = ChatFactory(
            self.settings,
            identity,
            self.chat,
            Accounts(self.settings, self.storage, pool, self.clock),
            pool,
            self.clock,
            self.clock,  # "next turn" calls run when the test advances the clock
        )

    async def logged_in(self, name: str, role: str = "user") -> tuple[Session, RecordingLink]:
        """A session that has registered (or, for an admin made beforehand,
        logged in) through its requests, and been welcomed."""
        link = RecordingLink()
        session = Session(self.factory, link)
        if role == "admin":
            password_hash = crypto.hash_password(PASSWORD, self.settings.password_hash_cost)
            self.assertTrue(await self.storage.add_user(name, password_hash, "admin"))
            request = {"type": "login", "user": name, "password": PASSWORD}
        else:
            request = {"type": "register", "user": name, "password": PASSWORD}
        welcome = await self.answer(session, link, request)
        self.assertEqual((welcome["type"], welcome["user"], welcome["role"]), ("welcome", name, role))
        self.assertEqual(link.logins, 1)
        return session, link

    async def answer(self, session: Session, link: RecordingLink, request: dict[str, Any]) -> dict[str, Any]:
        """Send one request and wait for its answer (matched by ref)."""
        ref = len(link.events()) + 1000
        session.receive([dict(request, ref=ref)])

        def answered() -> bool:
            self.clock.advance(0)  # the end of the turn: the outbox is flushed
            return any(e.get("ref") == ref for e in link.events())

        await until(answered)
        [found] = [e for e in link.events() if e.get("ref") == ref]
        return found

    def test_every_request_type_has_the_handler_of_its_area(self) -> None:
        handlers = table(self.factory)
        self.assertEqual(set(handlers), set(REQUESTS))
        areas = {kind: type(handler.__self__).__name__ for kind, handler in handlers.items()}  # type: ignore[attr-defined]
        self.assertEqual(areas["login"], "AccountHandlers")
        self.assertEqual(areas["history"], "RoomHandlers")
        self.assertEqual(areas["dm"], "DirectHandlers")
        self.assertEqual(areas["ban"], "ModerationHandlers")
        self.assertEqual(areas["stats"], "StatsHandlers")

    async def test_a_request_before_login_is_refused_without_touching_the_core(self) -> None:
        link = RecordingLink()
        session = Session(self.factory, link)
        session.receive([{"type": "say", "room": "lobby", "body": "hi", "ref": 1}])
        self.clock.advance(0)
        [error] = link.events()
        self.assertEqual((error["type"], error["code"], error["ref"]), ("error", "not_authenticated", 1))
        self.assertIsNone(session.user)

    async def test_say_is_acknowledged_after_its_broadcast_and_in_one_record(self) -> None:
        alice, link = await self.logged_in("alice")
        link.records.clear()
        ack = await self.answer(alice, link, {"type": "say", "room": "lobby", "body": "hello"})
        self.assertEqual(ack["type"], "ack")
        kinds = [e["type"] for e in link.events()]
        # Her own message reaches her before its acknowledgement.
        self.assertLess(kinds.index("msg"), kinds.index("ack"))
        [msg] = link.answers("msg")
        self.assertEqual((msg["id"], msg["body"]), (ack["id"], "hello"))

    async def test_answers_leave_in_the_order_the_requests_came(self) -> None:
        alice, link = await self.logged_in("alice")
        link.records.clear()
        # The say waits for its commit; the ping after it is done at once,
        # but its answer waits behind the say's.
        alice.receive(
            [
                {"type": "say", "room": "lobby", "body": "first", "ref": "a"},
                {"type": "ping", "ref": "b"},
                {"type": "who", "room": "lobby", "ref": "c"},
            ]
        )
        self.clock.advance(0)

        def all_three() -> bool:
            self.clock.advance(0)
            return len([e for e in link.events() if "ref" in e]) == 3

        await until(all_three)
        self.assertEqual([e["ref"] for e in link.events() if "ref" in e], ["a", "b", "c"])

    async def test_the_rate_limit_refuses_then_refills_with_the_clock(self) -> None:
        alice, link = await self.logged_in("alice")
        for n in range(2):  # the burst
            self.assertEqual(
                (await self.answer(alice, link, {"type": "say", "room": "lobby", "body": f"{n}"}))["type"],
                "ack",
            )
        refused = await self.answer(alice, link, {"type": "say", "room": "lobby", "body": "too many"})
        self.assertEqual((refused["type"], refused["code"]), ("error", "rate_limited"))
        self.assertGreater(refused["retry_after"], 0)
        self.clock.advance(1.0)  # one token back
        self.assertEqual(
            (await self.answer(alice, link, {"type": "say", "room": "lobby", "body": "later"}))["type"], "ack"
        )

    async def test_strikes_over_the_limit_close_the_session(self) -> None:
        alice, link = await self.logged_in("alice")
        for n in range(2):
            await self.answer(alice, link, {"type": "say", "room": "lobby", "body": f"{n}"})
        for n in range(3):
            await self.answer(alice, link, {"type": "say", "room": "lobby", "body": f"flood {n}"})
        self.assertEqual(link.closed, ("flooding", "too many requests over the rate limit"))

    async def test_too_many_unanswered_requests_hold_the_input(self) -> None:
        alice, link = await self.logged_in("alice")
        limit = Session.MAX_UNANSWERED
        # Each history page is read in the database thread, which answers
        # on the real reactor: none is answered while receive() runs, so
        # those beyond the limit wait, unread, and the link is held.
        alice.receive([{"type": "history", "stream": "room:lobby", "ref": n} for n in range(limit + 5)])
        self.assertIn("unanswered", link.holds)
        self.assertEqual(len(alice._replies), limit)

        def all_answered() -> bool:
            self.clock.advance(0)
            return len(link.answers("history")) == limit + 5

        await until(all_answered)
        self.assertNotIn("unanswered", link.holds)
        self.assertEqual([e["ref"] for e in link.answers("history")], list(range(limit + 5)))

    async def test_stats_are_for_admins_only(self) -> None:
        alice, link = await self.logged_in("alice")
        refused = await self.answer(alice, link, {"type": "stats"})
        self.assertEqual((refused["type"], refused["code"]), ("error", "forbidden"))
        root, root_link = await self.logged_in("root", "admin")
        frame = await self.answer(root, root_link, {"type": "stats", "subscribe": True})
        self.assertEqual(frame["type"], "stats")
        self.assertIn(root, self.factory.stats_subscribers)
        self.assertEqual(frame["app"]["users_online"], 2)
        info = await self.answer(alice, link, {"type": "info"})
        self.assertEqual(info["users_online"], 2)

    async def test_a_direct_message_reaches_both_sessions(self) -> None:
        alice, alice_link = await self.logged_in("alice")
        bob, bob_link = await self.logged_in("bob")
        ack = await self.answer(alice, alice_link, {"type": "dm", "to": "bob", "body": "psst"})

        def bob_has_it() -> bool:
            self.clock.advance(0)
            return bool(bob_link.answers("dm"))

        await until(bob_has_it)
        [dm] = bob_link.answers("dm")
        self.assertEqual((dm["from"], dm["body"], dm["id"]), ("alice", "psst", ack["id"]))
        self.assertEqual(dm["stream"], "dm:alice:bob")

    async def test_a_moderator_handler_refuses_a_plain_member(self) -> None:
        alice, alice_link = await self.logged_in("alice")
        await self.logged_in("bob")
        refused = await self.answer(alice, alice_link, {"type": "kick", "room": "lobby", "user": "bob"})
        self.assertEqual((refused["type"], refused["code"]), ("error", "forbidden"))
