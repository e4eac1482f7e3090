"""Slash commands: one line of user input into one request, and the one
dispatcher that hands it to a front end.

Shared by the terminal client and the GUI's input line, so both accept the
same commands with the same syntax and the same checks.  Parsing is pure:
it knows the current room but sends nothing.  ``parse`` returns a
:class:`Command`; its ``request`` (if any) goes to the server as it is, and
``action`` tells the front end what to do around it (switch rooms after a
join, print history, quit ...).  :func:`run` parses a line, makes the checks
both front ends need, and calls the :class:`Frontend` method for its action,
from one explicit table.  A front end only says how it shows things and how
it sends; it makes no decision of its own about what a line means.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Protocol

DEFAULT_HISTORY = 20

HELP = """commands (ROOM defaults to the current room):
  /join ROOM                     join a room and talk in it (shows recent history)
  /part [ROOM]                   leave a room
  /switch ROOM|N                 talk in another room you are in (N: its number, rooms
                                 numbered from 1 in the order of their names)
  /rooms                         list the rooms you can see
  /create [--private|--readonly] [--encrypted] ROOM [TOPIC]
                                 create a room (you own it); --encrypted: end to end
  /topic [TEXT]                  show or set the current room's topic
  /invite USER [ROOM]            invite a user to a private room
  /msg USER TEXT                 send a direct message (end-to-end encrypted)
  /history [N]                   the last N messages of the current room (default 20)
  /who [ROOM]                    list a room's members
  /kick USER [REASON]            remove a user from the current room
  /ban USER [DURATION] [REASON]  ban (DURATION like 90s, 10m, 2h, 7d; none: for good)
  /unban USER                    lift a ban
  /mute USER [DURATION] [REASON] stop a user from talking in the current room
  /unmute USER                   lift a mute
  /op USER, /deop USER           make or unmake a room moderator
  /disable USER, /enable USER    (server admins) lock or unlock an account
  /info                          the server's version, uptime and users online
  /stats [--watch|--stop]        (server admins) server statistics, once or every interval
  /devices [USER]                a user's devices (yours by default), and how far each is trusted
  /verify USER [DEVICE]          verify a device by comparing emoji; then /match or /nomatch
  /match, /nomatch               the emoji shown are the same on both devices, or they are not
  /safety USER                   the safety number to compare with USER out of band
  /trust USER                    you have looked at USER's changed device: send to them again
  /export-keys FILE              save this device's room keys, under a passphrase (asked next)
  /import-keys FILE              read room keys saved by another device of yours
  /logout                        end this session everywhere it is saved (and remove this device)
  /help                          this help
  /quit                          say goodbye and exit
anything else is sent as a message to the current room"""

#: Every command and what its positional arguments name, for completion
#: (``ROOM``, ``USER``, ``FILE``; None: free text or a number).  Aliases
#: (/exit, /leave, /list, /dm) are left out: one name each is enough to
#: offer.  tests.test_commands checks it against HELP and the parser.
ARGUMENTS: dict[str, tuple[str | None, ...]] = {
    "join": ("ROOM",),
    "part": ("ROOM",),
    "switch": ("ROOM",),
    "rooms": (),
    "create": (),
    "topic": (),
    "invite": ("USER", "ROOM"),
    "msg": ("USER",),
    "history": (),
    "who": ("ROOM",),
    "kick": ("USER",),
    "ban": ("USER",),
    "unban": ("USER",),
    "mute": ("USER",),
    "unmute": ("USER",),
    "op": ("USER",),
    "deop": ("USER",),
    "disable": ("USER",),
    "enable": ("USER",),
    "info": (),
    "stats": (),
    "devices": ("USER",),
    "verify": ("USER",),
    "match": (),
    "nomatch": (),
    "safety": ("USER",),
    "trust": ("USER",),
    "export-keys": ("FILE",),
    "import-keys": ("FILE",),
    "logout": (),
    "help": (),
    "quit": (),
}

_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([smhdw]?)$")
#: The server's limit for a ban or mute (validation.duration).
MAX_DURATION = 10 * 365 * 86400
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class CommandError(ValueError):
    """The line is not a valid command; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class Command:
    """What one input line asks for.

    ``action``: ``say`` (plain text), ``request`` (send and show the
    answer), ``join`` (send; on success switch to ``room`` and show its
    history), ``part``, ``switch``, ``history``, ``topic`` (show it),
    ``help``, ``quit``, ``e2e`` (end-to-end encryption: ``e2e`` says which
    operation, ``args`` its arguments).
    """

    action: str
    request: dict[str, Any] | None = None
    room: str | None = None
    #: For ``e2e``: ``devices``, ``verify``, ``match``, ``nomatch``,
    #: ``safety``, ``trust``, ``export`` or ``import``, and its arguments.
    e2e: str | None = None
    args: tuple[str, ...] = ()


def parse_duration(text: str) -> float:
    found = _DURATION.match(text)
    if not found or float(found.group(1)) <= 0:
        raise CommandError(f"bad duration {text!r}: use a number with s, m, h, d or w, like 10m")
    seconds = float(found.group(1)) * _UNITS[found.group(2)]
    if seconds > MAX_DURATION:
        raise CommandError(f"bad duration {text!r}: at most ten years (leave it out for a permanent ban)")
    return seconds


def _is_duration(text: str) -> bool:
    return bool(_DURATION.match(text))


def parse(line: str, room: str) -> Command:
    """``line`` without its line ending; ``room``: the current room."""
    if not line.startswith("/") or line.startswith("//"):
        # "//text" sends "/text": a way to start a message with a slash.
        return Command(
            "say", {"type": "say", "room": room, "body": line[1:] if line.startswith("//") else line}
        )
    name, _, rest = line[1:].partition(" ")
    words = rest.split()
    name = name.lower()

    def need(count: int, usage: str) -> None:
        if len(words) < count:
            raise CommandError(f"usage: /{name} {usage}")

    def target_request(kind: str) -> Command:
        need(1, "USER")
        return Command("request", {"type": kind, "room": room, "user": words[0]})

    if name in ("quit", "exit"):
        return Command("quit")
    if name == "help":
        return Command("help")
    if name == "join":
        need(1, "ROOM")
        return Command("join", {"type": "join", "room": words[0]}, words[0])
    if name in ("part", "leave"):
        target = words[0] if words else room
        return Command("part", {"type": "part", "room": target}, target)
    if name == "switch":
        need(1, "ROOM|N")
        return Command("switch", room=words[0])
    if name in ("rooms", "list"):
        return Command("request", {"type": "rooms"})
    if name == "create":
        kind = "public"
        encrypted = False
        while words and words[0].startswith("--"):
            flag = words.pop(0)
            if flag == "--encrypted":
                encrypted = True
                continue
            if flag not in ("--private", "--readonly", "--public"):
                raise CommandError(
                    f"unknown option {flag}; /create takes --private, --readonly or --encrypted"
                )
            kind = flag[2:]
        if not words:
            raise CommandError("usage: /create [--private|--readonly] [--encrypted] ROOM [TOPIC]")
        request: dict[str, Any] = {"type": "create", "room": words[0], "kind": kind}
        if encrypted:
            request["encrypted"] = True
        if len(words) > 1:
            request["topic"] = " ".join(words[1:])
        return Command("join", request, words[0])
    if name == "topic":
        if not rest.strip():
            return Command("topic", {"type": "rooms"}, room)
        return Command("request", {"type": "topic", "room": room, "topic": rest.strip()})
    if name == "invite":
        need(1, "USER [ROOM]")
        return Command(
            "request", {"type": "invite", "room": words[1] if len(words) > 1 else room, "user": words[0]}
        )
    if name in ("msg", "dm"):
        user, _, text = rest.strip().partition(" ")
        if not user or not text.strip():
            raise CommandError("usage: /msg USER TEXT")
        return Command("request", {"type": "dm", "to": user, "body": text.strip()})
    if name == "history":
        count = DEFAULT_HISTORY
        if words:
            if not re.fullmatch(r"[0-9]{1,4}", words[0]) or not 0 < int(words[0]) <= 1000:
                raise CommandError("usage: /history [N], N from 1 to 1000")
            count = int(words[0])
        return Command("history", {"type": "history", "stream": f"room:{room}", "limit": count}, room)
    if name == "who":
        return Command("request", {"type": "who", "room": words[0] if words else room})
    if name == "kick":
        need(1, "USER [REASON]")
        request = {"type": "kick", "room": room, "user": words[0]}
        if len(words) > 1:
            request["reason"] = " ".join(words[1:])
        return Command("request", request)
    if name in ("ban", "mute"):
        need(1, "USER [DURATION] [REASON]")
        request = {"type": name, "room": room, "user": words[0]}
        reason = words[1:]
        if reason and _is_duration(reason[0]):
            request["duration"] = parse_duration(reason.pop(0))
        if reason:
            request["reason"] = " ".join(reason)
        return Command("request", request)
    if name in ("unban", "unmute", "op", "deop"):
        return target_request(name)
    if name in ("disable", "enable"):
        need(1, "USER")
        return Command("request", {"type": name, "user": words[0]})
    if name == "info":
        return Command("request", {"type": "info"})
    if name == "stats":
        flags = {"--watch": True, "--stop": False}
        if words and words[0] not in flags:
            raise CommandError("usage: /stats [--watch|--stop]")
        request = {"type": "stats"}
        if words:
            request["subscribe"] = flags[words[0]]
        return Command("request", request)
    if name == "logout":
        return Command("request", {"type": "logout"})
    if name == "devices":
        return Command("e2e", e2e="devices", args=tuple(words[:1]))
    if name == "verify":
        need(1, "USER [DEVICE]")
        return Command("e2e", e2e="verify", args=tuple(words[:2]))
    if name in ("match", "nomatch"):
        return Command("e2e", e2e=name)
    if name in ("safety", "trust"):
        need(1, "USER")
        return Command("e2e", e2e=name, args=(words[0],))
    if name in ("export-keys", "import-keys"):
        need(1, "FILE")
        return Command("e2e", e2e=name.split("-")[0], args=(rest.strip(),))
    raise CommandError(f"unknown command /{name}; /help lists them")


#: What a command that acts on a room is refused with when no room is open
#: (only the GUI can be in none: the terminal client always has one).
NO_ROOM = "That command acts on a room: open the room first, or name it."


class Frontend(Protocol):
    """What the terminal client and the GUI each do for a command.

    The dispatcher has made its checks before it calls any of these (the
    line parses; a room command has a room; ``switch`` goes to a room the
    user is in).  The ``command`` methods send ``command.request`` and show
    the answer in the front end's own way.
    """

    def refuse(self, text: str) -> None:
        """The line cannot be carried out; ``text`` says why.  Nothing was sent."""

    def is_member(self, room: str) -> bool:
        """Whether the user is in ``room`` (so ``/switch`` may go there)."""

    def not_member(self, room: str) -> None:
        """``/switch`` to a room the user is not in."""

    def room_number(self, number: int) -> str | None:
        """The room numbered ``number`` (from 1) among those the user is
        in, in the order of their names; None if there are fewer."""

    def say(self, command: Command) -> None: ...

    def join(self, command: Command) -> None: ...

    def part(self, command: Command) -> None: ...

    def switch(self, room: str) -> None: ...

    def history(self, command: Command) -> None: ...

    def topic(self, command: Command) -> None: ...

    def request(self, command: Command) -> None: ...

    def e2e(self, command: Command) -> None:
        """An end-to-end encryption command (``command.e2e``)."""

    def help(self, text: str) -> None: ...

    def quit(self) -> None: ...


def needs_room(command: Command, room: str) -> bool:
    """The command acts on the current room, and there is none."""
    request = command.request or {}
    return (
        request.get("room") == ""
        or request.get("stream") == "room:"
        or command.action == "topic"
        and not room
    )


def dispatch(command: Command, room: str, frontend: Frontend) -> None:
    """Carry out a parsed command through ``frontend``."""
    if needs_room(command, room):
        frontend.refuse(NO_ROOM)
        return

    def switch(command: Command) -> None:
        target = command.room or ""
        if not frontend.is_member(target) and target.isdigit():
            # A room may be called "2": its name wins over a number.
            target = frontend.room_number(int(target)) or target
        if frontend.is_member(target):
            frontend.switch(target)
        else:
            frontend.not_member(target)

    actions: dict[str, Callable[[Command], None]] = {
        "say": frontend.say,
        "request": frontend.request,
        "join": frontend.join,
        "part": frontend.part,
        "switch": switch,
        "history": frontend.history,
        "topic": frontend.topic,
        "e2e": frontend.e2e,
        "help": lambda _: frontend.help(HELP),
        "quit": lambda _: frontend.quit(),
    }
    actions[command.action](command)


def run(line: str, room: str, frontend: Frontend) -> None:
    """One input line (without its line ending), ``room`` being the
    current room ("" for none): parse it and dispatch it, or refuse it
    with the parser's reason."""
    try:
        command = parse(line, room)
    except CommandError as e:
        frontend.refuse(str(e))
        return
    dispatch(command, room, frontend)
