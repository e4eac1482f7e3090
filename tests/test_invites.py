"""Registration by invitation ([accounts] allow_registration = invite):
single-use invite codes made by the admin tool, checked and consumed by
the real server over loopback, in the real SQLite file.  Issue 13, item 6."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from chatclient.session import ServerError
from chatserver import accounts
from chatserver.config import Settings
from chatserver.storage import sqlite as store
from chatserver.storage.direct import open_direct
from tests.processes import admin_tool
from tests.support import (
    PASSWORD,
    PYTHON,
    RunningServer,
    make_settings,
    open_session,
    python_env,
    sqlite_only,
    start_server,
)


def make_invites(
    server: RunningServer, count: int = 1, ttl: float = 3600, now: float | None = None
) -> list[str]:
    """Codes made as the admin tool makes them, beside the running server."""
    conn = open_direct(server.settings)
    try:
        return [code for _, code, _ in accounts.make_invites_now(conn, count, ttl, "test", now)]
    finally:
        conn.close()


def _read(where: Path | Settings, query: Any, *args: Any) -> Any:
    """A query on a SQLite file, or on the database of some settings."""
    if isinstance(where, Path):
        conn = sqlite3.connect(str(where))
        try:
            return query(conn.cursor(), *args)
        finally:
            conn.close()
    db = open_direct(where)
    try:
        return db.run(query, *args)
    finally:
        db.close()


def invites_of(where: Path | Settings) -> list[store.InviteRecord]:
    return list(_read(where, store.list_registration_invites))


def user_exists(where: Path | Settings, name: str) -> bool:
    return bool(_read(where, store.user_exists, name))


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
        (record,) = invites_of(server.settings)
        self.assertEqual((record.used_by, record.state(int(time.time()))), ("alice", "used"))
        # Single use: the same code again fails, and makes no account.
        second = await open_session(self, server)
        error = await self.refused(second.register("bob", PASSWORD, invite=code), "invite_invalid")
        self.assertEqual(error.get("field"), "invite")
        self.assertFalse(user_exists(server.settings, "bob"))
        # The account is an ordinary one.
        again = await open_session(self, server)
        self.assertEqual((await again.login("alice", PASSWORD))["user"], "alice")

    async def test_no_code_is_invite_required(self) -> None:
        server = await start_server(self, allow_registration="invite")
        session = await open_session(self, server)
        error = await self.refused(session.register("alice", PASSWORD), "invite_required")
        self.assertEqual(error.get("field"), "invite")
        self.assertFalse(user_exists(server.settings, "alice"))

    async def test_expired_revoked_used_and_unknown_codes_get_one_error(self) -> None:
        """The same answer (message included) whatever the reason, so that
        codes cannot be probed; and checked before the name, so that a taken
        name does not show either."""
        server = await start_server(self, allow_registration="invite", login_failures_per_address=100)
        (expired,) = make_invites(server, ttl=60, now=time.time() - 120)
        revoked, used = make_invites(server, 2)
        conn = open_direct(server.settings)
        self.assertIsNotNone(
            conn.run(store.revoke_registration_invite, "test", 0, accounts.invite_hash(revoked))
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
        self.assertFalse(user_exists(server.settings, "bob"))
        states = [r.state(int(time.time())) for r in invites_of(server.settings)]
        self.assertEqual(states, ["expired", "revoked", "used"])

    async def test_username_taken_does_not_burn_the_code(self) -> None:
        server = await start_server(self, allow_registration="invite")
        first, second = make_invites(server, 2)
        await (await open_session(self, server)).register("alice", PASSWORD, invite=first)
        session = await open_session(self, server)
        await self.refused(session.register("alice", PASSWORD, invite=second), "username_taken")
        self.assertEqual(invites_of(server.settings)[1].used_at, None)
        welcome = await session.register("bob", PASSWORD, invite=second)
        self.assertEqual(welcome["user"], "bob")
        self.assertEqual(invites_of(server.settings)[1].used_by, "bob")

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
        self.assertIsNone(invites_of(server.settings)[0].used_at)
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
        self.assertEqual(invites_of(server.settings)[0].state(int(time.time())), "usable")

    async def test_no_mode_refuses_even_a_good_code(self) -> None:
        server = await start_server(self, allow_registration="no")
        (code,) = make_invites(server)
        session = await open_session(self, server)
        await self.refused(session.register("alice", PASSWORD, invite=code), "registration_closed")
        self.assertIsNone(invites_of(server.settings)[0].used_at)

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
        why = sqlite_only("the database file replaced under the server")
        if why:
            raise unittest.SkipTest(why)
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
        if not server.settings.uses_postgres:  # the file's bytes: SQLite's
            self.assertNotIn(code.encode(), server.settings.database_path.read_bytes())


class AdminInviteTests(unittest.TestCase):
    def admin(self, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return admin_tool(data_dir, *args, database=getattr(self, "database", None))

    async def test_make_list_use_and_revoke(self) -> None:
        server = await start_server(self, allow_registration="invite")
        data = server.settings.data_path
        self.database = server.settings.database
        made = self.admin(data, "invite", "--count", "3", "--expires", "2d")
        self.assertEqual(made.returncode, 0, made.stderr)
        codes = made.stdout.split()
        self.assertEqual(len(codes), 3)
        self.assertEqual(len(set(codes)), 3)
        self.assertTrue(all(re.fullmatch(r"[a-z2-7]{26}", c) for c in codes), codes)
        self.assertIn("made 3 single-use invite codes", made.stderr)
        records = invites_of(server.settings)
        self.assertEqual(len(records), 3)
        for record in records:
            self.assertEqual(record.expires_at - record.created_at, 2 * 86400)
            self.assertLess(abs(record.created_at - time.time()), 60)

        # One default code: one line, valid 7 days.
        one = self.admin(data, "invite")
        self.assertEqual(one.returncode, 0, one.stderr)
        self.assertEqual(len(one.stdout.split()), 1)
        last = invites_of(server.settings)[-1]
        self.assertEqual(last.expires_at - last.created_at, 7 * 86400)

        welcome = await (await open_session(self, server)).register("alice", PASSWORD, invite=codes[0])
        self.assertEqual(welcome["user"], "alice")

        revoked = self.admin(data, "invite", "--revoke", codes[1])
        self.assertEqual(
            (revoked.returncode, revoked.stdout.strip()), (0, "revoked invite 2"), revoked.stderr
        )
        revoked = self.admin(data, "invite", "--revoke-id", "3")
        self.assertEqual(
            (revoked.returncode, revoked.stdout.strip()), (0, "revoked invite 3"), revoked.stderr
        )
        session = await open_session(self, server)
        for code in codes[1:]:
            error = await self.assertFailure(session.register("bob", PASSWORD, invite=code), ServerError)
            self.assertEqual(error.code, "invite_invalid")
        # A used or revoked invite cannot be revoked (again); nor an unknown one.
        for args in (["--revoke", codes[0]], ["--revoke", codes[1]], ["--revoke-id", "99"]):
            again = self.admin(data, "invite", *args)
            self.assertEqual(again.returncode, 1, args)
            self.assertIn("no such invite", again.stderr)

        listed = self.admin(data, "invite", "--list")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        rows = [line.split("\t") for line in listed.stdout.splitlines()]
        self.assertEqual(rows[0][:2], ["id", "state"])
        self.assertEqual(
            [(r[0], r[1], r[4]) for r in rows[1:]],
            [
                ("1", "used", "alice"),
                ("2", "revoked", "-"),
                ("3", "revoked", "-"),
                ("4", "usable", "-"),
            ],
        )
        for code in codes:
            self.assertNotIn(code, listed.stdout)

        # Creation, use and revocation are in the audit table, by invite id.
        conn = open_direct(server.settings)
        self.addCleanup(conn.close)
        actions = [tuple(row) for row in conn.fetch("SELECT action, detail FROM audit ORDER BY id")]
        self.assertEqual([a for a, _ in actions].count("invite_create"), 4)
        self.assertIn(("register", "invite 1"), actions)
        self.assertIn(("invite_revoke", "invite 2"), actions)
        self.assertIn(("invite_revoke", "invite 3"), actions)

        # Only hashes are stored.  (Read once the server is stopped: closing
        # a descriptor of the file in this process, the server's, would drop
        # the server's SQLite locks on it.)
        conn.close()
        await server.stop()
        if server.settings.uses_postgres:
            return  # the file's bytes: SQLite's
        path = server.settings.database_path
        raw = path.read_bytes() + (
            path.with_name(path.name + "-wal").read_bytes() if Path(str(path) + "-wal").exists() else b""
        )
        for code in codes:
            self.assertNotIn(code.encode(), raw)

    def test_bad_arguments(self) -> None:
        data = Path(self.mktemp())
        for args, message in [
            (["--count", "0"], "--count must be from 1 to 1000"),
            (["--count", "1001"], "--count must be from 1 to 1000"),
            (["--expires", "0"], "more than 0"),
            (["--expires", "400d"], "at most 365 days"),
            (["--expires", "soon"], "a number of seconds"),
            (["--list", "--count", "2"], "not with --list or --revoke"),
        ]:
            result = self.admin(data, "invite", *args)
            self.assertEqual(result.returncode, 2, (args, result.stderr))
            self.assertIn(message, result.stderr, args)
        result = self.admin(data, "invite", "--list", "--revoke", "x")
        self.assertEqual(result.returncode, 2)
        # No database there: refused, not created.
        result = self.admin(data, "invite")
        self.assertEqual(result.returncode, 1)
        self.assertIn("--create", result.stderr)
        self.assertFalse((data / "chatserver.sqlite3").exists())

    def test_a_note_when_the_configuration_does_not_ask_for_codes(self) -> None:
        base = Path(self.mktemp())
        base.mkdir()
        config = base / "chatserver.ini"
        for mode, noted in (("yes", True), ("no", True), ("invite", False)):
            config.write_text(f"[server]\ndata_dir = data\n[accounts]\nallow_registration = {mode}\n")
            result = subprocess.run(
                [PYTHON, "-m", "chatserver.admin", "--config", str(config), "--create", "invite"],
                env=python_env(),
                capture_output=True,
                text=True,
                timeout=60,
            )
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertEqual(len(result.stdout.split()), 1)
            self.assertEqual(f"allow_registration = {mode}:" in result.stderr, noted, result.stderr)

    def test_durations(self) -> None:
        from chatserver.admin import parse_duration

        self.assertEqual(
            [parse_duration(t) for t in ("90", "30m", "12h", "7d", "2w", "1.5h")],
            [90, 1800, 43200, 604800, 1209600, 5400],
        )


_unused = defer
