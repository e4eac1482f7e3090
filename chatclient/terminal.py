"""The terminal client for a person at a terminal: a line editor.

When standard input and output are both a terminal (and ``--json`` is not
given), ``chatclient-cli`` reads its lines with prompt_toolkit instead of
cooked standard input: the line can be edited (arrows, Home/End, Ctrl-W
...), earlier lines come back with Up and Ctrl-R, Tab completes commands,
room names and usernames, the prompt shows the current room, and what
arrives while a line is half typed is printed above it, never into it.
Each line of output has a time stamp; names, mentions, notices and errors
have colours unless ``NO_COLOR`` is set.  A live message that names the
user, or a direct message, rings the bell and is marked with ``»``.

Everything a line *means* is decided where it is for a pipe
(``chatclient.cli.InputLines`` and ``chatclient.commands``): this module
only reads lines and shows events.  Piped and ``--json`` output stays as
it is, without colours or stamps.

The input history is kept in memory only: the lines typed are messages,
some of them end-to-end encrypted, and a history file would keep them in
the clear on disk.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
import zlib
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion, PathCompleter
from prompt_toolkit.document import Document
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.patch_stdout import patch_stdout
from prompt_toolkit.styles import Style

from chatclient.commands import ARGUMENTS
from chatclient.output import Printer, format_event, visible_length

if TYPE_CHECKING:
    from chatclient.cli import InputLines
    from chatclient.reconnect import ReconnectingClient

__all__ = ["Names", "Terminal", "TerminalPrinter", "colours_wanted", "wanted"]


def wanted(as_json: bool, stdin: TextIO, stdout: TextIO) -> bool:
    """Whether to read with the line editor: a person at a terminal."""
    return not as_json and stdin.isatty() and stdout.isatty() and os.environ.get("TERM") != "dumb"


def colours_wanted(stdout: TextIO, environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """Colours on a terminal, unless ``NO_COLOR`` is set to anything
    (https://no-color.org)."""
    return stdout.isatty() and not environ.get("NO_COLOR")


# Select Graphic Rendition: each span turns off only what it turned on,
# so that a coloured name inside a coloured line leaves the line's colour.
_NICKS = ("32", "33", "34", "35", "36", "92", "94", "95", "96")
_NOTICE = ("36", "39")  # cyan
_ERROR = ("31", "39")  # red
_MENTION = ("1;33", "22;39")  # bold yellow
_DIM = ("2", "22")
MARK = "» "


def _sgr(on: str, off: str, text: str) -> str:
    return f"\x1b[{on}m{text}\x1b[{off}m"


class Names:
    """The rooms and users this client has seen, for completion: the
    rooms it is in, those a listing or an invitation named, and the
    users who spoke, joined or were listed in a room it is in."""

    def __init__(self, client: ReconnectingClient) -> None:
        self.client = client
        self.seen_rooms: set[str] = set()
        self.users: set[str] = {client.user}

    def rooms(self) -> set[str]:
        return self.seen_rooms | set(self.client.rooms)

    def learn(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        for key in ("from", "to", "user", "by"):
            value = event.get(key)
            if isinstance(value, str):
                self.users.add(value)
        if kind == "who":
            self.users.update(u for u in event.get("users", []) if isinstance(u, str))
        elif kind == "rooms":
            self.seen_rooms.update(
                r["room"] for r in event.get("rooms", []) if isinstance(r, dict) and "room" in r
            )
        if kind in ("invited", "joined") and isinstance(event.get("room"), str):
            self.seen_rooms.add(event["room"])


class ChatCompleter(Completer):
    """Tab: a command's name after ``/``; a room or a user where the
    command takes one (``commands.ARGUMENTS``), a file for a FILE; in a
    message, a username (with its ``@`` if one was typed)."""

    def __init__(self, names: Names) -> None:
        self.names = names
        self.paths = PathCompleter(expanduser=True)

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterator[Completion]:
        text = document.text_before_cursor
        if text.startswith("/") and not text.startswith("//") and " " not in text:
            typed = text[1:].lower()
            for name in sorted(ARGUMENTS):
                if name.startswith(typed):
                    yield Completion(f"/{name} ", start_position=-len(text), display=f"/{name}")
            return
        word = document.get_word_before_cursor(WORD=True)
        if text.startswith("/") and not text.startswith("//"):
            name, *args = text[1:].split(" ")
            kinds = ARGUMENTS.get(name.lower(), ())
            position = len([a for a in args[:-1] if a]) if args else 0
            kind = kinds[position] if position < len(kinds) else None
        else:
            kind = "USER" if word else None  # a mention in a message
        if kind == "FILE":
            yield from self.paths.get_completions(Document(word, len(word)), complete_event)
            return
        if kind is None:
            return
        at = "@" if kind == "USER" and word.startswith("@") else ""
        typed = word[len(at) :].lower()
        candidates: Iterable[str] = self.names.rooms() if kind == "ROOM" else self.names.users
        for candidate in sorted(candidates):
            if candidate.startswith(typed):
                yield Completion(at + candidate, start_position=-len(word))


class TerminalPrinter(Printer):
    """Events and notices for a person: every line stamped with its time
    (the event's own, or now), colours where wanted, and mentions marked
    (``»``) and rung (the terminal's bell)."""

    def __init__(
        self,
        user: str,
        names: Names,
        colour: bool,
        current_room: Callable[[], str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(sys.stdout, as_json=False)
        self.user = user
        self.names = names
        self.colour = colour
        self.current_room = current_room
        self.clock = clock
        #: Rooms with live messages since they were last the current one:
        #: "+", or "!" where one named the user.
        self.activity: dict[str, str] = {}
        self._mention = re.compile(rf"(?<![a-z0-9_-]){re.escape(user)}(?![a-z0-9_-])", re.IGNORECASE)

    # sys.stdout is read at each write: patch_stdout replaces it while the
    # prompt is on screen, with one that prints above the prompt.
    def _out(self) -> TextIO:
        return sys.stdout

    def mentions_me(self, event: dict[str, Any]) -> bool:
        kind = event.get("type")
        if event.get("from") == self.user:
            return False
        if kind == "dm":
            return True
        return kind == "msg" and bool(self._mention.search(str(event.get("body", ""))))

    def __call__(self, event: dict[str, Any], history: bool = False) -> None:
        self.names.learn(event)
        text = format_event(event, stamped=False, nick=self._nick)
        kind = event.get("type")
        mention = not history and self.mentions_me(event)
        style = None
        if mention:
            style = _MENTION
        elif kind == "error" or text.startswith("! "):
            style = _ERROR
        elif re.match(r"(?:\[[^\]]*\] )?\* ", text):
            style = _NOTICE
        if not history and kind == "msg":
            room = str(event.get("room", ""))
            if room != self.current_room() and self.activity.get(room) != "!":
                self.activity[room] = "!" if mention else "+"
        ts = event.get("ts")
        self._emit(ts / 1000 if isinstance(ts, int) else self.clock(), text, style, mention)

    def notice(self, text: str) -> None:
        self._emit(self.clock(), f"* {text}", _NOTICE)

    def help(self, text: str) -> None:
        self._emit(self.clock(), text, None)

    def write(self, text: str) -> None:
        self._emit(self.clock(), text, None)

    def _nick(self, name: str) -> str:
        if not self.colour:
            return name
        if name == self.user:
            return _sgr("1", "22", name)
        colour = _NICKS[zlib.crc32(name.encode()) % len(_NICKS)]
        return _sgr(colour, "39", name)

    def _stamp(self, when: float) -> str:
        moment = datetime.fromtimestamp(when)
        today = datetime.fromtimestamp(self.clock()).date()
        return moment.strftime("%H:%M" if moment.date() == today else "%Y-%m-%d %H:%M")

    def _emit(self, when: float, text: str, style: tuple[str, str] | None, mark: bool = False) -> None:
        stamp = self._stamp(when)
        head = f"{stamp} {MARK if mark else ''}"
        lines = text.split("\n")
        out = []
        for number, line in enumerate(lines):
            if self.colour and style is not None:
                line = _sgr(*style, line)
            if number == 0:
                out.append((_sgr(*_DIM, stamp) if self.colour else stamp) + head[len(stamp) :] + line)
            else:
                out.append(" " * visible_length(head) + line)
        stream = self._out()
        stream.write("\n".join(out) + "\n" + ("\a" if mark else ""))
        stream.flush()


_STYLE = Style.from_dict(
    {
        "room": "bold",
        "state": "fg:ansired",
        "bottom-toolbar": "noreverse",
        "bottom-toolbar.current": "reverse",
        "bottom-toolbar.mention": "bold fg:ansiyellow",
        "bottom-toolbar.activity": "bold",
    }
)


class _Feed:
    """What ``InputLines`` (a LineReceiver) takes for its transport: it
    pauses reading while a ``/join`` is answered, and the editor asks for
    the next line only once it resumes."""

    def __init__(self) -> None:
        self._resumed: asyncio.Future[None] | None = None

    def pauseProducing(self) -> None:
        if self._resumed is None:
            self._resumed = asyncio.get_event_loop().create_future()

    def resumeProducing(self) -> None:
        resumed, self._resumed = self._resumed, None
        if resumed is not None and not resumed.done():
            resumed.set_result(None)

    def stopProducing(self) -> None:
        self.resumeProducing()

    def loseConnection(self) -> None:
        self.resumeProducing()

    async def ready(self) -> None:
        if self._resumed is not None:
            await self._resumed


class Terminal:
    """Reads lines with prompt_toolkit and gives each to ``lines``, until
    the end of input (Ctrl-D on an empty line) or until it is closed."""

    def __init__(self, lines: InputLines, client: ReconnectingClient, printer: TerminalPrinter) -> None:
        self.lines = lines
        self.client = client
        self.printer = printer
        self.feed = _Feed()
        self.session: PromptSession[str] = PromptSession(
            history=InMemoryHistory(),
            completer=ChatCompleter(printer.names),
            # A menu popping up at each word of a message would be in the
            # way: Tab asks for it.
            complete_while_typing=False,
            # A message shows up as the server's echo, stamped like the
            # others: the line as typed goes, so it is not there twice.
            erase_when_done=True,
            bottom_toolbar=self.toolbar,
            style=_STYLE,
            include_default_pygments_style=False,
        )
        self._task: asyncio.Task[None] | None = None
        self._interrupted = False

    def start(self) -> None:
        self.lines.makeConnection(self.feed)
        self._task = asyncio.ensure_future(self._run())
        # Names to complete: the rooms there are, and who is in ours.
        self._ask({"type": "rooms"})
        for room in self.client.rooms:
            self._ask({"type": "who", "room": room})
        self.client.add_listener(self._joined)

    def _ask(self, request: dict[str, Any]) -> None:
        """A request whose answer only feeds completion (never shown)."""
        self.client.request(request).addCallbacks(self.printer.names.learn, lambda _: None)

    def _joined(self, event: dict[str, Any]) -> None:
        if event.get("type") == "joined" and event.get("user") == self.client.user:
            self._ask({"type": "who", "room": event.get("room")})

    async def close(self) -> None:
        """Take the prompt off the screen (the terminal as it was)."""
        if self._task is None:
            return
        if self.session.app.is_running:
            self.session.app.exit(exception=EOFError())
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    def prompt(self) -> FormattedText:
        room = self.lines.room
        rooms = self.lines.numbered_rooms()
        parts: list[tuple[str, str]] = []
        if self.client.state != "online":
            parts.append(("class:state", f"({self.client.state}) "))
        if room in rooms:
            parts.append(("class:room", f"[{rooms.index(room) + 1}:{room}]"))
        else:
            parts.append(("class:room", "[no room]"))
        parts.append(("", "> "))
        return FormattedText(parts)

    def toolbar(self) -> FormattedText:
        """The rooms by number, as ``/switch N`` counts them; the current
        one highlighted, ``+`` where messages came, ``!`` where one named
        the user."""
        current = self.lines.room
        activity = self.printer.activity
        activity.pop(current, None)
        parts: list[tuple[str, str]] = [("", f" {self.client.user} ")]
        for number, room in enumerate(self.lines.numbered_rooms(), start=1):
            mark = activity.get(room, "")
            style = (
                "class:bottom-toolbar.current"
                if room == current
                else "class:bottom-toolbar.mention"
                if mark == "!"
                else "class:bottom-toolbar.activity"
                if mark
                else ""
            )
            parts += [("", " "), (style, f"{number}:{room}{mark}")]
        return FormattedText(parts)

    async def _run(self) -> None:
        with patch_stdout(raw=True):
            while not self.lines.done.called:
                await self.feed.ready()
                if self.lines.done.called:
                    break
                try:
                    if self.lines.wants_secret:
                        # Not echoed, and never in the history.
                        line = await PromptSession[str]().prompt_async("passphrase: ", is_password=True)
                    else:
                        line = await self.session.prompt_async(self.prompt)
                except KeyboardInterrupt:
                    # Ctrl-C drops the line, as in a shell; leaving is /quit
                    # or Ctrl-D.
                    if not self._interrupted:
                        self._interrupted = True
                        self.printer.notice("/quit or Ctrl-D on an empty line to leave")
                    continue
                except EOFError:
                    self.lines.connectionLost()
                    break
                self.lines.lineReceived(line.encode("utf-8"))
