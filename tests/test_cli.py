"""The terminal client's commands, as a person types them.

Each client is a real ``python -m chatclient.cli`` process talking to a
real server over loopback; the tests type lines on its standard input and
wait for what it prints.  The reconnect test runs the server as ``twistd``
so it can be killed with SIGKILL and started again on the same port.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

from twisted.internet import endpoints, reactor
from twisted.trial import unittest

from chatclient.reconnect import ReconnectingClient
from tests.processes import LineProcess, cli, start_twistd
from tests.support import PASSWORD, install_identity, start_server, until
from tests.test_moderation import admin_session


class CliTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.base = Path(self.mktemp()).resolve()
        self.base.mkdir()
        self.password_file = self.base / "password"
        self.password_file.write_text(PASSWORD + "\n")
        self.known_hosts = self.base / "known_hosts"

    async def client(self, user: str, port: int, *extra: str, register: bool = True) -> LineProcess:
        """A logged-in terminal client (waits for its welcome)."""
        args = ["--password-file", str(self.password_file), "--known-hosts", str(self.known_hosts)]
        if register:
            args.append("--register")
        process = cli(self, user, port, user, *args, *extra)
        await process.wait_for(r"logged in as|\"type\": \"welcome\"")
        return process

    @staticmethod
    def count(process: LineProcess, pattern: str, fd: int = 1) -> int:
        regex = re.compile(pattern)
        return sum(1 for line in process.lines[fd] if regex.search(line))

    async def quit(self, process: LineProcess) -> None:
        process.close_stdin()
        self.assertEqual(await process.ended, 0, process.errors())


class RoomCommandTests(CliTestCase):
    async def test_private_room_invite_join_history_and_topic(self) -> None:
        server = await start_server(self)
        alice = await self.client("alice", server.port)
        bob = await self.client("bob", server.port)

        alice.write_line("/create --private secret hush now")
        await alice.wait_for(r"talking in secret", fd=2)
        alice.write_line("said before bob came")
        await alice.wait_for(r"\[secret\] alice: said before bob came")
        bob.write_line("/rooms")
        await bob.wait_for(r"^\* \d+ rooms:")
        self.assertFalse([line for line in bob.lines[1] if "secret" in line], "a private room was listed")

        alice.write_line("/invite bob")
        await alice.wait_for(r"\[secret\] \* invited bob")
        await bob.wait_for(r"\* alice invited you to secret; /join secret")
        bob.write_line("/join secret")
        await bob.wait_for(r"talking in secret", fd=2)
        # History on join: what was said before, once.
        await bob.wait_for(r"\[secret\] alice: said before bob came")
        await bob.wait_for(r"history of room:secret: 2 events", fd=2)  # alice joined, her message
        bob.write_line("hello in secret")
        await alice.wait_for(r"\[secret\] bob: hello in secret")

        alice.write_line("/topic plans for friday")
        await bob.wait_for(r"\[secret\] \* alice set the topic: plans for friday")
        bob.write_line("/topic")
        await bob.wait_for(r"topic of secret: plans for friday", fd=2)
        bob.write_line("/history 2")
        await bob.wait_for(r"history of room:secret: 2 events \(more before\)", fd=2)
        bob.write_line("/who")
        await bob.wait_for(r"\[secret\] users: alice, bob")

        bob.write_line("/part")
        await bob.wait_for(r"\[secret\] \* bob left")
        await bob.wait_for(r"talking in lobby", fd=2)
        bob.write_line("back in the lobby")
        await alice.wait_for(r"\[lobby\] bob: back in the lobby")
        self.assertEqual(self.count(bob, r"said before bob came"), 1)
        await self.quit(alice)
        await self.quit(bob)

    async def test_bad_commands_are_explained_and_the_client_goes_on(self) -> None:
        server = await start_server(self)
        alice = await self.client("alice", server.port)
        alice.write_line("/frobnicate")
        await alice.wait_for(r"unknown command /frobnicate; /help lists them", fd=2)
        alice.write_line("/msg bob")
        await alice.wait_for(r"usage: /msg USER TEXT", fd=2)
        alice.write_line("/join bad!name")
        await alice.wait_for(r"^! bad_room: ")
        alice.write_line("/msg nobody hello")
        await alice.wait_for(r"^! no_such_user: ")
        alice.write_line("/help")
        await alice.wait_for(r"/ban USER \[DURATION\] \[REASON\]", fd=2)
        alice.write_line("still here")
        await alice.wait_for(r"\[lobby\] alice: still here")
        await self.quit(alice)


class StartTests(CliTestCase):
    async def test_starting_in_another_room_and_a_last_line_without_newline(self) -> None:
        server = await start_server(self)
        bob = await self.client("bob", server.port)
        bob.write_line("/create ops")
        await bob.wait_for(r"talking in ops", fd=2)
        alice = await self.client("alice", server.port, "--room", "ops")
        await alice.wait_for(r"talking in ops", fd=2)
        alice.transport.write(b"last words, no newline")
        alice.close_stdin()
        self.assertEqual(await alice.ended, 0, alice.errors())
        await bob.wait_for(r"\[ops\] alice: last words, no newline$")
        await self.quit(bob)


class DirectMessageTests(CliTestCase):
    async def test_dm_to_an_offline_user_arrives_in_order_at_login(self) -> None:
        server = await start_server(self)
        carol = await self.client("carol", server.port)
        await self.quit(carol)  # carol exists, and is offline now
        alice = await self.client("alice", server.port)
        for n in range(5):
            alice.write_line(f"/msg carol note {n}")
        for n in range(5):
            await alice.wait_for(rf"\[dm\] alice -> carol: note {n}$")
        carol = await self.client("carol", server.port, register=False)
        for n in range(5):
            await carol.wait_for(rf"\[dm\] alice -> carol: note {n}$")
        notes = [line.rsplit(" ", 1)[1] for line in carol.lines[1] if "alice -> carol" in line]
        self.assertEqual(notes, ["0", "1", "2", "3", "4"])
        carol.write_line("/msg alice thanks")
        await alice.wait_for(r"\[dm\] carol -> alice: thanks")
        await self.quit(alice)
        await self.quit(carol)

    async def test_json_events_carry_stream_id_sender_and_time(self) -> None:
        server = await start_server(self)
        bob = await self.client("bob", server.port)
        alice = await self.client("alice", server.port, "--json")
        alice.write_line("for everyone")
        alice.write_line("/msg bob for you")
        msg = json.loads((await alice.wait_for(r'"type": "msg"')).string)
        dm = json.loads((await alice.wait_for(r'"type": "dm"')).string)
        self.assertEqual((msg["stream"], msg["sender"], msg["body"]), ("room:lobby", "alice", "for everyone"))
        self.assertEqual((dm["stream"], dm["sender"], dm["to"]), ("dm:alice:bob", "alice", "bob"))
        for event in (msg, dm):
            self.assertIsInstance(event["id"], int)
            self.assertIsInstance(event["ts"], int)
            self.assertRegex(event["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
        # Joining a room shows its history, marked as such.
        bob.write_line("/create ops")
        bob.write_line("first in ops")
        await bob.wait_for(r"\[ops\] bob: first in ops")
        alice.write_line("/join ops")
        found = await alice.wait_for(r'"body": "first in ops".*"history": true')
        old = json.loads(found.string)
        self.assertEqual((old["stream"], old["body"], old["sender"]), ("room:ops", "first in ops", "bob"))
        await self.quit(alice)
        await self.quit(bob)


class ModerationCommandTests(CliTestCase):
    async def test_kick_ban_mute_and_unban(self) -> None:
        server = await start_server(self)
        alice = await self.client("alice", server.port)
        bob = await self.client("bob", server.port)
        alice.write_line("/create ops")
        await alice.wait_for(r"talking in ops", fd=2)
        bob.write_line("/join ops")
        await bob.wait_for(r"talking in ops", fd=2)

        alice.write_line("/mute bob 10m too loud")
        await bob.wait_for(r"\[ops\] \* bob was muted by alice until \d{4}-\d\d-\d\d \d\d:\d\d \(too loud\)")
        bob.write_line("can I talk")
        await bob.wait_for(r"^! muted: you are muted in 'ops'")
        alice.write_line("/unmute bob")
        await bob.wait_for(r"\[ops\] \* bob was unmuted by alice")
        bob.write_line("thank you")
        await alice.wait_for(r"\[ops\] bob: thank you")

        alice.write_line("/kick bob enough")
        await bob.wait_for(r"\[ops\] \* bob was kicked by alice \(enough\)")
        await bob.wait_for(r"talking in lobby", fd=2)
        bob.write_line("/join ops")
        # A kick is not a ban.  (wait_for would match the first "talking in
        # ops" of this run: the second one is the rejoin.)
        await until(lambda: self.count(bob, r"talking in ops", fd=2) == 2, timeout=30)

        alice.write_line("/ban bob")
        await bob.wait_for(r"\[ops\] \* bob was banned by alice$")
        bob.write_line("/join ops")
        await bob.wait_for(r"^! banned: you are banned from 'ops'")
        refusals = self.count(bob, r"^! ")
        bob.write_line("/kick alice")
        await until(lambda: self.count(bob, r"^! ") > refusals, timeout=30)  # not a lobby moderator either
        alice.write_line("/unban bob")
        await alice.wait_for(r"\[ops\] \* bob was unbanned by alice")
        joins = self.count(bob, r"\[ops\] \* bob joined")
        bob.write_line("/join ops")
        await until(lambda: self.count(bob, r"\[ops\] \* bob joined") > joins, timeout=30)
        await self.quit(alice)
        await self.quit(bob)


class ReconnectTests(CliTestCase):
    timeout = 90

    async def test_survives_a_server_kill_and_sees_every_message_once(self) -> None:
        install_identity(self.base / "data")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        args = ("--endpoint", f"tcp:{port}:interface=127.0.0.1")
        server, _, _ = await start_twistd(self, self.base, *args)
        alice = await self.client("alice", port)
        alice.write_line("before the crash")
        await alice.wait_for(r"\[lobby\] alice: before the crash")

        server.signal("KILL")
        await server.ended
        await alice.wait_for(r"connection to 127\.0\.0\.1:\d+ lost .*; reconnecting", fd=2)
        alice.write_line("typed while the server was down")
        server, _, _ = await start_twistd(self, self.base, *args)

        # Someone else talks as soon as the server is back, possibly before
        # alice has reconnected: she gets it by catch-up or live, once.
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        bob = ReconnectingClient(reactor, endpoint, lambda fp: True, "bob", PASSWORD, register=True)
        bob.start()
        self.addCleanup(bob.stop)
        for n in range(3):
            await bob.say("lobby", f"bob {n}")
        await alice.wait_for(r"reconnected to 127\.0\.0\.1", fd=2)
        await alice.wait_for(r"\[lobby\] alice: typed while the server was down")
        for n in range(3):
            await alice.wait_for(rf"\[lobby\] bob: bob {n}$")
        alice.write_line("after the crash")
        await alice.wait_for(r"\[lobby\] alice: after the crash")
        for text in ("before the crash", "typed while the server was down", "bob 0", "bob 1", "bob 2"):
            self.assertEqual(self.count(alice, re.escape(text) + "$"), 1, alice.output())
        await self.quit(alice)


class LoginFailureTests(CliTestCase):
    async def test_cannot_connect_exits_1(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # nothing listens here once closed
        process = cli(self, "alice", port, "alice", "--password-file", str(self.password_file))
        self.assertEqual(await process.ended, 1)
        self.assertIn(f"cannot connect to 127.0.0.1:{port}", process.errors())

    async def test_disabled_account_ends_the_client_with_exit_2(self) -> None:
        """The server closes a disabled account's connections; the client
        tries to come back, is refused, and stops for good."""
        server = await start_server(self)
        bob = await self.client("bob", server.port)
        admin = await admin_session(self, server)
        answer = await admin.request({"type": "disable", "user": "bob"})
        self.assertEqual((answer["type"], answer["disabled"]), ("account", True))
        self.assertEqual(await bob.ended, 2)
        self.assertIn("account_disabled", bob.errors())


class StatsCommandTests(CliTestCase):
    async def test_info_for_everyone_and_stats_watch_for_admins(self) -> None:
        from tests.test_moderation import admin_session

        server = await start_server(self, monitor_enabled=True, monitor_interval=0.2)
        await admin_session(self, server)  # root exists, with the admin role
        alice = await self.client("alice", server.port)
        alice.write_line("/info")
        await alice.wait_for(r"^\* chatserver/\S+, up \d+m\d\ds, 2 users online$")
        alice.write_line("/stats")
        await alice.wait_for(r"^! forbidden: only an admin")
        root = await self.client("root", server.port, register=False)
        root.write_line("/stats --watch")
        await root.wait_for(r"^\* stats: up .* connections .* users online")
        await root.wait_for(r"server CPU [\d.]+%, RSS [\d.]+ MB, \d+ threads, \d+ fds.*monitor up")
        root.write_line("/stats --stop")
        await self.quit(root)
        await self.quit(alice)
