"""Registration by invitation ([accounts] allow_registration = invite):
single-use invite codes made by the admin tool, checked and consumed by
the real server over loopback, in the real SQLite file.  Issue 13, item 6."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from chatclient.session import ServerError
from chatserver import accounts, store
from tests.support import (
    PASSWORD,
    RunningServer,
    make_settings,
    open_session,
    start_server,
)


def make_invites(
    server: RunningServer, count: int = 1, ttl: float = 3600, now: float | None = None
) -> list[str]:
    """Codes made as the admin tool makes them, beside the running server."""
    conn = store.open_database(server.settings.database_path)
    try:
        return [code for _, code, _ in accounts.make_invites_now(conn, count, ttl, "test", now)]
    finally:
        conn.close()


def invites_of(path: Path) -> list[store.InviteRecord]:
    conn = sqlite3.connect(str(path))
    try:
        return store.list_registration_invites(conn.cursor())
    finally:
        conn.close()


def user_exists(path: Path, name: str) -> bool:
    conn = sqlite3.connect(str(path))
    try:
        return store.user_exists(conn.cursor(), name)
    finally:
        conn.close()


class InviteModeTests(unittest.TestCase):
    async def refused(self, d: Any, code: str) -> dict[str, Any]:
        error = await self.assertFailure(d, ServerError)
        self.assertEqual(error.code, code, error.event)
        return error.event

    async def test_a_fresh_code_registers_once(self) -> None:
        server = await start_server(self, allow_registration="invite")
        (code,) = make_invites(server)
        self.assertRegex(code, r"^[a-z2-7]{26}$")
        first = await open_session(self, server)
        welcome = await first.register("alice", PASSWORD, invite=code)
        self.assertEqual((welcome["user"], welcome["rooms"]), ("alice", ["lobby"]))
        (record,) = invites_of(server.settings.database_path)
        self.assertEqual((record.used_by, record.state(int(time.time()))), ("alice", "used"))
        # Single use: the same code again fails, and makes no account.
        second = await open_session(self, server)
        error = await self.refused(second.register("bob", PASSWORD, invite=code), "invite_invalid")
        self.assertEqual(error.get("field"), "invite")
        self.assertFalse(user_exists(server.settings.database_path, "bob"))
        # The account is an ordinary one.
        again = await open_session(self, server)
        self.assertEqual((await again.login("alice", PASSWORD))["user"], "alice")

    async def test_no_code_is_invite_required(self) -> None:
        server = await start_server(self, allow_registration="invite")
        session = await open_session(self, server)
        error = await self.refused(session.register("alice", PASSWORD), "invite_required")
        self.assertEqual(error.get("field"), "invite")
        self.assertFalse(user_exists(server.settings.database_path, "alice"))

    async def test_expired_revoked_used_and_unknown_codes_get_one_error(self) -> None:
        """The same answer (message included) whatever the reason, so that
        codes cannot be probed; and checked before the name, so that a taken
        name does not show either."""
        server = await start_server(self, allow_registration="invite", login_failures_per_address=100)
        (expired,) = make_invites(server, ttl=60, now=time.time() - 120)
        revoked, used = make_invites(server, 2)
        conn = store.open_database(server.settings.database_path)
        self.assertIsNotNone(
            store.run_now(conn, store.revoke_registration_invite, "test", 0, accounts.invite_hash(revoked))
        )
        conn.close()
        await (await open_session(self, server)).register("alice", PASSWORD, invite=used)
        session = await open_session(self, server)
        errors = []
        for code, name in [
            (expired, "bob"),
            (revoked, "bob"),
            (used, "bob"),
            (accounts.new_invite_code(), "bob"),
            ("not a code at all", "bob"),
            (expired, "alice"),  # a taken name: still only invite_invalid
        ]:
            error = await self.refused(session.register(name, PASSWORD, invite=code), "invite_invalid")
            errors.append({k: v for k, v in error.items() if k != "ref"})
        self.assertEqual([e == errors[0] for e in errors], [True] * len(errors))
        self.assertFalse(user_exists(server.settings.database_path, "bob"))
        states = [r.state(int(time.time())) for r in invites_of(server.settings.database_path)]
        self.assertEqual(states, ["expired", "revoked", "used"])

    async def test_username_taken_does_not_burn_the_code(self) -> None:
        server = await start_server(self, allow_registration="invite")
        first, second = make_invites(server, 2)
        await (await open_session(self, server)).register("alice", PASSWORD, invite=first)
        session = await open_session(self, server)
        await self.refused(session.register("alice", PASSWORD, invite=second), "username_taken")
        self.assertEqual(invites_of(server.settings.database_path)[1].used_at, None)
        welcome = await session.register("bob", PASSWORD, invite=second)
        self.assertEqual(welcome["user"], "bob")
        self.assertEqual(invites_of(server.settings.database_path)[1].used_by, "bob")

    async def test_letter_case_and_white_space_do_not_matter(self) -> None:
        server = await start_server(self, allow_registration="invite")
        (code,) = make_invites(server)
        typed = " ".join([code[:13].upper(), code[13:]])
        welcome = await (await open_session(self, server)).register("alice", PASSWORD, invite=typed)
        self.assertEqual(welcome["user"], "alice")

    async def test_bad_codes_count_as_failures_of_the_address(self) -> None:
        server = await start_server(self, allow_registration="invite", login_failures_per_address=3)
        (good,) = make_invites(server)
        session = await open_session(self, server)
        for n in range(3):
            await self.refused(session.register(f"guess{n}", PASSWORD, invite=f"guess-{n}"), "invite_invalid")
        # Now even a good code is throttled from this address, and not used up.
        error = await self.refused(session.register("alice", PASSWORD, invite=good), "throttled")
        self.assertGreater(error["retry_after"], 0)
        self.assertIsNone(invites_of(server.settings.database_path)[0].used_at)
        # A missing code is no guess: it tells nothing, and costs nothing.
        other = await start_server(self, allow_registration="invite", login_failures_per_address=1)
        session = await open_session(self, other)
        for _ in range(3):
            await self.refused(session.register("alice", PASSWORD), "invite_required")

    async def test_yes_mode_ignores_the_invite_member(self) -> None:
        """Decided and specified: with ``yes`` an invite code is neither
        checked nor consumed."""
        server = await start_server(self, allow_registration="yes")
        (code,) = make_invites(server)
        session = await open_session(self, server)
        self.assertEqual((await session.register("alice", PASSWORD, invite="nonsense"))["user"], "alice")
        session = await open_session(self, server)
        self.assertEqual((await session.register("bob", PASSWORD, invite=code))["user"], "bob")
        self.assertEqual(invites_of(server.settings.database_path)[0].state(int(time.time())), "usable")

    async def test_no_mode_refuses_even_a_good_code(self) -> None:
        server = await start_server(self, allow_registration="no")
        (code,) = make_invites(server)
        session = await open_session(self, server)
        await self.refused(session.register("alice", PASSWORD, invite=code), "registration_closed")
        self.assertIsNone(invites_of(server.settings.database_path)[0].used_at)

    async def test_an_invite_member_of_the_wrong_form_is_bad_field(self) -> None:
        server = await start_server(self, allow_registration="invite")
        session = await open_session(self, server)
        for value in ["", "x" * 129, "caf\u00e9", 12345, None]:
            error = await self.assertFailure(
                session.request({"type": "register", "user": "alice", "password": PASSWORD, "invite": value}),
                ServerError,
            )
            self.assertEqual((error.code, error.event.get("field")), ("bad_field", "invite"), value)

    async def test_a_failed_commit_consumes_nothing(self) -> None:
        """The account and the consumed code are one transaction: when the
        database file is replaced under the server, the register fails and
        the file holds neither the account nor a used code."""
        settings = make_settings(Path(self.mktemp()), allow_registration="invite")
        settings.data_path.mkdir(parents=True)
        conn = store.open_database(settings.database_path)
        ((_, code, _),) = accounts.make_invites_now(conn, 1, 3600, "test")
        conn.close()
        server = RunningServer(settings)
        await server.start()
        self.addCleanup(server.stop)
        session = await open_session(self, server)
        moved = settings.data_path / "moved.sqlite3"
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(str(settings.database_path) + suffix):
                os.rename(str(settings.database_path) + suffix, str(moved) + suffix)
        error = await self.assertFailure(session.register("alice", PASSWORD, invite=code), ServerError)
        self.assertIn(error.code, ("unavailable", "internal_error"))
        await server.stop()
        self.assertFalse(user_exists(moved, "alice"))
        self.assertEqual([r.used_at for r in invites_of(moved)], [None])

    async def test_the_log_names_the_invite_not_the_code(self) -> None:
        server = await start_server(self, allow_registration="invite")
        (code,) = make_invites(server)
        await (await open_session(self, server)).register("alice", PASSWORD, invite=code)
        await (
            (await open_session(self, server))
            .register("bob", PASSWORD, invite=code)
            .addErrback(lambda _: None)
        )
        await server.stop()
        audit = (server.settings.log_path / "audit.log").read_text(encoding="utf-8")
        self.assertRegex(audit, r"registered alice from \S+ with invite 1\b")
        self.assertIn("unusable invite code", audit)
        logs = "".join(p.read_text(encoding="utf-8") for p in server.settings.log_path.iterdir())
        self.assertNotIn(code, logs)
        self.assertNotIn(code.encode(), server.settings.database_path.read_bytes())


_unused = defer
