"""How the terminal client shows events as text: one line each for a
person (``format_event``), or one JSON object for a script
(``json_line``), and the :class:`Printer` that writes them where a pipe
expects them.  Every string in an event came from the network and may be
hostile: names are shown with each control character made visible, free
text has its line breaks indented (``chatserver.wire.safetext``)."""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime, timezone
from typing import Any, Callable, TextIO

from chatserver.wire.safetext import terminal_lines, terminal_text

__all__ = ["Printer", "format_event", "json_event", "json_line", "notice", "shown", "visible_length"]


_TRUST = {"verified": "🔒 ", "own": "🔒 ", "unverified": "🔒 ", "unknown": "🔒? "}


def _lock(event: dict[str, Any]) -> str:
    """How an encrypted message was read, before its line: a padlock, or
    a warning sign where it could not be (the body then says why)."""
    e2e = event.get("e2e")
    if not isinstance(e2e, dict):
        return ""
    if not e2e.get("ok"):
        return "⚠ "
    return _TRUST.get(str(e2e.get("trust")), "🔒? ")


_NOTICES = {
    "new_device": "{user} has a new device {device} {name}: check it with /verify {user} {device}",
    "changed_device": "the keys of {user}'s device {device} changed: it is not used",
    "removed_device": "{user} removed the device {device} {name}",
    "bad_signature": "the server listed a device {device} of {user} whose signature is false: not used",
}


def format_e2e(event: dict[str, Any]) -> str:
    kind = event.get("type")
    user, device = shown(event.get("user")), shown(event.get("device"))
    if kind == "e2e_notice":
        text = _NOTICES.get(str(event.get("kind")), "{user}'s device {device}: " + shown(event.get("kind")))
        line = "! " + text.format(user=user, device=device, name=f"({shown(event.get('name'))})")
        if event.get("blocking"):
            line += f"; a verified device changed: nothing is sent to {user} until /trust {user}"
        return line
    state = event.get("state")
    if state == "started":
        who = "verifying" if event.get("initiator") else "verification asked by"
        return f"* {who} {user}'s device {device}; wait for the emoji"
    if state == "sas":
        emoji = "  ".join(f"{shown(e[0])} {shown(e[1])}" for e in event.get("emoji", []))
        numbers = " ".join(shown(n) for n in event.get("decimals", []))
        return (
            f"* compare with {user} ({device}): {emoji}\n"
            f"    or the numbers {numbers}; /match if they are the same, /nomatch if not"
        )
    if state == "confirmed":
        return f"* waiting for {user} to compare"
    if state == "done":
        return f"* {user}'s device {device} is verified"
    return f"! verification with {user}'s device {device} failed: {shown(event.get('code'))}"


def _time(ts: Any) -> str:
    if not isinstance(ts, int):
        return ""
    return datetime.fromtimestamp(ts / 1000, timezone.utc).astimezone().strftime("%H:%M ")


def _until(event: dict[str, Any]) -> str:
    until = event.get("until")
    if not isinstance(until, int):
        return ""
    return " until " + datetime.fromtimestamp(until / 1000, timezone.utc).astimezone().strftime(
        "%Y-%m-%d %H:%M"
    )


def shown(value: Any) -> str:
    """A name, a room, a code from the network, for one line of output:
    every control and invisible character shown, never obeyed."""
    return terminal_text(str(value))


def _text(head: str, value: Any, tail: str = "") -> str:
    """``head`` then a peer's free text (a body, a topic, a reason) that
    may hold line breaks: its first line follows ``head``, each further
    line is indented to where the text began, so that no line of it can
    pass for a line of its own (those never start with a space)."""
    first, *rest = terminal_lines(str(value))
    indent = " " * max(4, visible_length(head))
    return "\n".join([head + first] + [indent + line for line in rest]) + tail


#: The colour codes a terminal front end puts around names (``nick``).
_SGR = re.compile(r"\x1b\[[0-9;]*m")


def visible_length(text: str) -> int:
    """The width of ``text`` without the colour codes in it (every
    other control character was made visible by ``_name`` already)."""
    return len(_SGR.sub("", text))


def _same(name: str) -> str:
    return name


def _reason(head: str, event: dict[str, Any]) -> str:
    if not event.get("reason"):
        return head
    return _text(head + " (", event["reason"], ")")


def format_event(event: dict[str, Any], stamped: bool = True, nick: Callable[[str], str] = _same) -> str:
    """The text for a person: one line, or more if a peer's text holds
    line breaks (those lines indented).  Every string in the event came
    from the network, and may be hostile.  ``stamped``: messages begin
    with their time (a terminal front end that stamps every line itself
    says False); ``nick`` may dress the sender's name (in colour)."""
    kind = event.get("type")
    room = shown(event.get("room", ""))
    at = f"[{room}] "
    when = _time(event.get("ts")) if stamped else ""
    user = shown(event.get("user"))
    by = shown(event.get("by"))
    if kind == "msg":
        return _text(f"{_lock(event)}{when}{at}{nick(shown(event['from']))}: ", event["body"])
    if kind == "dm":
        return _text(
            f"{_lock(event)}{when}[dm] {nick(shown(event['from']))} -> {nick(shown(event['to']))}: ",
            event["body"],
        )
    if kind in ("e2e_notice", "e2e_verify"):
        return format_e2e(event)
    if kind == "e2e_decrypted" and isinstance(event.get("event"), dict):
        # A message shown before as unreadable, now that its key came.
        return format_event(event["event"], stamped, nick) + "  (its key came late)"
    if kind == "joined":
        return f"{at}* {user} joined"
    if kind == "left":
        return f"{at}* {user} left"
    if kind == "topic":
        return _text(f"{at}* {by} set the topic: ", event["topic"])
    if kind == "kicked":
        return _reason(f"{at}* {user} was kicked by {by}", event)
    if kind in ("banned", "muted"):
        return _reason(f"{at}* {user} was {kind} by {by}{_until(event)}", event)
    if kind in ("unbanned", "unmuted"):
        return f"{at}* {user} was {kind} by {by}"
    if kind == "deleted":
        return f"{at}* the room was deleted by the server's operator"
    if kind == "role":
        by_whom = f" (by {by})" if event.get("by") else ""
        return f"{at}* {user} is now {shown(event['role'])}{by_whom}"
    if kind == "invited":
        if "user" in event:
            return f"{at}* invited {user}"
        return f"* {by} invited you to {room}; /join {room}"
    if kind == "account":
        return f"* account {user} {'disabled' if event['disabled'] else 'enabled'}"
    if kind == "who":
        return f"{at}users: {', '.join(map(shown, event['users']))}"
    if kind == "rooms":
        lines = [f"* {len(event['rooms'])} rooms:"]
        for r in event["rooms"]:
            mark = "*" if r.get("member") else " "
            head = f"  {mark} {shown(r['room'])} ({shown(r['kind'])}, {shown(r['members'])} members)"
            lines.append(_text(head + " - ", r["topic"]) if r.get("topic") else head)
        return "\n".join(lines)
    if kind == "welcome":
        return f"* logged in as {user} ({shown(event['role'])}) on {shown(event.get('server', '?'))}"
    if kind == "info":
        return (
            f"* {shown(event['server'])}, up {_span(event['uptime'])}, "
            f"{shown(event['users_online'])} users online"
        )
    if kind == "stats":
        return format_stats(event)
    if kind == "logged_out":
        return "* logged out"
    if kind == "error":
        retry = f" (retry in {shown(event['retry_after'])} s)" if event.get("retry_after") else ""
        return _text(f"! {shown(event.get('code'))}: ", event.get("message"), retry)
    return shown(json.dumps(event, ensure_ascii=False))


def _span(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    return (
        (f"{days}d" if days else "")
        + (f"{hours}h" if days or hours else "")
        + f"{minutes:02d}m{seconds:02d}s"
    )


def format_stats(event: dict[str, Any]) -> str:
    app = event["app"]
    rates = app["per_second"]
    line = (
        f"* stats: up {_span(app['uptime'])}, {shown(app['connections'])} connections "
        f"({shown(app['authenticated'])} logged in), {shown(app['users_online'])} users online, "
        f"{shown(app['rooms'])} rooms; "
        f"messages {rates['messages_in']:.1f}/s in, {rates['messages_out']:.1f}/s out; "
        f"{rates['handshakes']:.1f} handshakes/s"
    )
    sample = event.get("sample")
    if sample:
        tree, system = sample["tree"], sample["system"]
        line += (
            f"; server CPU {tree['cpu_percent']:.1f}%, RSS {tree['rss_bytes'] / 1e6:.1f} MB, "
            f"{shown(tree['threads'])} threads, {shown(tree['fds'])} fds; "
            f"system CPU {system['cpu_percent']:.1f}%, "
            f"memory {system['memory_percent']:.0f}%"
        )
    monitor = event.get("monitor") or {}
    line += (
        f"; monitor {'up' if monitor.get('up') else 'DOWN'} ({shown(monitor.get('restarts', 0))} restarts)"
    )
    return line


def json_event(event: dict[str, Any]) -> dict[str, Any]:
    """The event as received, plus ``sender`` and an ISO 8601 ``time`` for
    stream events, so a script need not know each type's field names."""
    out = dict(event)
    if "stream" in event and "id" in event:
        sender = event.get("from") or event.get("by") or event.get("user")
        if sender is not None:
            out.setdefault("sender", sender)
        if isinstance(event.get("ts"), int):
            out.setdefault("time", datetime.fromtimestamp(event["ts"] / 1000, timezone.utc).isoformat())
    return out


def json_line(value: Any) -> str:
    """``value`` as one line of JSON that is safe on a terminal: what
    ``json.dumps`` leaves as it is but a terminal would obey or hide (DEL,
    C1 controls, bidi and zero-width characters, U+2028 ...) is written as
    a ``\\uXXXX`` escape, which a JSON reader decodes to the same text."""
    line = json.dumps(value, ensure_ascii=False, sort_keys=True)
    if terminal_text(line) == line:
        return line
    out = []
    for char in line:
        if terminal_text(char) == char:
            out.append(char)
        else:
            units = char.encode("utf-16-be", "surrogatepass")
            out.extend(f"\\u{int.from_bytes(units[i : i + 2], 'big'):04x}" for i in range(0, len(units), 2))
    return "".join(out)


class Printer:
    """Where the terminal client's output goes when it is piped (or
    ``--json``): events on standard output, one line (or one JSON object)
    each, and notices on standard error.  :class:`chatclient.terminal.
    TerminalPrinter` is the one for a person at a terminal."""

    def __init__(self, out: TextIO, as_json: bool) -> None:
        self.out = out
        self.as_json = as_json

    def __call__(self, event: dict[str, Any], history: bool = False) -> None:
        """``history``: the event is from a history page, not live."""
        if self.as_json:
            line = json_line(json_event(dict(event, history=True) if history else event))
        else:
            line = format_event(event)
        self.write(line)

    def write(self, text: str) -> None:
        """Lines of ours (a listing), as they are."""
        self.out.write(text + "\n")
        self.out.flush()

    def notice(self, text: str) -> None:
        notice(text)

    def help(self, text: str) -> None:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


def notice(text: str) -> None:
    """A line on standard error; whatever came from the network in
    ``text`` must have been through ``log_text`` already."""
    sys.stderr.write(f"* {text}\n")
    sys.stderr.flush()
