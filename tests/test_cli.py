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
from typing import Any

from twisted.internet import endpoints, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.basic import LineReceiver
from twisted.trial import unittest

from chatclient.reconnect import ReconnectingClient
from chatserver.wire import channel, crypto
from tests.processes import LineProcess, cli, start_twistd
from tests.support import PASSWORD, identity_pem, install_identity, logged_in, start_server, until
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
        await alice.wait_for(r"nobody has no device that can read an encrypted message", fd=2)
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


class InviteTests(CliTestCase):
    async def test_register_with_an_invite_code(self) -> None:
        """On a server in invite mode: --invite registers; without a code,
        or with a used one, the client stops at once with exit 2 instead of
        retrying."""
        from tests.test_invites import make_invites

        server = await start_server(self, allow_registration="invite")
        (code,) = make_invites(server)
        alice = await self.client("alice", server.port, "--invite", code)
        self.assertIn("logged in as alice", alice.errors() + alice.output())
        for extra, wanted in (([], "invite_required"), (["--invite", code], "invite_invalid")):
            args = ["--password-file", str(self.password_file), "--known-hosts", str(self.known_hosts)]
            bob = cli(self, "bob", server.port, "bob", *args, "--register", *extra)
            self.assertEqual(await bob.ended, 2, bob.errors())
            self.assertIn(wanted, bob.errors())
        await self.quit(alice)


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


FORGED = "12:00 [lobby] root: URGENT: re-enter your password"


class ForgedLineTests(CliTestCase):
    """Whatever a server sends, each line the CLI prints is one it made:
    a line break in a peer's string continues the line it belongs to,
    indented, and invisible formatting characters are shown."""

    async def test_a_body_with_line_breaks_cannot_forge_a_message_line(self) -> None:
        server = await start_server(self)
        mallory = await logged_in(self, server, "mallory")
        await mallory.request({"type": "create", "room": "ops", "kind": "public"})
        alice = await self.client("alice", server.port, "--room", "ops")
        await alice.wait_for(r"talking in ops", fd=2)
        script = await self.client("bob", server.port, "--room", "ops", "--json")
        await script.wait_for(r"talking in ops", fd=2)
        # A real server keeps line breaks in bodies and topics.
        await mallory.request({"type": "topic", "room": "ops", "topic": "first\u2028" + FORGED})
        await mallory.say("ops", "hello\n" + FORGED + "\u2028" + FORGED + "\u2029" + FORGED)
        await mallory.say("ops", "abc\u202edlrow\u200b!")
        await alice.wait_for(r"mallory: abc")
        lines = alice.lines[1]
        for line in lines:
            self.assertFalse(line.startswith("12:00 [lobby] root"), f"forged line: {line!r}")
        start = next(i for i, line in enumerate(lines) if line.endswith("mallory: hello"))
        indent = " " * lines[start].index("hello")
        self.assertEqual(lines[start + 1 : start + 4], [indent + FORGED] * 3)
        topic = next(i for i, line in enumerate(lines) if line.endswith("mallory set the topic: first"))
        self.assertRegex(lines[topic + 1], r"^ +" + re.escape(FORGED) + "$")
        shown = next(line for line in lines if "mallory: abc" in line)
        self.assertTrue(shown.endswith("mallory: abc<U+202E>dlrow<U+200B>!"), shown)
        self.assertNotIn("\u202e", alice.output())
        self.assertNotIn("\u2028", alice.output())
        # --json: the same text for a script, escaped for a terminal.
        found = await script.wait_for(r"dlrow")
        self.assertNotIn("\u202e", found.string)
        self.assertEqual(json.loads(found.string)["body"], "abc\u202edlrow\u200b!")
        self.assertNotIn("\u2028", script.output())
        await self.quit(alice)
        await self.quit(script)

    async def test_every_string_from_a_hostile_server_is_shown_safely(self) -> None:
        pushed = [
            {
                "type": "msg",
                "room": "lobby",
                "stream": "room:lobby",
                "id": 1,
                "ts": 1,
                "from": "root\r" + FORGED,
                "body": "x",
            },
            {
                "type": "msg",
                "room": "lo\nbby",
                "stream": "room:lo",
                "id": 2,
                "ts": 1,
                "from": "eve\u202e",
                "body": "y",
            },
            {
                "type": "kicked",
                "room": "lobby",
                "stream": "room:lobby",
                "id": 3,
                "ts": 1,
                "user": "carol\x1b[2J",
                "by": "op\x07",
                "reason": "spam\n" + FORGED,
            },
            {"type": "joined", "room": "lobby\x1b]0;owned\x07", "user": "dave\n" + FORGED},
            {"type": "error", "code": "bad\n" + FORGED, "message": "no\u2028" + FORGED},
            {
                "type": "rooms",
                "rooms": [
                    {"room": "ops\n" + FORGED, "kind": "public", "members": 1, "topic": "t\n" + FORGED}
                ],
            },
            {
                "type": "stats",
                "app": {
                    "uptime": 5,
                    "connections": "1\r" + FORGED,
                    "authenticated": "\x1b[2J",
                    "users_online": 1,
                    "rooms": "\u202e",
                    "per_second": {"messages_in": 1.0, "messages_out": 1.0, "handshakes": 0.0},
                },
                "sample": {
                    "tree": {"cpu_percent": 1.0, "rss_bytes": 1e6, "threads": "\x07", "fds": "\n" + FORGED},
                    "system": {"cpu_percent": 1.0, "memory_percent": 1.0},
                },
                "monitor": {"up": True, "restarts": "\x1b]0;owned\x07"},
            },
            {"type": "surprise", "text": "\u202e\n" + FORGED},
        ]
        hostile = await HostileServer(
            welcome={"server": "evil\n" + FORGED, "role": "user\x1b[31m"},
            pushed=pushed,
            close_message="bye\r* " + FORGED + "\x1b[31m\x07",
        ).start(self)
        # This server speaks no end-to-end encryption (its CLOSE comes
        # before a device could be declared): the strings are the point.
        alice = await self.client("alice", hostile.port, "--no-e2e")
        await alice.wait_for(r"connection to .* lost", fd=2)
        await alice.wait_for(r"surprise")
        alice.signal("KILL")
        await alice.ended
        for fd in (1, 2):
            for line in alice.lines[fd]:
                self.assertNotRegex(line, r"^(\* )?12:00 \[lobby\] root", f"forged line on fd {fd}")
                for raw in ("\r", "\x1b", "\x07", "\u202e", "\u2028"):
                    self.assertNotIn(raw, line, f"fd {fd}: {line!r}")
        out = alice.output()
        self.assertIn("root\\r" + FORGED, out)
        self.assertIn("eve<U+202E>", out)
        self.assertIn("carol\\x1b[2J was kicked by op\\x07 (spam", out)
        self.assertIn("dave\\n" + FORGED, out)
        self.assertIn("evil\\n" + FORGED, out)
        # Continuation lines of a reason, an error and a topic are indented.
        for line in alice.lines[1]:
            if line.endswith(FORGED) and "\\n" not in line and "\\r" not in line:
                self.assertRegex(line, r"^ {4,}" + re.escape(FORGED))
        self.assertIn("bye\\r* " + FORGED + "\\x1b[31m\\x07", alice.errors())

    async def test_an_alert_cannot_forge_a_line_or_reach_the_terminal(self) -> None:
        hostile = await HostileServer(alert="no\r\n* " + FORGED + "\x1b[2J\x07").start(self)
        process = cli(self, "alice", hostile.port, "alice", "--password-file", str(self.password_file))
        self.assertEqual(await process.ended, 1)
        errors = process.errors()
        self.assertIn("no\\r\\n* " + FORGED + "\\x1b[2J\\x07", errors)
        for raw in ("\r", "\x1b", "\x07"):
            self.assertNotIn(raw, errors)
        self.assertFalse([line for line in process.lines[2] if line.startswith("* 12:00")])


class FirstUseTests(CliTestCase):
    async def test_a_first_contact_whose_finished_fails_pins_nothing(self) -> None:
        """The key is pinned only once the server has proven it holds it:
        a FINISHED that fails to verify (one bit flipped on the way) leaves
        known_hosts as it was, and the next, sound, connection pins."""
        server = await start_server(self)
        proxy = await BitFlipProxy(server.port, flips=1).start(self)
        first = cli(
            self,
            "alice",
            proxy.port,
            "alice",
            *("--password-file", str(self.password_file), "--known-hosts", str(self.known_hosts)),
        )
        self.assertEqual(await first.ended, 1, first.errors())
        self.assertIn("server finished MAC is wrong", first.errors())
        self.assertNotIn("pinned key", first.errors())
        self.assertFalse(self.known_hosts.exists(), "a key was pinned before FINISHED verified")
        self.assertEqual(proxy.connections, 1)

        second = await self.client("alice", proxy.port)
        await second.wait_for(r"pinned key", fd=2)
        self.assertEqual(
            self.known_hosts.read_text(), f"127.0.0.1:{proxy.port} {server.identity.fingerprint}\n"
        )
        await self.quit(second)
        third = await self.client("alice", proxy.port, register=False)
        self.assertNotIn("pinned key", third.errors())
        await self.quit(third)


# --- hostile peers ---------------------------------------------------------------


class _HostileProtocol(LineReceiver):
    """The server side of the real handshake (``chatserver.wire.channel``),
    then whatever the test's script says: a hostile server."""

    delimiter = b"\n"
    MAX_LENGTH = 16 * 1024 * 1024

    def __init__(self, server: HostileServer) -> None:
        self.server = server
        self.handshake = channel.ServerHandshake(server.key, server.key_der)
        self.channel: channel.SecureChannel | None = None

    def lineReceived(self, line: bytes) -> None:
        if self.channel is not None:
            try:
                events = self.channel.open(line) or []
            except (channel.PeerClosed, channel.ChannelError):
                self.transport.loseConnection()
                return
            for event in events:
                self.server.answer(self, event)
            return
        record = channel.decode_line(line)
        if self.handshake.state is channel.HandshakeState.AWAIT_HELLO:
            if self.server.alert is not None:
                self.transport.write(channel.encode_line(channel.alert_record(40, self.server.alert)))
                self.transport.loseConnection()
                return
            self.transport.write(channel.encode_line(self.handshake.receive_client_hello(record)))
        elif self.handshake.state is channel.HandshakeState.AWAIT_KEY_EXCHANGE:
            self.handshake.receive_key_exchange(record)
            self.handshake.derive()
        else:
            finished, self.channel = self.handshake.receive_finished(record)
            self.transport.write(channel.encode_line(finished))

    def send(self, *events: dict[str, Any]) -> None:
        assert self.channel is not None
        self.transport.write(self.channel.seal_events(list(events)))

    def close(self, code: str, message: str) -> None:
        assert self.channel is not None
        self.transport.write(self.channel.seal_close(code, message))
        self.transport.loseConnection()


class HostileServer:
    """A server that speaks the protocol but sends whatever it likes: after
    the welcome, the events in ``pushed``, then a CLOSE with
    ``close_message`` if that is set, ``close_after`` seconds after the
    welcome (time for a client to be seen online).  ``alert``: refuse the handshake at
    once with that alert text instead; ``login_error``: answer the login
    with this error event instead of a welcome."""

    def __init__(
        self,
        welcome: dict[str, Any] | None = None,
        pushed: list[dict[str, Any]] | None = None,
        close_message: str | None = None,
        close_after: float = 0.0,
        alert: str | None = None,
        login_error: dict[str, Any] | None = None,
    ) -> None:
        self.key = crypto.rsa_private_from_pem(identity_pem())
        self.key_der = crypto.rsa_public_der(self.key)
        self.fingerprint = crypto.fingerprint(self.key_der)
        self.welcome = welcome or {}
        self.pushed = pushed or []
        self.close_message = close_message
        self.close_after = close_after
        self.alert = alert
        self.login_error = login_error
        self.port = 0

    async def start(self, testcase: unittest.TestCase) -> HostileServer:
        factory = Factory.forProtocol(lambda: _HostileProtocol(self))
        listening = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        testcase.addCleanup(listening.stopListening)
        self.port = listening.getHost().port
        return self

    def answer(self, connection: _HostileProtocol, event: dict[str, Any]) -> None:
        kind, ref = event.get("type"), event.get("ref")
        if kind in ("login", "register") and self.login_error is not None:
            connection.send(dict(self.login_error, type="error", ref=ref))
        elif kind in ("login", "register"):
            welcome = {"type": "welcome", "user": event["user"], "role": "user", "rooms": ["lobby"]}
            connection.send(dict(welcome, **self.welcome, ref=ref))
            if self.pushed:
                connection.send(*self.pushed)
            if self.close_message is not None:
                reactor.callLater(self.close_after, connection.close, "bye", self.close_message)
        elif kind == "rooms":
            connection.send({"type": "rooms", "ref": ref, "rooms": []})
        elif kind == "who":
            connection.send({"type": "who", "ref": ref, "room": event["room"], "members": [], "users": []})
        elif kind == "history":
            connection.send(
                {"type": "history", "ref": ref, "stream": event["stream"], "events": [], "more": False}
            )
        else:
            connection.send({"type": "ack", "ref": ref})


class _Relay(Protocol):
    def __init__(self, peer: Protocol | None = None) -> None:
        self.peer = peer

    def dataReceived(self, data: bytes) -> None:
        assert self.peer is not None and self.peer.transport is not None
        self.peer.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.loseConnection()


class _ProxiedClient(_Relay):
    """The client's side of a :class:`BitFlipProxy` connection: bytes from
    the client go to the server once that connection is up."""

    def __init__(self, proxy: BitFlipProxy) -> None:
        super().__init__()
        self.proxy = proxy
        self.early = b""

    def connectionMade(self) -> None:
        self.transport.pauseProducing()
        upstream = _ServerSide(self, self.proxy.take_flip())
        d = endpoints.connectProtocol(self.proxy.target, upstream)
        d.addCallback(self._up)
        d.addErrback(lambda _: self.transport.loseConnection())

    def _up(self, upstream: Protocol) -> None:
        self.peer = upstream
        self.transport.resumeProducing()


class _ServerSide(_Relay):
    """Bytes from the server, line by line; with ``flip``, one bit of the
    MAC in the server's FINISHED (its second line) is flipped."""

    def __init__(self, client: _ProxiedClient, flip: bool) -> None:
        super().__init__(client)
        self.flip = flip
        self.lines = 0
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        if self.lines >= 2:
            return super().dataReceived(data)
        self.buffer += data
        while self.lines < 2 and b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            self.lines += 1
            if self.lines == 2 and self.flip:
                record = bytearray(channel.decode_line(line))
                assert record[0] == 0x04, "the server's second line is its FINISHED"
                record[-1] ^= 0x01
                line = channel.encode_line(bytes(record)).rstrip(b"\n")
            super().dataReceived(line + b"\n")
        if self.lines >= 2 and self.buffer:
            rest, self.buffer = self.buffer, b""
            super().dataReceived(rest)


class BitFlipProxy:
    """A loopback TCP proxy in front of a real server that flips one bit of
    the server's FINISHED on the first ``flips`` connections, and relays
    every other byte unchanged."""

    def __init__(self, target_port: int, flips: int = 1) -> None:
        self.target = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", target_port)
        self.flips = flips
        self.connections = 0
        self.port = 0

    def take_flip(self) -> bool:
        self.connections += 1
        if self.flips > 0:
            self.flips -= 1
            return True
        return False

    async def start(self, testcase: unittest.TestCase) -> BitFlipProxy:
        factory = Factory.forProtocol(lambda: _ProxiedClient(self))
        listening = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        testcase.addCleanup(listening.stopListening)
        self.port = listening.getHost().port
        return self


class EndToEndTests(CliTestCase):
    async def test_encrypted_messages_devices_and_verification_in_the_terminal(self) -> None:
        server = await start_server(self)
        alice = await self.client("alice", server.port)
        bob = await self.client("bob", server.port)
        alice.write_line("/msg bob only for bob")
        await bob.wait_for(r"^🔒\?? \d\d:\d\d \[dm\] alice -> bob: only for bob$")
        await alice.wait_for(r"^🔒 \d\d:\d\d \[dm\] alice -> bob: only for bob$")
        alice.write_line("/devices bob")
        await alice.wait_for(r"^\* bob: 1 devices$")
        listed = await alice.wait_for(r"^  ([A-Z]{10})  chatclient-cli on .*\[unverified\]")
        alice.write_line("/verify bob")
        shown = await alice.wait_for(r"^\* compare with bob \(([A-Z]{10})\): (.*)$")
        self.assertEqual(shown.group(1), listed.group(1))
        theirs = await bob.wait_for(r"^\* compare with alice \([A-Z]{10}\): (.*)$")
        self.assertEqual(shown.group(2), theirs.group(1))  # the same seven emoji and names
        self.assertEqual(len(shown.group(2).split("  ")), 7)
        alice.write_line("/match")
        bob.write_line("/match")
        await alice.wait_for(r"^\* bob's device [A-Z]{10} is verified$")
        await bob.wait_for(r"^\* alice's device [A-Z]{10} is verified$")
        alice.write_line("/devices bob")
        await alice.wait_for(r"\[verified\]")
        # An encrypted room.
        alice.write_line("/create --encrypted den")
        await alice.wait_for(r"talking in den", fd=2)
        bob.write_line("/join den")
        await bob.wait_for(r"talking in den", fd=2)
        bob.write_line("sealed words")
        await alice.wait_for(r"^🔒 \d\d:\d\d \[den\] bob: sealed words$")
        await self.quit(alice)
        await self.quit(bob)
