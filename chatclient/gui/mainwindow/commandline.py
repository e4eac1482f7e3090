"""The GUI's front end for the shared command dispatcher
(:func:`chatclient.commands.run`): how the window carries out and shows
each command.  The terminal client's is ``chatclient.cli.InputLines``."""

from __future__ import annotations

from typing import Any, Protocol

from chatclient import commands
from chatclient.commands import Command
from chatclient.gui.history import Requester
from chatclient.gui.model import ChatModel, Conversation
from chatclient.gui.render import peer
from chatclient.gui.rules import Problem
from chatserver.wire.names import room_stream


class Clearable(Protocol):
    def clear(self) -> None: ...


class CommandWindow(Protocol):
    """What the commands need of the main window (which is the one)."""

    @property
    def bridge(self) -> Requester: ...

    @property
    def model(self) -> ChatModel: ...

    @property
    def input(self) -> Clearable: ...

    def notice(self, text: str, error: bool = False) -> None: ...

    def report(self, problem: Problem, what: str) -> None: ...

    def current(self) -> Conversation | None: ...

    def current_room(self) -> str | None: ...

    def open_conversation(self, stream: str) -> None: ...

    def joined(self, room: str) -> None: ...

    def send(self, request: dict[str, Any], text: str) -> None: ...

    def load_older(self) -> None: ...

    def logged_out(self) -> None: ...

    def e2e_command(self, command: Command) -> None: ...

    def close(self) -> Any: ...


class WindowCommands:
    def __init__(self, window: CommandWindow) -> None:
        self.window = window
        #: The line being carried out, as typed (given back if it fails);
        #: "" for a command from a menu or a dialog.
        self.line = ""

    def run_line(self, line: str, room: str) -> None:
        """A line from the input; it leaves the input once it is taken
        (a refused line stays there to be corrected)."""
        self.line = line
        try:
            commands.run(line, room, self)
        finally:
            self.line = ""

    def dispatch(self, command: Command) -> None:
        """A command from a menu, a button or a link: the input is left alone."""
        commands.dispatch(command, self.window.current_room() or "", self)

    def _take(self) -> None:
        if self.line:
            self.window.input.clear()

    # --- commands.Frontend ---------------------------------------------------------

    def e2e(self, command: Command) -> None:
        self._take()
        self.window.e2e_command(command)

    def refuse(self, text: str) -> None:
        self.window.notice(text, error=True)

    def is_member(self, room: str) -> bool:
        target = self.window.model.conversations.get(room_stream(room))
        return target is not None and target.joined

    def room_number(self, number: int) -> str | None:
        rooms = self.window.model.rooms()  # as the room list shows them
        return rooms[number - 1].name if 1 <= number <= len(rooms) else None

    def not_member(self, room: str) -> None:
        self._take()
        self.window.notice(f"You are not in #{room}: /join {room}", error=True)

    def switch(self, room: str) -> None:
        self._take()
        self.window.open_conversation(room_stream(room))

    def say(self, command: Command) -> None:
        self._take()
        assert command.request is not None
        self.window.send(command.request, self.line)

    def help(self, text: str) -> None:
        self._take()
        for line in text.splitlines():
            self.window.notice(line)

    def quit(self) -> None:
        self._take()
        self.window.close()

    def history(self, command: Command) -> None:
        self._take()
        self.window.load_older()

    def topic(self, command: Command) -> None:
        self._take()
        conversation = self.window.current()
        self.window.notice(f"Topic: {peer(conversation.topic) if conversation else ''}")

    def join(self, command: Command) -> None:
        self._take()
        room = command.room
        assert command.request is not None
        self.window.bridge.request(
            command.request,
            lambda _: self.window.joined(room) if room else None,
            lambda problem: self.window.report(problem, "join"),
        )

    def part(self, command: Command) -> None:
        self._take()
        assert command.request is not None
        # The server's "left" event updates the lists.
        self.window.bridge.request(command.request, None, lambda problem: self.window.report(problem, "part"))

    def request(self, command: Command) -> None:
        self._take()
        request = command.request
        assert request is not None
        if request["type"] == "dm":
            self.window.send(request, self.line)  # a /msg that fails goes back to the input
            return

        def answered(answer: dict[str, Any]) -> None:
            if request["type"] == "logout":
                self.window.logged_out()
            elif answer.get("type") in ("rooms", "who", "info", "invited", "account"):
                self.window.notice(describe(answer))

        self.window.bridge.request(
            request, answered, lambda problem: self.window.report(problem, request["type"])
        )


def describe(answer: dict[str, Any]) -> str:
    """An answer as one line of the message view."""
    kind = answer.get("type")
    if kind == "rooms":
        return "Rooms: " + ", ".join(
            f"#{peer(r['room'])} ({peer(r['members'])})" for r in answer.get("rooms", [])
        )
    if kind == "who":
        return f"#{peer(answer.get('room'))}: " + ", ".join(map(peer, answer.get("users", [])))
    if kind == "info":
        return (
            f"{peer(answer.get('server'))}, up {answer.get('uptime', 0):.0f} s, "
            f"{peer(answer.get('users_online'))} users online"
        )
    if kind == "invited":
        return f"Invited {peer(answer.get('user'))} to #{peer(answer.get('room'))}"
    if kind == "account":
        return f"{peer(answer.get('user'))}: {'disabled' if answer.get('disabled') else 'enabled'}"
    return peer(str(answer))
