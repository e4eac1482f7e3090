"""chatserver-admin's account, room and server commands, run as a process
against a real running server's database (both backends): what they
print (text and --json), what they change in it, what they write to
audit.log, and what the running server does about it at once (sessions
ended, roles applied at the next login, memberships read again).  And
``backup`` while a client is sending: the copy opens and holds every
message acknowledged before it started."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from twisted.internet import reactor, threads
from twisted.internet.defer import ensureDeferred
from twisted.trial import unittest

from chatclient.gui.model import ChatModel
from chatclient.output import format_event
from chatclient.session import ChatSession, ServerError
from chatserver import control
from chatserver.storage.direct import open_direct
from tests.support import (
    PASSWORD,
    PYTHON,
    EventQueue,
    RunningServer,
    backend,
    logged_in,
    open_session,
    python_env,
    start_server,
    until,
)

NEW_PASSWORD = "a much newer password"


class AdminToolTests(unittest.TestCase):
    async def start(self) -> RunningServer:
        server = await start_server(self)
        self.server = server
        base = Path(self.mktemp()).resolve()
        base.mkdir(parents=True)
        self.config = base / "chatserver.ini"
        lines = [
            "[server]",
            f"data_dir = {server.settings.data_path.resolve()}",
            f"log_dir = {server.settings.log_path.resolve()}",
            "[accounts]",
            "password_hash_cost = 10",
        ]
        if server.settings.uses_postgres:
            lines += ["[store]", f"database = {server.settings.database}"]
        self.config.write_text("\n".join(lines) + "\n")
        self.password_file = base / "password"
        self.password_file.write_text(PASSWORD + "\n")
        self.new_password_file = base / "new-password"
        self.new_password_file.write_text(NEW_PASSWORD + "\n")
        return server

    async def admin(self, *args: str, status: int = 0) -> subprocess.CompletedProcess[str]:
        """The tool as a process (in a thread: the server runs in this one)."""
        done = await threads.deferToThread(
            subprocess.run,
            [PYTHON, "-m", "chatserver.admin", "--config", str(self.config), *args],
            env=python_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual(done.returncode, status, done.stderr + done.stdout)
        return done

    async def admin_json(self, *args: str, status: int = 0) -> dict[str, Any]:
        done = await self.admin(*args, "--json", status=status)
        return json.loads(done.stdout)

    def audit_lines(self) -> list[str]:
        path = self.server.settings.log_path / "audit.log"
        return [line for line in path.read_text().splitlines() if "chatserver-admin:" in line]

    async def closed_with(self, session: ChatSession, code: str) -> None:
        info = await session.closed.addTimeout(10, reactor)
        self.assertTrue(info.clean, info)
        self.assertEqual(info.code, code)

    async def test_user_commands_reach_the_database_the_log_and_the_running_server(self) -> None:
        server = await self.start()
        pw = str(self.password_file)
        added = await self.admin_json("user", "add", "alice", "--password-file", pw)
        self.assertEqual(added, {"added": True, "role": "user", "user": "alice"})
        await self.admin("add-user", "bob", "--password-file", pw)
        taken = await self.admin_json("user", "add", "bob", "--password-file", pw, status=1)
        self.assertIn("already exists", taken["error"])
        bad = await self.admin("user", "add", "No Such Name!", "--password-file", pw, status=2)
        self.assertIn("error:", bad.stderr)

        alice = await open_session(self, server)
        await alice.login("alice", PASSWORD)
        bob = await open_session(self, server)
        welcome = await bob.login("bob", PASSWORD)
        self.assertEqual(welcome["role"], "user")
        token = welcome["token"]

        listing = await self.admin_json("user", "list")
        by_name = {u["name"]: u for u in listing["users"]}
        self.assertEqual(set(by_name), {"alice", "bob"})
        self.assertEqual((by_name["bob"]["role"], by_name["bob"]["state"]), ("user", "active"))
        self.assertIsNotNone(by_name["bob"]["last_login_at"])  # the login's note committed
        text = (await self.admin("user", "list")).stdout
        self.assertIn("bob\tuser\tactive\t", text)
        shown = await self.admin_json("user", "show", "bob")
        self.assertEqual(shown["user"]["rooms"], [{"room": "lobby", "role": "member"}])
        self.assertEqual(shown["user"]["session_tokens"], 1)
        self.assertNotIn("password_hash", json.dumps(shown))

        # A new role: bob's session ends, and his next login (his token) has it.
        promoted = await self.admin_json("user", "set-role", "bob", "admin")
        self.assertEqual((promoted["role"], promoted["was"]), ("admin", "user"))
        self.assertEqual(promoted["servers_told"], ["main"])
        await self.closed_with(bob, "account_changed")
        bob = await open_session(self, server)
        self.assertEqual(
            (await bob.request({"type": "login", "user": "bob", "token": token}))["role"], "admin"
        )

        # Disabled: the session ends and logins are refused; enabled again.
        await self.admin("user", "disable", "bob")
        await self.closed_with(bob, "account_disabled")
        again = await open_session(self, server)
        error = await self.assertFailure(again.login("bob", PASSWORD), ServerError)
        self.assertEqual(error.code, "account_disabled")
        await self.admin("user", "enable", "bob")
        self.assertEqual((await again.login("bob", PASSWORD))["role"], "admin")

        # A new password: alice is signed out everywhere, the old one fails.
        changed = await self.admin_json(
            "user", "passwd", "alice", "--password-file", str(self.new_password_file)
        )
        self.assertTrue(changed["signed_out"])
        await self.closed_with(alice, "signed_out")
        alice = await open_session(self, server)
        error = await self.assertFailure(alice.login("alice", PASSWORD), ServerError)
        self.assertEqual(error.code, "auth_failed")
        await alice.login("alice", NEW_PASSWORD)

        # revoke-tokens: bob's sessions end and his token no longer works.
        revoked = await self.admin_json("user", "revoke-tokens", "bob")
        self.assertGreaterEqual(revoked["revoked"], 1)
        await self.closed_with(again, "signed_out")
        third = await open_session(self, server)
        error = await self.assertFailure(
            third.request({"type": "login", "user": "bob", "token": token}), ServerError
        )
        self.assertEqual(error.code, "auth_failed")

        # Deleted: alice's session ends, she leaves the lobby on the running
        # server, her message stays, and her name cannot be registered.
        said = await alice.say("lobby", "before I go")
        await self.admin("user", "delete", "alice", status=1)  # no terminal, no --yes
        deleted = await self.admin_json("user", "delete", "alice", "--yes")
        self.assertEqual(deleted["left_rooms"], ["lobby"])
        await self.closed_with(alice, "account_deleted")
        carol = await logged_in(self, server, "carol")
        self.assertNotIn("alice", await carol.who("lobby"))
        history = await carol.request({"type": "history", "stream": "room:lobby", "before": said["id"] + 1})
        self.assertIn("before I go", [e.get("body") for e in history["events"]])
        error = await self.assertFailure(
            (await open_session(self, server)).register("alice", PASSWORD), ServerError
        )
        self.assertEqual(error.code, "username_taken")
        gone = await self.admin_json("user", "show", "alice")
        self.assertEqual(
            (gone["user"]["state"], gone["user"]["rooms"], gone["user"]["devices"]), ("deleted", [], [])
        )
        refused = await self.admin_json("user", "enable", "alice", status=1)
        self.assertIn("deleted", refused["error"])
        missing = await self.admin_json("user", "disable", "nobody", status=1)
        self.assertIn("no user nobody", missing["error"])

        # Every change has its line in audit.log, with who made it.
        actions = [line.split("chatserver-admin:", 1)[1].split()[1:3] for line in self.audit_lines()]
        self.assertEqual(
            [a for a, _ in actions],
            [
                "add_user",
                "add_user",
                "set_role",
                "disable",
                "enable",
                "passwd",
                "revoke_tokens",
                "delete_user",
            ],
        )
        self.assertTrue(all("[chatserver.audit#info]" in line for line in self.audit_lines()))
        self.assertNotIn(NEW_PASSWORD, (server.settings.log_path / "audit.log").read_text())

    async def test_room_commands_list_and_show(self) -> None:
        server = await self.start()
        owner = await logged_in(self, server, "olga")
        await owner.request({"type": "create", "room": "den", "kind": "private"})
        rooms = await self.admin_json("room", "list")
        den = next(r for r in rooms["rooms"] if r["name"] == "den")
        self.assertEqual(
            (den["kind"], den["owner"], den["members"], den["encrypted"]), ("private", "olga", 1, False)
        )
        shown = await self.admin_json("room", "show", "den")
        self.assertEqual(shown["room"]["members"], [{"user": "olga", "role": "owner"}])
        self.assertIn("den\tprivate\tolga\tno\t1\t", (await self.admin("room", "list")).stdout)
        missing = await self.admin_json("room", "show", "nowhere", status=1)
        self.assertIn("no room", missing["error"])
        # An owner cannot be deleted until the room has another owner.
        refused = await self.admin_json("user", "delete", "olga", "--yes", status=1)
        self.assertIn("owns den", refused["error"])

    async def test_set_owner_and_delete_go_through_the_running_server_whose_members_see_them(self) -> None:
        server = await self.start()
        olga = await logged_in(self, server, "olga")
        bob = await logged_in(self, server, "bob")
        await logged_in(self, server, "carol")
        await olga.request({"type": "create", "room": "den", "kind": "private"})
        await olga.request({"type": "invite", "room": "den", "user": "bob"})
        await bob.request({"type": "join", "room": "den"})
        await olga.say("den", "a message that goes with the room")
        olga_events, bob_events = EventQueue(olga), EventQueue(bob)

        # carol is no member: she joins, then owns it; olga is a moderator.
        owned = await self.admin_json("room", "set-owner", "den", "carol")
        self.assertEqual(
            (owned["owner"], owned["was"], owned["changed"], owned["done_by"]),
            ("carol", "olga", True, "main"),
        )
        seen = [
            await bob_events.next(lambda e: e.get("room") == "den" and e["type"] in ("joined", "role"))
            for _ in range(3)
        ]
        self.assertEqual(
            [(e["type"], e["user"], e.get("role")) for e in seen],
            [("joined", "carol", None), ("role", "carol", "owner"), ("role", "olga", "moderator")],
        )
        shown = await self.admin_json("room", "show", "den")
        self.assertEqual(shown["room"]["owner"], "carol")
        self.assertEqual(
            {m["user"]: m["role"] for m in shown["room"]["members"]},
            {"olga": "moderator", "bob": "member", "carol": "owner"},
        )
        again = await self.admin("room", "set-owner", "den", "carol")
        self.assertIn("owns den already", again.stdout)
        for args, words in [
            (("nowhere", "carol"), "no room"),
            (("den", "nobody"), "no user"),
            (("den", "Not A Name!"), None),
        ]:
            refused = await self.admin("room", "set-owner", *args, status=2 if words is None else 1)
            self.assertIn(words or "error:", refused.stderr)

        # Deleting: refused without --yes and a terminal, and for the default room.
        unconfirmed = await self.admin("room", "delete", "den", status=1)
        self.assertIn("--yes", unconfirmed.stderr)
        lobby = await self.admin_json("room", "delete", "lobby", "--yes", status=1)
        self.assertIn("default room", lobby["error"])
        deleted = await self.admin_json("room", "delete", "den", "--yes")
        self.assertEqual((deleted["deleted"], deleted["members"]), (True, ["bob", "carol", "olga"]))
        for queue in (olga_events, bob_events):
            gone = await queue.next(lambda e: e["type"] == "deleted")
            self.assertEqual((gone["room"], gone["by"]), ("den", None))
        # The clients show it, and drop the room from their lists.
        self.assertIn("the room was deleted", format_event(gone, False, "bob"))
        model = ChatModel("bob")
        model.add_event(
            {"type": "joined", "room": "den", "stream": "room:den", "id": 2, "ts": 1, "user": "bob"}
        )
        self.assertEqual([c.name for c in model.rooms()], ["den"])
        model.add_event(gone)
        self.assertEqual(model.rooms(), [])
        with self.assertRaises(ServerError) as caught:
            await bob.say("den", "anyone?")
        self.assertEqual(caught.exception.code, "no_such_room")
        missing = await self.admin_json("room", "show", "den", status=1)
        self.assertIn("no room", missing["error"])
        # Its history is gone; a room made again under the name goes on
        # from its ids, with nobody of the old one in it.
        await olga.request({"type": "create", "room": "den", "kind": "public"})
        history = await olga.request({"type": "history", "stream": "room:den"})
        self.assertEqual([e["type"] for e in history["events"]], ["joined"])
        self.assertGreater(history["events"][0]["id"], 4)
        self.assertEqual(await self.count_events("room:den"), 1)
        self.assertEqual(
            [line.split("chatserver-admin:", 1)[1].split()[1] for line in self.audit_lines()],
            ["set_owner", "delete_room"],
        )
        # And everyone carries on in the lobby.
        self.assertEqual((await bob.say("lobby", "still here"))["type"], "ack")

    async def test_room_commands_change_the_database_directly_with_no_server_running(self) -> None:
        server = await self.start()
        olga = await logged_in(self, server, "olga")
        await logged_in(self, server, "bob")
        await olga.request({"type": "create", "room": "den", "kind": "public"})
        await olga.say("den", "history")
        await server.stop()
        offline = ("--offline",) if server.settings.uses_postgres else ()
        if offline:
            # Servers of other machines would not see it: refused unless told.
            refused = await self.admin_json("room", "set-owner", "den", "bob", status=1)
            self.assertIn("--offline", refused["error"])
        owned = await self.admin_json("room", "set-owner", "den", "bob", *offline)
        self.assertEqual((owned["was"], owned["done_by"]), ("olga", "database"))
        shown = await self.admin_json("room", "show", "den")
        self.assertEqual(
            {m["user"]: m["role"] for m in shown["room"]["members"]}, {"olga": "moderator", "bob": "owner"}
        )
        deleted = await self.admin_json("room", "delete", "den", "--yes", *offline)
        self.assertEqual(deleted["members"], ["bob", "olga"])
        self.assertEqual(await self.count_events("room:den"), 0)
        self.assertEqual(
            [line.split("chatserver-admin:", 1)[1].split()[1:3] for line in self.audit_lines()],
            [["set_owner", "room=den"], ["delete_room", "room=den"]],
        )
        # The server starts again without the room.
        restarted = RunningServer(server.settings)
        await restarted.start()
        self.addCleanup(restarted.stop)
        self.assertNotIn("den", restarted.factory.chat.rooms)
        self.assertIn("lobby", restarted.factory.chat.rooms)

    async def count_events(self, stream: str) -> int:
        def count() -> int:
            db = open_direct(self.server.settings)
            try:
                return int(db.fetch("SELECT COUNT(*) FROM events WHERE stream = ?", stream)[0][0])
            finally:
                db.close()

        return await threads.deferToThread(count)

    async def test_the_control_socket_answers_bad_requests_with_an_error_and_carries_on(self) -> None:
        server = await self.start()
        path = control.socket_path(server.settings.data_path.resolve(), None)
        self.assertEqual(oct(path.stat().st_mode & 0o777), "0o600")
        self.assertEqual(oct(path.parent.stat().st_mode & 0o777), "0o700")
        bob = await logged_in(self, server, "bob")

        def exchange(lines: list[bytes]) -> list[dict[str, Any]]:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            control._connect(sock, path)
            answers = []
            try:
                for line in lines:
                    sock.sendall(line + b"\n")
                    answers.append(control._read_line(sock, path))
            finally:
                sock.close()
            return answers

        bad = [
            b"not json",
            b"\xff\xfe",
            b"[1, 2]",
            b'{"op": "reboot"}',
            b'{"op": "account_changed"}',
            b'{"op": "account_changed", "user": "bob", "close": 7}',
            b'{"op": "account_changed", "user": "bob", "rooms": "lobby"}',
            b'{"op": "account_changed", "user": "bob", "close": "whatever"}',
            b'{"op": "ping"}',
        ]
        answers = await threads.deferToThread(exchange, bad)
        self.assertEqual([a["ok"] for a in answers], [False] * 8 + [True])
        self.assertTrue(all(a["error"] and "internal" not in a["error"] for a in answers[:8]), answers)
        self.assertEqual(answers[8]["process"], server.factory.chat.hub.name)
        # Nothing was done to bob, and the server serves on.
        self.assertEqual((await bob.say("lobby", "still here"))["type"], "ack")

    async def test_fingerprint_and_check(self) -> None:
        server = await self.start()
        printed = await self.admin_json("fingerprint")
        self.assertEqual(printed["fingerprint"], server.identity.fingerprint)
        self.assertEqual((await self.admin("fingerprint")).stdout.strip(), server.identity.fingerprint)
        checked = await self.admin_json("check")
        self.assertTrue(checked["ok"], checked)
        self.assertEqual(checked["schema_version"], checked["newest_schema"])
        self.assertEqual(checked["problems"], [])

    async def test_status_says_whether_the_server_runs(self) -> None:
        server = await self.start()
        running = await self.admin_json("status")
        self.assertEqual((running["ok"], running["processes"]), (True, {"main": True}))
        self.assertIn("running: main", (await self.admin("status")).stdout)
        await server.stop()
        stopped = await self.admin_json("status", status=1)
        self.assertFalse(stopped["ok"])
        self.assertNotIn(True, stopped["processes"].values())

    async def test_backup_while_a_client_sends_holds_everything_acknowledged_before(self) -> None:
        server = await self.start()
        sender = await logged_in(self, server, "sender")
        acked: list[int] = []
        stop = [False]

        async def send() -> None:
            for i in range(100_000):  # bounded; stops when the backup is done
                if stop[0]:
                    return
                ack = await sender.say("lobby", f"message {i}")
                acked.append(ack["id"])

        sending = ensureDeferred(send())
        await until(lambda: len(acked) >= 50, timeout=30)
        before = list(acked)
        dest = Path(self.mktemp()).resolve()
        done = await self.admin_json("backup", str(dest))
        stop[0] = True
        await sending
        self.assertEqual(oct(dest.stat().st_mode & 0o777), "0o600")
        ids = self.ids_in_backup(dest)
        self.assertTrue(set(before) <= ids, sorted(set(before) - ids)[:5])
        self.assertIsInstance(done["bytes"], int)
        self.assertGreater(len(acked), len(before), "the client went on sending")
        # A second backup to the same name is refused, not overwritten.
        refused = await self.admin_json("backup", str(dest), status=1)
        self.assertIn("exists", refused["error"])

    def ids_in_backup(self, dest: Path) -> set[int]:
        if backend() != "postgres":
            copy = sqlite3.connect(f"file:{dest}?mode=ro", uri=True)
            try:
                self.assertEqual(copy.execute("PRAGMA integrity_check").fetchone()[0], "ok")
                rows = copy.execute("SELECT id FROM events WHERE stream = 'room:lobby'").fetchall()
            finally:
                copy.close()
            return {row[0] for row in rows}
        from tests import backends

        url = backends.postgres().fresh_database(f"restored_{abs(hash(str(dest))) % 10**8}")
        subprocess.run(
            ["pg_restore", "--no-owner", f"--dbname={url}", str(dest)], check=True, capture_output=True
        )
        import psycopg

        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT id FROM events WHERE stream = 'room:lobby'").fetchall()
        return {row[0] for row in rows}
