"""Slash commands: ``chatclient.commands.parse``, one input line into one request.

Parsing is pure, so these tests need no server.  What makes them worth
having is the second half of every check: each request the parser builds
goes through the server's own schema check (``chatserver.wire.validation``)
and must come out unchanged.  The client then never sends, for well-formed
input, a request the server would turn away as malformed, and a schema
change on either side that breaks a command fails here rather than in a
user's terminal.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.trial import unittest

from chatclient import commands
from chatclient.commands import Command, CommandError, parse, parse_duration
from chatserver.wire import validation
from chatserver.wire.validation import Limits, RequestError

ROOM = "general"
LIMITS = Limits(max_body_length=4096)

MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0
WEEK = 7 * DAY
#: The longest ban or mute the server accepts (``validation.duration``).
TEN_YEARS = 10 * 365 * DAY


def req(type_: str, /, **fields: Any) -> dict[str, Any]:
    """A request dict.  ``type_`` is positional only, so ``create`` can still take a ``kind`` field."""
    return {"type": type_, **fields}


# Every line here is well formed, so each must parse to exactly this Command
# and its request must pass the server's schema check unchanged.
CASES: list[tuple[str, Command]] = [
    # plain text and the "//" escape
    ("hello there", Command("say", req("say", room=ROOM, body="hello there"))),
    ("  indented  ", Command("say", req("say", room=ROOM, body="  indented  "))),
    ("//join is a command", Command("say", req("say", room=ROOM, body="/join is a command"))),
    ("//", Command("say", req("say", room=ROOM, body="/"))),
    ("a /slash later", Command("say", req("say", room=ROOM, body="a /slash later"))),
    ("héllo wörld ✓", Command("say", req("say", room=ROOM, body="héllo wörld ✓"))),
    # rooms
    ("/join lobby", Command("join", req("join", room="lobby"), "lobby")),
    ("/join lobby extra words", Command("join", req("join", room="lobby"), "lobby")),
    ("/JOIN lobby", Command("join", req("join", room="lobby"), "lobby")),
    ("/part", Command("part", req("part", room=ROOM), ROOM)),
    ("/part lobby", Command("part", req("part", room="lobby"), "lobby")),
    ("/leave lobby", Command("part", req("part", room="lobby"), "lobby")),
    ("/switch lobby", Command("switch", None, "lobby")),
    ("/rooms", Command("request", req("rooms"))),
    ("/list", Command("request", req("rooms"))),
    ("/create den", Command("join", req("create", room="den", kind="public"), "den")),
    ("/create --private den", Command("join", req("create", room="den", kind="private"), "den")),
    ("/create --readonly news", Command("join", req("create", room="news", kind="readonly"), "news")),
    ("/create --public den", Command("join", req("create", room="den", kind="public"), "den")),
    (
        "/create den a  quiet   place",
        Command("join", req("create", room="den", kind="public", topic="a quiet place"), "den"),
    ),
    (
        "/create --private --readonly den x",
        Command("join", req("create", room="den", kind="readonly", topic="x"), "den"),
    ),
    ("/topic", Command("topic", req("rooms"), ROOM)),
    ("/topic    ", Command("topic", req("rooms"), ROOM)),
    ("/topic  Cats,  only cats ", Command("request", req("topic", room=ROOM, topic="Cats,  only cats"))),
    ("/invite bob", Command("request", req("invite", room=ROOM, user="bob"))),
    ("/invite bob den", Command("request", req("invite", room="den", user="bob"))),
    ("/who", Command("request", req("who", room=ROOM))),
    ("/who den", Command("request", req("who", room="den"))),
    # direct messages: the text keeps its inner spacing
    ("/msg bob hi  there", Command("request", req("dm", to="bob", body="hi  there"))),
    ("/msg   bob   hi ", Command("request", req("dm", to="bob", body="hi"))),
    ("/dm bob /not a command", Command("request", req("dm", to="bob", body="/not a command"))),
    # history
    ("/history", Command("history", req("history", stream=f"room:{ROOM}", limit=20), ROOM)),
    ("/history 5", Command("history", req("history", stream=f"room:{ROOM}", limit=5), ROOM)),
    ("/history 1", Command("history", req("history", stream=f"room:{ROOM}", limit=1), ROOM)),
    ("/history 1000", Command("history", req("history", stream=f"room:{ROOM}", limit=1000), ROOM)),
    ("/history 007", Command("history", req("history", stream=f"room:{ROOM}", limit=7), ROOM)),
    # moderation
    ("/kick bob", Command("request", req("kick", room=ROOM, user="bob"))),
    (
        "/kick bob too  loud",
        Command("request", req("kick", room=ROOM, user="bob", reason="too loud")),
    ),
    ("/ban bob", Command("request", req("ban", room=ROOM, user="bob"))),
    ("/ban bob 90s", Command("request", req("ban", room=ROOM, user="bob", duration=90.0))),
    ("/ban bob 10m", Command("request", req("ban", room=ROOM, user="bob", duration=10 * MINUTE))),
    ("/ban bob 2h", Command("request", req("ban", room=ROOM, user="bob", duration=2 * HOUR))),
    ("/ban bob 7d", Command("request", req("ban", room=ROOM, user="bob", duration=7 * DAY))),
    ("/ban bob 1w", Command("request", req("ban", room=ROOM, user="bob", duration=WEEK))),
    ("/ban bob 45", Command("request", req("ban", room=ROOM, user="bob", duration=45.0))),
    ("/ban bob 1.5h", Command("request", req("ban", room=ROOM, user="bob", duration=1.5 * HOUR))),
    (
        "/ban bob 2h spamming links",
        Command("request", req("ban", room=ROOM, user="bob", duration=2 * HOUR, reason="spamming links")),
    ),
    (
        "/ban bob spamming links",
        Command("request", req("ban", room=ROOM, user="bob", reason="spamming links")),
    ),
    (
        "/ban bob 10minutes of spam",
        Command("request", req("ban", room=ROOM, user="bob", reason="10minutes of spam")),
    ),
    (
        "/ban bob 3x spam",
        Command("request", req("ban", room=ROOM, user="bob", reason="3x spam")),
    ),
    ("/mute bob", Command("request", req("mute", room=ROOM, user="bob"))),
    ("/mute bob 90s", Command("request", req("mute", room=ROOM, user="bob", duration=90.0))),
    ("/mute bob 10m", Command("request", req("mute", room=ROOM, user="bob", duration=10 * MINUTE))),
    ("/mute bob 2h", Command("request", req("mute", room=ROOM, user="bob", duration=2 * HOUR))),
    ("/mute bob 7d", Command("request", req("mute", room=ROOM, user="bob", duration=7 * DAY))),
    ("/mute bob 1w", Command("request", req("mute", room=ROOM, user="bob", duration=WEEK))),
    ("/mute bob 300", Command("request", req("mute", room=ROOM, user="bob", duration=300.0))),
    (
        "/mute bob 10m calm down",
        Command("request", req("mute", room=ROOM, user="bob", duration=10 * MINUTE, reason="calm down")),
    ),
    (
        "/mute bob calm down",
        Command("request", req("mute", room=ROOM, user="bob", reason="calm down")),
    ),
    ("/unban bob", Command("request", req("unban", room=ROOM, user="bob"))),
    ("/unmute bob", Command("request", req("unmute", room=ROOM, user="bob"))),
    ("/op bob", Command("request", req("op", room=ROOM, user="bob"))),
    ("/deop bob", Command("request", req("deop", room=ROOM, user="bob"))),
    ("/disable bob", Command("request", req("disable", user="bob"))),
    ("/enable bob", Command("request", req("enable", user="bob"))),
    # session and front end
    ("/logout", Command("request", req("logout"))),
    ("/info", Command("request", req("info"))),
    ("/stats", Command("request", req("stats"))),
    ("/stats --watch", Command("request", req("stats", subscribe=True))),
    ("/stats --stop", Command("request", req("stats", subscribe=False))),
    # end-to-end encryption
    (
        "/create --encrypted den",
        Command("join", req("create", room="den", kind="public", encrypted=True), "den"),
    ),
    (
        "/create --private --encrypted den hush",
        Command("join", req("create", room="den", kind="private", encrypted=True, topic="hush"), "den"),
    ),
    ("/devices", Command("e2e", e2e="devices")),
    ("/devices bob", Command("e2e", e2e="devices", args=("bob",))),
    ("/verify bob", Command("e2e", e2e="verify", args=("bob",))),
    ("/verify bob PHONEDEVICE", Command("e2e", e2e="verify", args=("bob", "PHONEDEVICE"))),
    ("/match", Command("e2e", e2e="match")),
    ("/nomatch", Command("e2e", e2e="nomatch")),
    ("/safety bob", Command("e2e", e2e="safety", args=("bob",))),
    ("/trust bob", Command("e2e", e2e="trust", args=("bob",))),
    ("/export-keys ~/room keys.json", Command("e2e", e2e="export", args=("~/room keys.json",))),
    ("/import-keys keys.json", Command("e2e", e2e="import", args=("keys.json",))),
    ("/help", Command("help")),
    ("/quit", Command("quit")),
    ("/exit", Command("quit")),
]


class CommandTests(unittest.TestCase):
    def assertParses(self, line: str, expected: Command, room: str = ROOM) -> None:
        """``line`` parses to exactly ``expected``, and its request is one the server accepts as sent."""
        command = parse(line, room)
        self.assertEqual(command, expected, f"parse({line!r})")
        self.assertAccepted(command, line)

    def assertAccepted(self, command: Command, line: str) -> None:
        if command.request is None:
            return
        try:
            clean = validation.validate(command.request, LIMITS)
        except RequestError as e:
            self.fail(f"server rejects {line!r} -> {command.request}: {e.code} ({e.field}): {e.message}")
        # The server's cleaned copy equals what was sent: nothing was coerced.
        self.assertEqual(clean, command.request, f"server normalises {line!r}")

    def assertCommandError(self, line: str, *fragments: str) -> None:
        error = self.assertRaises(CommandError, parse, line, ROOM)
        for fragment in fragments:
            self.assertIn(fragment, str(error), f"parse({line!r})")

    # --- the whole table -------------------------------------------------------

    def test_table(self) -> None:
        """Every well-formed line parses exactly and the server's schema accepts its request as it is."""
        for line, expected in CASES:
            self.assertParses(line, expected)

    def test_table_covers_help(self) -> None:
        """Each command HELP advertises has at least one line in the table; a new command needs a row."""
        advertised = set(re.findall(r"(?<![\w/])/([a-z][a-z-]*)", commands.HELP))
        slashed = [line for line, _ in CASES if line.startswith("/") and not line.startswith("//")]
        tested = {line[1:].split()[0].lower() for line in slashed}
        self.assertTrue(advertised)
        self.assertEqual(advertised - tested, set())

    def test_every_request_type_is_a_server_request(self) -> None:
        """Requests the client can build are a subset of the server's REQUESTS."""
        kinds = {command.request["type"] for _, command in CASES if command.request is not None}
        self.assertEqual(kinds - set(validation.REQUESTS), set())
        self.assertEqual(kinds & validation.PRE_LOGIN, set())

    # --- plain text ------------------------------------------------------------

    def test_say_goes_to_the_current_room(self) -> None:
        self.assertParses("hi", Command("say", req("say", room="den", body="hi")), room="den")

    def test_double_slash_sends_a_leading_slash(self) -> None:
        """Only the first slash is an escape: ``//`` -> ``/``, ``///`` -> ``//``."""
        self.assertParses("//shrug", Command("say", req("say", room=ROOM, body="/shrug")))
        self.assertParses("///x", Command("say", req("say", room=ROOM, body="//x")))

    def test_command_names_ignore_case_but_arguments_do_not(self) -> None:
        command = parse("/Kick bob Reason Here", ROOM)
        self.assertEqual(command.request, req("kick", room=ROOM, user="bob", reason="Reason Here"))

    # --- rooms -------------------------------------------------------------------

    def test_part_defaults_to_current_room(self) -> None:
        """The front end needs ``room`` to know which room it left, with or without ROOM."""
        self.assertEqual(parse("/part", "den").room, "den")
        self.assertEqual(parse("/part lobby", "den").room, "lobby")

    def test_switch_sends_nothing(self) -> None:
        """/switch is local: the client is already in the room."""
        self.assertIsNone(parse("/switch lobby", ROOM).request)

    def test_room_arguments_are_required(self) -> None:
        self.assertCommandError("/join", "usage: /join ROOM")
        self.assertCommandError("/join    ", "usage: /join ROOM")
        self.assertCommandError("/switch", "usage: /switch ROOM|N")

    def test_create_errors(self) -> None:
        self.assertCommandError("/create", "usage: /create [--private|--readonly] [--encrypted] ROOM [TOPIC]")
        self.assertCommandError("/verify", "usage: /verify USER [DEVICE]")
        self.assertCommandError("/export-keys", "usage: /export-keys FILE")
        self.assertCommandError("/create --private", "usage: /create")
        self.assertCommandError(
            "/create --secret den", "unknown option --secret", "--private, --readonly or --encrypted"
        )
        self.assertCommandError("/create --private --hidden den", "unknown option --hidden")

    def test_create_switches_to_the_new_room(self) -> None:
        """Creating joins: the action is ``join`` and ``room`` is the new room, not the current one."""
        command = parse("/create --private den", "lobby")
        self.assertEqual((command.action, command.room), ("join", "den"))

    def test_topic_show_versus_set(self) -> None:
        """Without text, /topic fetches the room list (topics are in it) and names the room to show."""
        shown = parse("/topic", "den")
        self.assertEqual(shown, Command("topic", req("rooms"), "den"))
        changed = parse("/topic new", "den")
        self.assertEqual(changed, Command("request", req("topic", room="den", topic="new")))

    def test_invite_needs_a_user(self) -> None:
        self.assertCommandError("/invite", "usage: /invite USER [ROOM]")

    # --- direct messages -------------------------------------------------------

    def test_msg_needs_user_and_text(self) -> None:
        self.assertCommandError("/msg", "usage: /msg USER TEXT")
        self.assertCommandError("/msg bob", "usage: /msg USER TEXT")
        self.assertCommandError("/msg bob    ", "usage: /msg USER TEXT")
        self.assertCommandError("/dm bob", "usage: /msg USER TEXT")

    # --- history -----------------------------------------------------------------

    def test_history_default(self) -> None:
        self.assertEqual(commands.DEFAULT_HISTORY, 20)
        self.assertEqual(parse("/history", "den").request, req("history", stream="room:den", limit=20))

    def test_history_bad_counts(self) -> None:
        """The client's range is the server's (1 to 1000), so a bad N never reaches the server."""
        for bad in ("0", "1001", "x", "-5", "+5", "2.5", "1e3", "99999999999999999999"):
            self.assertCommandError(f"/history {bad}", "usage: /history [N], N from 1 to 1000")

    # --- moderation --------------------------------------------------------------

    def test_moderation_needs_a_user(self) -> None:
        self.assertCommandError("/kick", "usage: /kick USER [REASON]")
        self.assertCommandError("/ban", "usage: /ban USER [DURATION] [REASON]")
        self.assertCommandError("/mute", "usage: /mute USER [DURATION] [REASON]")
        for name in ("unban", "unmute", "op", "deop", "disable", "enable"):
            self.assertCommandError(f"/{name}", f"usage: /{name} USER")

    def test_zero_duration_is_an_error_not_a_reason(self) -> None:
        """``0`` looks like a duration, so it is refused rather than silently becoming the reason."""
        self.assertCommandError("/ban bob 0", "bad duration '0'")
        self.assertCommandError("/mute bob 0m too loud", "bad duration '0m'")

    def test_parse_duration(self) -> None:
        for text, seconds in [
            ("90s", 90.0),
            ("10m", 600.0),
            ("2h", 7200.0),
            ("7d", 604800.0),
            ("1w", 604800.0),
            ("30", 30.0),
            ("0.5m", 30.0),
        ]:
            self.assertEqual(parse_duration(text), seconds, text)
        for bad in ("", "0", "0s", "m", "10y", "-1m", "10 m", "10M", "1e3"):
            error = self.assertRaises(CommandError, parse_duration, bad)
            self.assertIn("bad duration", str(error))

    def test_longest_accepted_duration(self) -> None:
        """Ten years is the server's limit and still goes through."""
        command = parse("/ban bob 3650d", ROOM)
        self.assertEqual(command.request, req("ban", room=ROOM, user="bob", duration=TEN_YEARS))
        self.assertAccepted(command, "/ban bob 3650d")

    def test_duration_beyond_server_limit(self) -> None:
        """A duration the server refuses should be a CommandError, not a request it rejects."""
        for line in ("/ban bob 1000w", "/mute bob 3651d", "/ban bob " + "9" * 400):
            self.assertCommandError(line, "duration")

    # --- unknown commands --------------------------------------------------------

    def test_unknown_command_is_named(self) -> None:
        self.assertCommandError("/frobnicate now", "unknown command /frobnicate", "/help")
        self.assertCommandError("/FROB", "unknown command /frob")
        self.assertCommandError("/", "unknown command /;")

    def test_errors_are_value_errors(self) -> None:
        """Callers may catch ``ValueError``; the CLI catches ``CommandError``."""
        self.assertTrue(issubclass(CommandError, ValueError))

    def test_non_ascii_digits_in_history(self) -> None:
        """``str.isdigit`` accepts '²', which ``int`` refuses: the CLI only catches CommandError."""
        self.assertCommandError("/history ²", "usage: /history")


class CompletionTableTests(unittest.TestCase):
    """``ARGUMENTS``, which the terminal client completes from, names the
    commands HELP lists and the parser knows, and no others."""

    def test_every_command_in_help_is_offered_and_nothing_else(self) -> None:
        listed = set(re.findall(r"(?:^  |, )/([a-z-]+)", commands.HELP, re.MULTILINE))
        self.assertEqual(listed, set(commands.ARGUMENTS))

    def test_every_offered_command_parses(self) -> None:
        for name in commands.ARGUMENTS:
            try:
                parse(f"/{name}", ROOM)
            except CommandError as e:
                self.assertNotIn("unknown command", str(e))

    def test_argument_kinds_follow_help(self) -> None:
        for name, kinds in commands.ARGUMENTS.items():
            # The usage is the words after the name up to the first one
            # in lower case (the description) or the next command.
            usage = re.search(rf"(?:^  |, )/{name}((?: [^ a-z/][^ ]*)*)", commands.HELP, re.MULTILINE)
            assert usage is not None, name
            words = re.findall(r"[A-Z]+", usage.group(1))
            named = [w for w in words if w in ("ROOM", "USER", "FILE")]
            if name == "create":
                named = []  # a new room's name: there is nothing to complete
            self.assertEqual([k for k in kinds if k], named, name)


class Transcript:
    """A front end that writes down what the dispatcher asked of it: the
    smallest second implementation of ``commands.Frontend`` (the terminal
    client and the GUI are the other two)."""

    def __init__(self, rooms: set[str]) -> None:
        self.rooms = rooms
        self.calls: list[tuple[str, Any]] = []

    def refuse(self, text: str) -> None:
        self.calls.append(("refuse", text))

    def is_member(self, room: str) -> bool:
        return room in self.rooms

    def not_member(self, room: str) -> None:
        self.calls.append(("not_member", room))

    def room_number(self, number: int) -> str | None:
        rooms = sorted(self.rooms)
        return rooms[number - 1] if 1 <= number <= len(rooms) else None

    def switch(self, room: str) -> None:
        self.calls.append(("switch", room))

    def help(self, text: str) -> None:
        self.calls.append(("help", text))

    def quit(self) -> None:
        self.calls.append(("quit", None))

    def say(self, command: Command) -> None:
        self.calls.append(("say", command.request))

    def join(self, command: Command) -> None:
        self.calls.append(("join", command.request))

    def part(self, command: Command) -> None:
        self.calls.append(("part", command.request))

    def history(self, command: Command) -> None:
        self.calls.append(("history", command.request))

    def topic(self, command: Command) -> None:
        self.calls.append(("topic", command.request))

    def request(self, command: Command) -> None:
        self.calls.append(("request", command.request))

    def e2e(self, command: Command) -> None:
        self.calls.append(("e2e", (command.e2e, command.args)))


class DispatchTests(unittest.TestCase):
    """``commands.run``: the one dispatcher both front ends use."""

    def run_lines(self, room: str, *lines: str, rooms: set[str] | None = None) -> list[tuple[str, Any]]:
        front = Transcript(rooms or {"lobby"})
        for line in lines:
            commands.run(line, room, front)
        return front.calls

    def test_each_action_reaches_its_own_method(self) -> None:
        calls = self.run_lines(
            ROOM, "hi", "/join den", "/part", "/history 5", "/topic", "/who", "/help", "/quit"
        )
        self.assertEqual(
            [name for name, _ in calls],
            ["say", "join", "part", "history", "topic", "request", "help", "quit"],
        )
        self.assertEqual(calls[0][1], req("say", room=ROOM, body="hi"))
        self.assertEqual(calls[1][1], req("join", room="den"))
        self.assertEqual(calls[6][1], commands.HELP)

    def test_a_line_that_does_not_parse_is_refused_with_the_reason(self) -> None:
        self.assertEqual(
            self.run_lines(ROOM, "/frobnicate", "/msg bob"),
            [
                ("refuse", "unknown command /frobnicate; /help lists them"),
                ("refuse", "usage: /msg USER TEXT"),
            ],
        )

    def test_switch_by_number_counts_rooms_in_name_order(self) -> None:
        calls = self.run_lines(
            ROOM, "/switch 1", "/switch 3", "/switch 4", "/switch 0", rooms={"lobby", "den", "ops"}
        )
        self.assertEqual(
            calls, [("switch", "den"), ("switch", "ops"), ("not_member", "4"), ("not_member", "0")]
        )

    def test_a_room_named_like_a_number_wins_over_the_number(self) -> None:
        calls = self.run_lines(ROOM, "/switch 2", "/switch 1", rooms={"2", "lobby"})
        self.assertEqual(calls, [("switch", "2"), ("switch", "2")])

    def test_switch_goes_only_to_a_room_the_user_is_in(self) -> None:
        self.assertEqual(
            self.run_lines(ROOM, "/switch lobby", "/switch den"), [("switch", "lobby"), ("not_member", "den")]
        )

    def test_room_commands_without_a_room_are_refused_and_send_nothing(self) -> None:
        calls = self.run_lines("", "hello", "/topic", "/history", "/kick bob", "/who")
        self.assertEqual(calls, [("refuse", commands.NO_ROOM)] * 5)
        # Commands that name their room, or need none, still go.
        self.assertEqual(
            [name for name, _ in self.run_lines("", "/join den", "/who lobby", "/msg bob hi", "/info")],
            ["join", "request", "request", "request"],
        )
