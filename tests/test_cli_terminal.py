"""The terminal client in a real pseudo-terminal (pexpect), against a
real server process: what a person at a keyboard sees and types.  The
screen is drawn by pyte, a terminal emulator, which also answers the
editor's cursor-position requests as a terminal does: the tests read rows
of the screen, as a person would."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Callable

import pexpect
import pyte
from twisted.internet import threads
from twisted.trial import unittest

from tests.processes import LineProcess, admin_tool, cli, cli_argv, start_twistd, stop_twistd
from tests.support import PASSWORD, python_env

#: The pseudo-terminal's size.
ROWS, COLUMNS = 24, 100
#: Seconds to wait for the screen to show something.
WAIT = 30.0


class _Screen(pyte.Screen):
    """A screen whose answers (the cursor position the line editor asks
    for) go back to the program, as a terminal's do."""

    child: Any = None

    def write_process_input(self, data: str) -> None:
        self.child.send(data)


class Terminal:
    """A program in a pseudo-terminal, and the screen it draws.  Blocking:
    used from a thread (``threads.deferToThread``)."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.screen = _Screen(COLUMNS, ROWS)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = b""
        self.child = pexpect.spawn(argv[0], argv[1:], env=env, dimensions=(ROWS, COLUMNS), timeout=WAIT)
        self.screen.child = self.child

    def pump(self, seconds: float = 0.2) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                data = self.child.read_nonblocking(65536, timeout=0.05)
            except pexpect.TIMEOUT:
                continue
            except pexpect.EOF:
                return
            self.raw += data
            self.stream.feed(data)

    def rows(self) -> list[str]:
        return [row.rstrip() for row in self.screen.display]

    def wait(self, check: Callable[[list[str]], Any], what: str) -> Any:
        """Pump until ``check(rows)`` is true; returns what it returned."""
        end = time.monotonic() + WAIT
        while time.monotonic() < end:
            self.pump()
            found = check(self.rows())
            if found:
                return found
        raise AssertionError(f"the screen never showed {what}:\n" + "\n".join(self.rows()))

    def row_with(self, text: str) -> int:
        """The index of the last row that holds ``text``."""
        return (
            self.wait(
                lambda rows: next((i + 1 for i in reversed(range(len(rows))) if text in rows[i]), 0),
                repr(text),
            )
            - 1
        )

    def prompt_row(self) -> str:
        """The prompt's row (the last one that starts like a prompt)."""
        prompt = re.compile(r"^(\(\w+\) )?\[[^\]]*\]>( |$)")
        index = self.wait(
            lambda rows: next((i + 1 for i in reversed(range(len(rows))) if prompt.match(rows[i])), 0),
            "a prompt",
        )
        return self.rows()[index - 1]

    def type(self, keys: str) -> None:
        self.child.send(keys)
        self.pump()

    def end(self) -> int:
        """Ctrl-D on an empty line; the exit status."""
        self.child.sendcontrol("u")
        self.child.sendcontrol("d")
        self.child.expect(pexpect.EOF)
        self.child.close()
        return self.child.exitstatus


# Keys, as a terminal sends them.
LEFT, UP, HOME, TAB, ENTER = "\x1b[D", "\x1b[A", "\x01", "\t", "\r"


class RegistrationTests(unittest.TestCase):
    def client(self, port: int, user: str, *extra: str) -> Any:
        child = pexpect.spawn(
            *(lambda argv: (argv[0], argv[1:]))(cli_argv(self, port, user, "--no-e2e", *extra)),
            env=python_env(),
            encoding="utf-8",
            timeout=30,
        )
        self.addCleanup(child.close, force=True)
        return child

    async def test_registration_asks_twice_and_sends_nothing_when_they_differ(self) -> None:
        base = Path(self.mktemp()).resolve()
        base.mkdir(parents=True)
        server, port, _ = await start_twistd(self, base)
        known = str(base / "known_hosts")

        def mistyped() -> Any:
            child = self.client(port, "dora", "--register", "--known-hosts", known)
            child.expect_exact("new password for dora: ")
            child.sendline("a long first password")
            child.expect_exact("the same password again: ")
            child.sendline("a long first passwort")
            child.expect_exact("the two passwords differ; nothing was sent")
            child.expect(pexpect.EOF)
            child.close()
            return child.exitstatus

        self.assertNotEqual(await threads.deferToThread(mistyped), 0)
        shown = admin_tool(base / "data", "user", "show", "dora")
        self.assertEqual(shown.returncode, 1)  # nothing was registered
        self.assertIn("no user dora", shown.stderr)

        def typed_twice() -> None:
            child = self.client(port, "dora", "--register", "--known-hosts", known)
            child.expect_exact("new password for dora: ")
            child.sendline("a long first password")
            child.expect_exact("the same password again: ")
            child.sendline("a long first password")
            child.expect_exact("* logged in as dora")
            child.expect_exact("[1:lobby]")  # the line editor reads now
            child.sendcontrol("d")
            child.expect(pexpect.EOF)

        await threads.deferToThread(typed_twice)

        def logs_in_once() -> None:
            child = self.client(port, "dora", "--known-hosts", known)
            child.expect_exact("password for dora: ")  # a login asks once
            child.sendline("a long first password")
            child.expect_exact("* logged in as dora")
            child.expect_exact("[1:lobby]")  # the line editor reads now
            child.sendcontrol("d")
            child.expect(pexpect.EOF)

        await threads.deferToThread(logs_in_once)
        self.assertEqual(await stop_twistd(server), 0)


class LineEditorTests(unittest.TestCase):
    """The line editor: editing, history, completion, the prompt, and
    what arrives while a line is typed."""

    async def start(self, *extra_env: tuple[str, str]) -> tuple[int, Terminal, LineProcess]:
        """A server, bob (a piped client, to talk to), and dora at a
        terminal, both registered; returns the port, dora and bob."""
        self.base = Path(self.mktemp()).resolve()
        self.base.mkdir(parents=True)
        self.server, port, _ = await start_twistd(self, self.base)
        self.addCleanup(lambda: stop_twistd(self.server) if self.server.exit_code is None else None)
        password = self.base / "password"
        password.write_text(PASSWORD + "\n")
        common = ("--password-file", str(password), "--known-hosts", str(self.base / "known_hosts"))
        bob = cli(self, "bob", port, "bob", "--no-e2e", "--register", *common)
        await bob.wait_for("logged in as bob")
        await bob.wait_for(r"\[lobby\] \* bob joined")
        env = dict(python_env(), TERM="xterm-256color", **dict(extra_env))
        env.pop("NO_COLOR", None)
        env.update(extra_env)
        argv = cli_argv(self, port, "dora", "--no-e2e", "--register", *common)
        dora = Terminal(argv, env)
        self.addCleanup(dora.child.close, force=True)
        await threads.deferToThread(dora.wait, lambda rows: dora.prompt_row(), "the prompt")
        await threads.deferToThread(dora.row_with, "[lobby] * dora joined")
        return port, dora, bob

    async def test_arrow_keys_edit_the_line_and_up_recalls_it(self) -> None:
        _, dora, bob = await self.start()

        def edit() -> str:
            dora.type("hello wrld")
            dora.type(LEFT * 3 + "o")  # the missing letter, three back
            return dora.prompt_row()

        self.assertEqual(await threads.deferToThread(edit), "[1:lobby]> hello world")
        await threads.deferToThread(dora.type, ENTER)
        await bob.wait_for(r"\d \[lobby\] dora: hello world$")

        def recall() -> str:
            dora.wait(lambda rows: dora.prompt_row() == "[1:lobby]>", "an empty prompt")
            dora.type(UP)
            recalled = dora.prompt_row()
            dora.type(HOME + "again: " + ENTER)
            return recalled

        self.assertEqual(await threads.deferToThread(recall), "[1:lobby]> hello world")
        await bob.wait_for(r"\d \[lobby\] dora: again: hello world$")
        self.assertEqual(await threads.deferToThread(dora.end), 0)

    async def test_tab_completes_commands_rooms_and_users(self) -> None:
        _, dora, bob = await self.start()
        bob.write_line("/create engineering the builders")
        await bob.wait_for(r"talking in engineering", fd=2)

        def complete_join() -> str:
            # The room listing the client asked for at start predates the
            # room: /rooms shows it, and so teaches its name.
            dora.type("/rooms" + ENTER)
            dora.row_with("engineering (public")
            dora.type("/jo" + TAB)
            dora.wait(lambda rows: dora.prompt_row() == "[1:lobby]> /join", "/join completed")
            dora.type("eng" + TAB)
            line = dora.prompt_row()
            dora.type(ENTER)
            return line

        self.assertEqual(await threads.deferToThread(complete_join), "[1:lobby]> /join engineering")

        def complete_user() -> str:
            # engineering comes before lobby: it is room 1 now.
            dora.wait(lambda rows: dora.prompt_row() == "[1:engineering]>", "the prompt in engineering")
            dora.type("hi @b" + TAB)
            line = dora.prompt_row()
            dora.type(ENTER)
            return line

        self.assertEqual(await threads.deferToThread(complete_user), "[1:engineering]> hi @bob")
        await bob.wait_for(r"\d \[engineering\] dora: hi @bob$")

        def switch_by_number() -> str:
            dora.type("/switch 2" + ENTER)
            return dora.wait(
                lambda rows: dora.prompt_row() if dora.prompt_row().startswith("[2:lobby]") else "",
                "the prompt in lobby",
            )

        self.assertEqual(await threads.deferToThread(switch_by_number), "[2:lobby]>")
        self.assertEqual(await threads.deferToThread(dora.end), 0)

    async def test_a_message_arriving_mid_line_is_printed_above_it(self) -> None:
        _, dora, bob = await self.start()
        await threads.deferToThread(dora.type, "half a li")
        self.assertEqual(await threads.deferToThread(dora.prompt_row), "[1:lobby]> half a li")
        bob.write_line("news from bob")

        def arrived() -> tuple[int, int, str]:
            message = dora.row_with("[lobby] bob: news from bob")
            dora.pump(0.5)
            prompt = dora.prompt_row()
            return message, dora.rows().index(prompt), prompt

        message, prompt_at, prompt = await threads.deferToThread(arrived)
        self.assertEqual(prompt, "[1:lobby]> half a li")  # the typed text, intact
        self.assertLess(message, prompt_at)  # the message above it
        self.assertRegex(dora.rows()[message], r"^\d\d:\d\d \[lobby\] bob: news from bob$")
        await threads.deferToThread(dora.type, "ne" + ENTER)
        await bob.wait_for(r"\d \[lobby\] dora: half a line$")
        self.assertEqual(await threads.deferToThread(dora.end), 0)

    async def test_mentions_ring_and_are_marked_and_names_have_colours(self) -> None:
        _, dora, bob = await self.start()
        bob.write_line("dora: are you there?")
        bob.write_line("nobody named here")
        row = await threads.deferToThread(dora.row_with, "bob: nobody named here")
        mention = dora.row_with("bob: dora: are you there?")
        self.assertRegex(dora.rows()[mention], r"^\d\d:\d\d » \[lobby\] bob: dora: are you there\?$")
        self.assertRegex(dora.rows()[row], r"^\d\d:\d\d \[lobby\] bob: nobody named here$")
        self.assertEqual(dora.raw.count(b"\a"), 1)  # one bell: the mention
        # bob's name is in a colour, the mention in bold; the rest is plain.
        line = dora.screen.buffer[row]
        at = dora.rows()[row].index("bob")
        self.assertNotEqual(line[at].fg, "default")
        self.assertEqual(line[at + 5].fg, "default")  # the body
        self.assertTrue(dora.screen.buffer[mention][20].bold)
        self.assertEqual(await threads.deferToThread(dora.end), 0)

    async def test_no_color_turns_colours_off_and_keeps_stamps(self) -> None:
        _, dora, bob = await self.start(("NO_COLOR", "1"))
        bob.write_line("plain words")
        row = await threads.deferToThread(dora.row_with, "bob: plain words")
        self.assertRegex(dora.rows()[row], r"^\d\d:\d\d \[lobby\] bob: plain words$")
        event_bytes = dora.raw[dora.raw.index(b"bob: plain") - 40 : dora.raw.index(b"bob: plain")]
        self.assertNotRegex(event_bytes.decode("utf-8", "replace"), r"\x1b\[(3\d|9\d|1;33)m")
        self.assertTrue(all(char.fg == "default" for char in dora.screen.buffer[row].values()))
        self.assertEqual(await threads.deferToThread(dora.end), 0)
