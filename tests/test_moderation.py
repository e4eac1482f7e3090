"""Moderation: kick, ban, mute, roles and disabled accounts, end to end.

Real server (``tests.support``), real clients.  Every action is checked
from outside: the events members get, what the target can no longer do,
the audit table in the database file, the ``chatserver.audit`` log
namespace and the room's history.  Timed sanctions run on a ``task.Clock``
given to the server; every connection on it is logged in, so advancing it
by less than ``idle_timeout`` fires no connection deadline.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor, task
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from chatclient.session import ChatSession, ServerError
from chatserver import accounts
from chatserver.storage.direct import open_direct
from tests.support import (
    PASSWORD,
    EventQueue,
    RunningServer,
    add_admin,
    logged_in,
    open_session,
    start_server,
    until,
)

ROOM = "den"


# --- helpers -----------------------------------------------------------------


async def admin_session(
    testcase: unittest.TestCase, server: RunningServer, name: str = "root"
) -> ChatSession:
    """An account with the server role ``admin`` (made as the admin tool
    does, beside the running server), logged in."""
    testcase.assertTrue(add_admin(server, name))
    session = await logged_in(testcase, server, name, register=False)
    testcase.assertEqual(session.role, "admin")
    return session


def audit_rows(server: RunningServer, *, skip: tuple[str, ...] = ("create",)) -> list[tuple[Any, ...]]:
    """(actor, action, room, target, detail) of the audit table, in order."""
    conn = open_direct(server.settings)
    try:
        rows = [
            tuple(r) for r in conn.fetch("SELECT actor, action, room, target, detail FROM audit ORDER BY id")
        ]
    finally:
        conn.close()
    return [row for row in rows if row[1] not in skip]


class AuditLog:
    """The ``chatserver.audit`` events of the chat service (those with an
    ``action``), as (actor, action, room, target)."""

    def __init__(self, testcase: unittest.TestCase) -> None:
        self.entries: list[tuple[Any, ...]] = []
        globalLogPublisher.addObserver(self._observe)
        testcase.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "chatserver.audit" and "action" in event:
            if event["action"] != "create":
                self.entries.append((event["actor"], event["action"], event["room"], event["target"]))


async def refused(testcase: unittest.TestCase, d: Any, code: str, request: str) -> dict[str, Any]:
    error = await testcase.assertFailure(d, ServerError)
    testcase.assertEqual(error.code, code, error.event)
    testcase.assertEqual(error.event["request"], request)
    return error.event


def moderate(session: ChatSession, kind: str, user: str, room: str = ROOM, **extra: Any) -> Any:
    return session.request(dict({"type": kind, "room": room, "user": user}, **extra))


async def join(session: ChatSession, room: str = ROOM) -> dict[str, Any]:
    ack = await session.request({"type": "join", "room": room})
    assert ack["type"] == "ack", ack
    return ack


async def members(session: ChatSession, room: str = ROOM) -> dict[str, str]:
    answer = await session.request({"type": "who", "room": room})
    return {m["user"]: m["role"] for m in answer["members"]}


async def history_types(session: ChatSession, room: str = ROOM) -> list[tuple[Any, ...]]:
    page = await session.request({"type": "history", "stream": "room:" + room, "limit": 200})
    return [(e["type"], e.get("user"), e.get("by")) for e in page["events"]]


def in_room(kind: str, user: str, room: str = ROOM) -> Any:
    return lambda e: e["type"] == kind and e.get("room") == room and e.get("user") == user


async def assert_nothing_from_room(
    testcase: unittest.TestCase, session: ChatSession, queue: EventQueue, room: str = ROOM
) -> None:
    """``session`` got no event of ``room`` so far (a ping answered after
    everything the server wrote to it earlier)."""
    await session.ping()
    testcase.assertEqual([e for e in queue.events if e.get("room") == room], [])


class RoomTestCase(unittest.TestCase):
    """A public room ``den`` owned by olivia, with bob and carol in it."""

    async def room(self, clock: Any = None, **overrides: Any) -> None:
        self.server = await start_server(self, clock=clock, **overrides)
        self.owner = await logged_in(self, self.server, "olivia")
        self.bob = await logged_in(self, self.server, "bob")
        self.carol = await logged_in(self, self.server, "carol")
        self.owner_events = EventQueue(self.owner)
        self.bob_events = EventQueue(self.bob)
        self.carol_events = EventQueue(self.carol)
        await self.owner.request({"type": "create", "room": ROOM, "kind": "public", "topic": "t"})
        await join(self.bob)
        await join(self.carol)
        await self.owner_events.next(in_room("joined", "carol"))
        self.assertEqual(await members(self.owner), {"olivia": "owner", "bob": "member", "carol": "member"})
        # Start each test with empty queues.
        for session, queue in ((self.owner, self.owner_events), (self.bob, self.bob_events)):
            await session.ping()
            queue.events.clear()
        await self.carol.ping()
        self.carol_events.events.clear()


# --- ban -----------------------------------------------------------------------


class BanTests(RoomTestCase):
    async def test_ban_removes_the_member_until_unbanned(self) -> None:
        await self.room()
        bob_again = await logged_in(self, self.server, "bob", register=False)
        again_events = EventQueue(bob_again)

        ack = await moderate(self.owner, "ban", "bob", reason="spam")
        self.assertEqual((ack["type"], ack["stream"]), ("ack", "room:" + ROOM))
        for queue in (self.carol_events, self.bob_events, again_events, self.owner_events):
            event = await queue.next(in_room("banned", "bob"))
            self.assertEqual(event["id"], ack["id"])
            self.assertEqual((event["by"], event["reason"], event["until"]), ("olivia", "spam", None))
        self.assertNotIn("bob", await members(self.owner))

        # Out: no more events of the room on either connection, no speaking.
        await self.owner.say(ROOM, "after the ban")
        await self.carol_events.next(lambda e: e["type"] == "msg" and e["body"] == "after the ban")
        await assert_nothing_from_room(self, self.bob, self.bob_events)
        await assert_nothing_from_room(self, bob_again, again_events)
        await refused(self, self.bob.say(ROOM, "let me in"), "not_member", "say")
        error = await refused(self, self.bob.request({"type": "join", "room": ROOM}), "banned", "join")
        self.assertEqual(error["field"], "room")
        await refused(self, bob_again.request({"type": "join", "room": ROOM}), "banned", "join")
        # Another room is not affected.
        rooms = {r["room"]: r["member"] for r in (await self.bob.request({"type": "rooms"}))["rooms"]}
        self.assertEqual(rooms, {"lobby": True, ROOM: False})

        ack = await moderate(self.owner, "unban", "bob")
        unbanned = await self.carol_events.next(in_room("unbanned", "bob"))
        self.assertEqual((unbanned["id"], unbanned["by"]), (ack["id"], "olivia"))
        await join(self.bob)
        await self.carol_events.next(in_room("joined", "bob"))
        self.assertEqual(await members(self.carol), {"olivia": "owner", "bob": "member", "carol": "member"})
        await self.carol.say(ROOM, "welcome back")
        for queue in (self.bob_events, again_events):
            got = await queue.next(lambda e: e["type"] == "msg")
            self.assertEqual(got["body"], "welcome back")

    async def test_a_ban_keeps_out_a_user_who_was_never_in_the_room(self) -> None:
        await self.room()
        dave = await logged_in(self, self.server, "dave")
        await moderate(self.owner, "ban", "dave")
        await self.carol_events.next(in_room("banned", "dave"))
        await refused(self, dave.request({"type": "join", "room": ROOM}), "banned", "join")
        await refused(self, moderate(self.owner, "unban", "carol"), "not_sanctioned", "unban")

    async def test_timed_ban_expires(self) -> None:
        clock = task.Clock()
        await self.room(clock=clock)
        ack = await moderate(self.owner, "ban", "bob", duration=30)
        event = await self.bob_events.next(in_room("banned", "bob"))
        self.assertEqual(event["until"], ack["ts"] + 30_000)
        await refused(self, self.bob.request({"type": "join", "room": ROOM}), "banned", "join")
        clock.advance(29.9)
        error = await refused(self, self.bob.request({"type": "join", "room": ROOM}), "banned", "join")
        self.assertEqual(error["field"], "room")
        clock.advance(0.2)
        await join(self.bob)
        await self.carol_events.next(in_room("joined", "bob"))
        ack = await self.bob.say(ROOM, "back after 30 s")
        self.assertEqual(ack["type"], "ack")


# --- mute ------------------------------------------------------------------------


class MuteTests(RoomTestCase):
    async def test_muted_member_stays_but_cannot_speak_until_unmuted(self) -> None:
        await self.room()
        ack = await moderate(self.owner, "mute", "bob", reason="calm down")
        for queue in (self.bob_events, self.carol_events):
            event = await queue.next(in_room("muted", "bob"))
            self.assertEqual(event["id"], ack["id"])
            self.assertEqual((event["by"], event["reason"], event["until"]), ("olivia", "calm down", None))
        self.assertEqual((await members(self.carol))["bob"], "member")

        error = await refused(self, self.bob.say(ROOM, "can I talk?"), "muted", "say")
        self.assertEqual(error["field"], "room")
        # Still a member: bob hears the others; mute is per room.
        await self.carol.say(ROOM, "you can still read")
        got = await self.bob_events.next(lambda e: e["type"] == "msg" and e["from"] == "carol")
        self.assertEqual((got["room"], got["body"]), (ROOM, "you can still read"))
        await self.carol_events.next(lambda e: e["type"] == "msg")  # her own echo
        self.assertEqual((await self.bob.say("lobby", "elsewhere I can"))["type"], "ack")

        ack = await moderate(self.owner, "unmute", "bob")
        event = await self.bob_events.next(in_room("unmuted", "bob"))
        self.assertEqual((event["id"], event["by"]), (ack["id"], "olivia"))
        await self.bob.say(ROOM, "thanks")
        got = await self.carol_events.next(lambda e: e["type"] == "msg" and e["room"] == ROOM)
        self.assertEqual((got["from"], got["body"]), ("bob", "thanks"))
        await refused(self, moderate(self.owner, "unmute", "bob"), "not_sanctioned", "unmute")

    async def test_timed_mute_expires(self) -> None:
        clock = task.Clock()
        await self.room(clock=clock)
        ack = await moderate(self.owner, "mute", "bob", duration=10)
        event = await self.carol_events.next(in_room("muted", "bob"))
        self.assertEqual(event["until"], ack["ts"] + 10_000)
        await refused(self, self.bob.say(ROOM, "now?"), "muted", "say")
        clock.advance(9.9)
        await refused(self, self.bob.say(ROOM, "now?"), "muted", "say")
        clock.advance(0.2)
        ack = await self.bob.say(ROOM, "free again")
        self.assertEqual(ack["type"], "ack")
        got = await self.carol_events.next(lambda e: e["type"] == "msg")
        self.assertEqual(got["body"], "free again")


# --- kick ------------------------------------------------------------------------


class KickTests(RoomTestCase):
    async def test_kicked_member_is_out_and_may_rejoin(self) -> None:
        await self.room()
        ack = await moderate(self.owner, "kick", "bob", reason="out")
        for queue in (self.bob_events, self.carol_events):
            event = await queue.next(in_room("kicked", "bob"))
            self.assertEqual((event["id"], event["by"], event["reason"]), (ack["id"], "olivia", "out"))
        self.assertNotIn("bob", await members(self.carol))
        await refused(self, self.bob.say(ROOM, "hey"), "not_member", "say")
        await self.carol.say(ROOM, "bob is gone")
        await self.owner_events.next(lambda e: e["type"] == "msg")
        await assert_nothing_from_room(self, self.bob, self.bob_events)
        await refused(self, moderate(self.owner, "kick", "bob"), "not_member", "kick")

        await join(self.bob)  # a kick is not a ban
        await self.carol_events.next(in_room("joined", "bob"))
        self.assertEqual((await self.bob.say(ROOM, "I'm back"))["type"], "ack")


# --- permissions -------------------------------------------------------------------


class PermissionTests(RoomTestCase):
    async def test_plain_members_and_outsiders_cannot_moderate(self) -> None:
        await self.room()
        dave = await logged_in(self, self.server, "dave")  # not in the room
        for actor in (self.bob, dave):
            for kind in ("kick", "ban", "mute", "unban", "unmute", "op", "deop"):
                await refused(self, moderate(actor, kind, "carol"), "forbidden", kind)
            await refused(self, moderate(actor, "ban", "olivia"), "forbidden", "ban")
        await self.carol.ping()
        await self.owner.ping()
        self.assertEqual([e for e in self.carol_events.events if e.get("room") == ROOM], [])
        self.assertEqual(await members(self.owner), {"olivia": "owner", "bob": "member", "carol": "member"})
        self.assertEqual(audit_rows(self.server), [])
        self.assertEqual((await self.carol.say(ROOM, "unharmed"))["type"], "ack")

    async def test_moderator_moderates_members_but_not_the_owner_or_peers(self) -> None:
        await self.room()
        dave = await logged_in(self, self.server, "dave")
        await join(dave)
        await moderate(self.owner, "op", "bob")
        event = await self.carol_events.next(in_room("role", "bob"))
        self.assertEqual((event["role"], event["by"]), ("moderator", "olivia"))
        self.assertEqual((await members(self.carol))["bob"], "moderator")

        # Members: yes.
        await moderate(self.bob, "mute", "carol")
        await refused(self, self.carol.say(ROOM, "hm"), "muted", "say")
        await moderate(self.bob, "unmute", "carol")
        await moderate(self.bob, "kick", "dave")
        await self.carol_events.next(in_room("kicked", "dave"))
        await moderate(self.bob, "ban", "dave")
        await moderate(self.bob, "unban", "dave")

        # The owner: no.
        for kind in ("kick", "ban", "mute"):
            await refused(self, moderate(self.bob, kind, "olivia"), "forbidden", kind)
        self.assertEqual((await self.owner.say(ROOM, "still the owner"))["type"], "ack")
        # Appointing is the owner's alone.
        await refused(self, moderate(self.bob, "op", "carol"), "forbidden", "op")
        await moderate(self.owner, "op", "carol")
        await refused(self, moderate(self.bob, "deop", "carol"), "forbidden", "deop")
        await refused(self, moderate(self.bob, "op", "olivia"), "forbidden", "op")
        await refused(self, moderate(self.owner, "deop", "olivia"), "forbidden", "deop")
        # A moderator does not outrank another.
        for kind in ("kick", "ban", "mute"):
            await refused(self, moderate(self.bob, kind, "carol"), "forbidden", kind)
        self.assertEqual(
            await members(self.owner), {"olivia": "owner", "bob": "moderator", "carol": "moderator"}
        )

        # Taking the role back takes the power back.
        await moderate(self.owner, "deop", "bob")
        await self.carol_events.next(
            lambda e: e["type"] == "role" and e["user"] == "bob" and e["role"] == "member"
        )
        await join(dave)
        await refused(self, moderate(self.bob, "kick", "dave"), "forbidden", "kick")
        # ... and the ex-moderator can now be moderated by the new one.
        await moderate(self.carol, "mute", "bob")
        await refused(self, self.bob.say(ROOM, "oh"), "muted", "say")

    async def test_admin_moderates_any_room_even_a_private_one_as_non_member(self) -> None:
        await self.room()
        admin = await admin_session(self, self.server)
        admin_events = EventQueue(admin)
        await self.owner.request({"type": "create", "room": "vault", "kind": "private"})
        await self.owner.request({"type": "invite", "room": "vault", "user": "bob"})
        await join(self.bob, "vault")
        await self.owner_events.next(in_room("joined", "bob", "vault"))
        # Invisible to an ordinary outsider; the admin is no member either.
        await refused(self, moderate(self.carol, "kick", "bob", room="vault"), "no_such_room", "kick")
        self.assertEqual(await members(admin, "vault"), {"olivia": "owner", "bob": "member"})

        await moderate(admin, "mute", "bob", room="vault")
        event = await self.bob_events.next(in_room("muted", "bob", "vault"))
        self.assertEqual(event["by"], "root")
        await refused(self, self.bob.say("vault", "?"), "muted", "say")
        await moderate(admin, "unmute", "bob", room="vault")
        await moderate(admin, "kick", "bob", room="vault")
        await self.owner_events.next(in_room("kicked", "bob", "vault"))
        await moderate(admin, "ban", "bob", room="vault")
        await self.owner_events.next(in_room("banned", "bob", "vault"))
        await self.owner.request({"type": "invite", "room": "vault", "user": "bob"})
        await refused(self, self.bob.request({"type": "join", "room": "vault"}), "banned", "join")
        # The admin outranks even the owner, here and in the public room.
        await moderate(admin, "mute", "olivia", room="vault")
        await refused(self, self.owner.say("vault", "my room!"), "muted", "say")
        await moderate(admin, "op", "carol")
        await moderate(admin, "kick", "olivia")
        await self.carol_events.next(in_room("kicked", "olivia"))
        # All of it is in the private room's history, which the admin may read.
        self.assertEqual(
            [t for t in await history_types(admin, "vault") if t[0] != "joined"],
            [
                ("muted", "bob", "root"),
                ("unmuted", "bob", "root"),
                ("kicked", "bob", "root"),
                ("banned", "bob", "root"),
                ("muted", "olivia", "root"),
            ],
        )
        await admin.ping()
        self.assertEqual([e for e in admin_events.events if e.get("room") in ("vault", ROOM)], [])


# --- audit ---------------------------------------------------------------------------


class AuditTests(RoomTestCase):
    async def test_every_action_is_audited_logged_and_announced(self) -> None:
        log = AuditLog(self)
        await self.room()
        steps = [
            ("op", "bob", {}),
            ("mute", "carol", {"reason": "loud", "duration": 60}),
            ("unmute", "carol", {}),
            ("kick", "carol", {"reason": "bye"}),
            ("ban", "carol", {"reason": "again"}),
            ("unban", "carol", {}),
            ("deop", "bob", {}),
        ]
        for kind, user, extra in steps:
            ack = await moderate(self.owner, kind, user, **extra)
            self.assertEqual(ack["type"], "ack")
        expected = [
            ("olivia", "role", ROOM, "bob", "moderator"),
            ("olivia", "mute", ROOM, "carol", "loud"),
            ("olivia", "unmute", ROOM, "carol", ""),
            ("olivia", "kick", ROOM, "carol", "bye"),
            ("olivia", "ban", ROOM, "carol", "again"),
            ("olivia", "unban", ROOM, "carol", ""),
            ("olivia", "role", ROOM, "bob", "member"),
        ]
        await until(lambda: len(audit_rows(self.server)) >= len(expected))
        self.assertEqual(audit_rows(self.server), expected)
        self.assertEqual(log.entries, [row[:4] for row in expected])
        # The room's creation is audited too.
        self.assertIn(("olivia", "create", ROOM, None, "public"), audit_rows(self.server, skip=()))

        self.assertEqual(
            [t for t in await history_types(self.bob) if t[0] not in ("joined", "msg")],
            [
                ("role", "bob", "olivia"),
                ("muted", "carol", "olivia"),
                ("unmuted", "carol", "olivia"),
                ("kicked", "carol", "olivia"),
                ("banned", "carol", "olivia"),
                ("unbanned", "carol", "olivia"),
                ("role", "bob", "olivia"),
            ],
        )

    async def test_refused_actions_leave_no_trace(self) -> None:
        log = AuditLog(self)
        await self.room()
        await refused(self, moderate(self.bob, "ban", "carol"), "forbidden", "ban")
        await refused(self, moderate(self.owner, "kick", "nobody"), "not_member", "kick")
        await refused(self, self.bob.request({"type": "disable", "user": "carol"}), "forbidden", "disable")
        await self.owner.ping()
        self.assertEqual(audit_rows(self.server), [])
        self.assertEqual(log.entries, [])
        history = await history_types(self.owner)
        self.assertEqual({t[0] for t in history}, {"joined"})


# --- disabled accounts -------------------------------------------------------------------


class DisableTests(unittest.TestCase):
    async def test_admin_disable_ends_sessions_and_logins_until_enabled(self) -> None:
        log = AuditLog(self)
        server = await start_server(self)
        admin = await admin_session(self, server)
        first = await logged_in(self, server, "bob")
        second = await open_session(self, server)
        welcome = await second.login("bob", PASSWORD)
        token = welcome["token"]
        carol = await logged_in(self, server, "carol")

        answer = await admin.request({"type": "disable", "user": "bob"})
        self.assertEqual(
            {k: answer[k] for k in ("type", "user", "disabled")},
            {"type": "account", "user": "bob", "disabled": True},
        )
        for session in (first, second):
            info = await session.closed.addTimeout(5, reactor)
            self.assertTrue(info.clean, info)
            self.assertEqual(info.code, "account_disabled")
        await until(lambda: "bob" not in server.factory.chat.online)
        self.assertEqual((await carol.say("lobby", "I'm fine"))["type"], "ack")

        again = await open_session(self, server)
        await refused(self, again.login("bob", PASSWORD), "account_disabled", "login")
        error = await self.assertFailure(
            again.request({"type": "login", "user": "bob", "token": token}), ServerError
        )
        self.assertIn(error.code, ("account_disabled", "auth_failed"))

        answer = await admin.request({"type": "enable", "user": "bob"})
        self.assertEqual((answer["type"], answer["disabled"]), ("account", False))
        # The token died with the disable; the password works again.
        await refused(
            self, again.request({"type": "login", "user": "bob", "token": token}), "auth_failed", "login"
        )
        welcome = await again.login("bob", PASSWORD)
        self.assertEqual(welcome["user"], "bob")
        self.assertEqual((await again.say("lobby", "back"))["type"], "ack")

        expected = [("root", "disable", None, "bob", ""), ("root", "enable", None, "bob", "")]
        await until(lambda: len(audit_rows(server)) >= 2)
        self.assertEqual(audit_rows(server), expected)
        self.assertEqual(log.entries, [("root", "disable", "-", "bob"), ("root", "enable", "-", "bob")])

    async def test_only_admins_disable_and_not_themselves(self) -> None:
        server = await start_server(self)
        admin = await admin_session(self, server)
        bob = await logged_in(self, server, "bob")
        carol = await logged_in(self, server, "carol")
        for kind in ("disable", "enable"):
            error = await refused(self, bob.request({"type": kind, "user": "carol"}), "forbidden", kind)
            self.assertEqual(error["field"], "user")
        await refused(self, admin.request({"type": "disable", "user": "root"}), "forbidden", "disable")
        await refused(self, admin.request({"type": "disable", "user": "nobody"}), "no_such_user", "disable")
        self.assertEqual((await carol.ping())["type"], "pong")
        self.assertFalse(carol.closed.called)
        fresh = await open_session(self, server)
        self.assertEqual((await fresh.login("carol", PASSWORD))["user"], "carol")
        self.assertEqual(audit_rows(server), [])


class ReviewFixTests(RoomTestCase):
    """Holes found in review: who may act on whom, and what a ban hides."""

    async def test_room_moderators_cannot_sanction_a_server_admin(self) -> None:
        await self.room()
        admin = await admin_session(self, self.server)
        await join(admin)
        for kind in ("kick", "ban", "mute"):
            error = await refused(self, moderate(self.owner, kind, "root"), "forbidden", kind)
            self.assertEqual(error["field"], "user")
        self.assertEqual((await members(self.owner))["root"], "member")
        # ... also an admin the server has not seen log in since it started.
        conn = open_direct(self.server.settings)
        try:
            self.assertTrue(accounts.add_user_now(conn, "root2", PASSWORD, "admin", 10))
        finally:
            conn.close()
        await self.server.stop()  # first: a second server on the database is refused
        restarted = RunningServer(self.server.settings)
        await restarted.start()
        self.addCleanup(restarted.stop)
        owner = await logged_in(self, restarted, "olivia", register=False)
        await refused(self, moderate(owner, "ban", "root2"), "forbidden", "ban")

    async def test_a_banned_user_cannot_read_the_room(self) -> None:
        await self.room()
        await self.owner.say(ROOM, "not for bob")
        await moderate(self.owner, "ban", "bob")
        history = self.bob.request({"type": "history", "stream": "room:" + ROOM, "limit": 10})
        self.assertEqual((await refused(self, history, "banned", "history"))["field"], "stream")
        await refused(self, self.bob.request({"type": "who", "room": ROOM}), "banned", "who")
        await moderate(self.owner, "unban", "bob")
        page = await self.bob.request({"type": "history", "stream": "room:" + ROOM, "limit": 10})
        self.assertIn("not for bob", [e.get("body") for e in page["events"]])

    async def test_leaving_or_being_kicked_from_the_default_room_lasts(self) -> None:
        await self.room()
        await self.bob.request({"type": "part", "room": "lobby"})
        await moderate(self.owner, "op", "carol", room=ROOM)  # unrelated room: no effect on the lobby
        admin = await admin_session(self, self.server)
        await moderate(admin, "kick", "carol", room="lobby")
        for name in ("bob", "carol"):
            session = await logged_in(self, self.server, name, register=False)
            self.assertEqual(session.role, "user")
            welcome_rooms = (await session.request({"type": "rooms"}))["rooms"]
            self.assertEqual(
                {r["room"]: r["member"] for r in welcome_rooms}, {"lobby": False, ROOM: True}, name
            )

    async def test_when_the_owner_leaves_a_moderator_inherits_the_room(self) -> None:
        await self.room()
        await moderate(self.owner, "op", "carol")
        await self.owner.request({"type": "part", "room": ROOM})
        promoted = await self.bob_events.next(lambda e: in_room("role", "carol")(e) and e["role"] == "owner")
        self.assertEqual((promoted["role"], promoted["by"]), ("owner", None))
        self.assertEqual(await members(self.bob), {"bob": "member", "carol": "owner"})
        # The new owner has the owner's powers, and keeps them after a restart.
        await moderate(self.carol, "op", "bob")
        await self.server.stop()  # first: a second server on the database is refused
        restarted = RunningServer(self.server.settings)
        await restarted.start()
        self.addCleanup(restarted.stop)
        carol = await logged_in(self, restarted, "carol", register=False)
        self.assertEqual(await members(carol), {"bob": "moderator", "carol": "owner"})
        # Without moderators, the longest-standing member inherits.
        await moderate(carol, "deop", "bob")
        await carol.request({"type": "part", "room": ROOM})
        self.assertEqual(await members(carol), {"bob": "owner"})


# --- authorization slips (hardening) -------------------------------------------


class AuthorizationTests(RoomTestCase):
    def set_server_role(self, user: str, role: str) -> None:
        """Change an account's server role beside the running server, in
        its database file, as the admin tool does."""
        conn = open_direct(self.server.settings)
        try:
            conn.fetch("UPDATE users SET role = ? WHERE name = ? RETURNING name", role, user)
        finally:
            conn.close()

    async def test_admin_added_while_running_is_protected_before_first_login(self) -> None:
        """An admin made with the admin tool while the server runs cannot
        be banned, kicked or muted by a room owner, even before that admin
        has ever logged in (the server's start-up list does not know them)."""
        await self.room()
        # bob is a plain member of den; the admin tool now makes him admin.
        self.set_server_role("bob", "admin")
        for kind in ("ban", "kick", "mute"):
            await refused(self, moderate(self.owner, kind, "bob"), "forbidden", kind)
        self.assertIn("bob", await members(self.owner))

    async def test_admin_demoted_while_running_can_be_moderated(self) -> None:
        await self.room()
        self.assertTrue(add_admin(self.server, "root"))
        await refused(self, moderate(self.owner, "ban", "root"), "forbidden", "ban")
        self.set_server_role("root", "user")
        await moderate(self.owner, "ban", "root")

    async def assert_heir_after(self, kind: str) -> None:
        await self.room()
        root = await admin_session(self, self.server)
        await moderate(self.owner, "op", "carol")
        await self.bob_events.next(in_room("role", "carol"))
        await moderate(root, kind, "olivia")
        role = await self.bob_events.next(in_room("role", "carol"))
        self.assertEqual((role["role"], role["by"]), ("owner", None))
        self.assertEqual(await members(self.bob), {"bob": "member", "carol": "owner"})
        # The new owner owns it: she may appoint a moderator.
        await moderate(self.carol, "op", "bob")
        rooms = (await self.bob.request({"type": "rooms"}))["rooms"]
        self.assertEqual([r["members"] for r in rooms if r["room"] == ROOM], [2])

    async def test_admin_kicking_the_owner_hands_the_room_on(self) -> None:
        await self.assert_heir_after("kick")

    async def test_admin_banning_the_owner_hands_the_room_on(self) -> None:
        await self.assert_heir_after("ban")

    async def test_heir_survives_a_restart(self) -> None:
        await self.assert_heir_after("kick")
        await self.server.stop()
        again = RunningServer(self.server.settings)
        await again.start()
        self.addCleanup(again.stop)
        bob = await logged_in(self, again, "bob", register=False)
        self.assertEqual(await members(bob), {"bob": "moderator", "carol": "owner"})
