"""Events as the message view's rich text, in the palette's colours.

Everything that came from the network is escaped before it becomes HTML;
only the links this module makes are markup.  And each such string is a
bidi isolate (``safetext.bidi_isolate``): right-to-left text or an RLO in a
name, a body or a topic orders only itself, never the time, the sender or
the words around it.
"""

from __future__ import annotations

import hashlib
import html
import re
import time
import urllib.parse
from typing import Any

from PyQt6.QtGui import QColor, QPalette

from chatserver.wire.safetext import bidi_isolate

#: The scheme of links that act inside the client instead of opening a browser.
JOIN_LINK = "chatclient:join/"
_URL = re.compile(r"\bhttps?://[^\s<>\"']+[^\s<>\"'.,;:!?)\]]")

#: Sender name colours, picked by a hash of the name; each has a light and a
#: dark variant so names stay readable on either palette.
_HUES = [210, 150, 30, 280, 340, 180, 100, 250, 0, 60]


def is_dark(palette: QPalette) -> bool:
    return palette.color(QPalette.ColorRole.Base).lightness() < 128


def sender_colour(name: str, palette: QPalette) -> str:
    hue = _HUES[hashlib.sha256(name.encode()).digest()[0] % len(_HUES)]
    colour = QColor.fromHsl(hue, 160, 170 if is_dark(palette) else 80)
    return colour.name()


def _mix(a: QColor, b: QColor, share: float) -> str:
    return QColor(
        round(a.red() * (1 - share) + b.red() * share),
        round(a.green() * (1 - share) + b.green() * share),
        round(a.blue() * (1 - share) + b.blue() * share),
    ).name()


def peer(value: Any) -> str:
    """A string from the network as plain text of the view: isolated."""
    return bidi_isolate(str(value))


def body_html(body: str) -> str:
    """Escape, make links clickable, keep line breaks; the whole an isolate."""
    body = bidi_isolate(body)
    out = []
    last = 0
    for found in _URL.finditer(body):
        out.append(html.escape(body[last : found.start()]))
        url = found.group(0)
        out.append(f'<a href="{html.escape(url, quote=True)}">{html.escape(url)}</a>')
        last = found.end()
    out.append(html.escape(body[last:]))
    return "".join(out).replace("\n", "<br>")


def clock(ts: Any) -> str:
    try:
        return time.strftime("%H:%M", time.localtime(ts / 1000))
    except (TypeError, ValueError, OverflowError):
        return "--:--"


def day(ts: Any) -> str:
    try:
        return time.strftime("%A %d %B %Y", time.localtime(ts / 1000))
    except (TypeError, ValueError, OverflowError):
        return ""


def _until(event: dict[str, Any]) -> str:
    until = event.get("until")
    if not isinstance(until, (int, float)):
        return ""
    return " until " + time.strftime("%d %b %H:%M", time.localtime(until / 1000))


def notice_text(event: dict[str, Any]) -> str | None:
    """The words for a room event that is not a message."""
    kind = event.get("type")
    user = peer(event.get("user", "?"))
    by = peer(event.get("by")) if event.get("by") is not None else None
    reason = event.get("reason")
    because = f" ({peer(reason)})" if reason else ""
    if kind == "joined":
        return f"{user} joined"
    if kind == "left":
        return f"{user} left"
    if kind == "topic":
        return f"{by} set the topic: {peer(event.get('topic', ''))}"
    if kind == "deleted":
        return "the room was deleted by the server's operator"
    if kind == "kicked":
        return f"{user} was removed by {by}{because}"
    if kind == "banned":
        return f"{user} was banned by {by}{_until(event)}{because}"
    if kind == "muted":
        return f"{user} was muted by {by}{_until(event)}{because}"
    if kind == "unbanned":
        return f"{by} lifted the ban on {user}"
    if kind == "unmuted":
        return f"{by} lifted the mute on {user}"
    if kind == "role":
        if by is None:
            return f"{user} is now the {peer(event.get('role'))} (the owner left)"
        return f"{by} made {user} {peer(event.get('role'))}"
    return None


#: What a message's padlock says about its sender's device.
TRUST_TIPS = {
    "verified": "End-to-end encrypted; the sender's device is verified",
    "unverified": "End-to-end encrypted; the sender's device is trusted on first use, not verified",
    "own": "End-to-end encrypted, from this device",
    "unknown": "End-to-end encrypted, by a device not yet listed",
}


class Renderer:
    def __init__(self, palette: QPalette, me: str) -> None:
        self.palette = palette
        self.me = me
        base = palette.color(QPalette.ColorRole.Base)
        text = palette.color(QPalette.ColorRole.Text)
        highlight = palette.color(QPalette.ColorRole.Highlight)
        self.own_background = _mix(base, highlight, 0.16)
        self.mention_background = _mix(base, QColor(230, 160, 0), 0.22)
        self.dim = _mix(base, text, 0.55)

    def event_html(self, event: dict[str, Any], previous: dict[str, Any] | None) -> str:
        parts = []
        if previous is None or day(previous.get("ts")) != day(event.get("ts")):
            parts.append(
                f'<p align="center" style="color:{self.dim}; margin-top:8px">── {day(event.get("ts"))} ──</p>'
            )
        kind = event.get("type")
        when = f'<span style="color:{self.dim}">{clock(event.get("ts"))}</span>'
        if kind in ("msg", "dm"):
            sender = str(event.get("from", "?"))
            name = html.escape(peer(sender))
            own = sender == self.me
            style = f"color:{sender_colour(sender, self.palette)}; font-weight:bold"
            background = ""
            if own:
                background = f' bgcolor="{self.own_background}"'
                name += " (you)"
            elif re.search(rf"(?<![\w@-])@?{re.escape(self.me)}(?![\w-])", str(event.get("body", "")), re.I):
                background = f' bgcolor="{self.mention_background}"'
            lock, body = self.e2e_marks(event)
            parts.append(
                f'<table width="100%" cellspacing="0" cellpadding="3"{background}><tr><td>'
                f'{when} {lock}<span style="{style}">{name}</span><br>{body}'
                "</td></tr></table>"
            )
        else:
            text = notice_text(event)
            if text is not None:
                parts.append(
                    f'<p style="color:{self.dim}; font-style:italic; margin:2px 3px">'
                    f"{when} — {html.escape(text)}</p>"
                )
        return "".join(parts)

    def e2e_marks(self, event: dict[str, Any]) -> tuple[str, str]:
        """(the mark before the sender, the body's HTML) of a message: a
        padlock on one read end to end (its tooltip says how far the
        sender's device is trusted), a warning sign and the reason, in
        italics, on one that could not be read."""
        body = body_html(str(event.get("body", "")))
        e2e = event.get("e2e")
        if not isinstance(e2e, dict):
            return "", body
        if not e2e.get("ok"):
            return '<span title="not decrypted">⚠</span> ', f'<i style="color:#c07000">{body}</i>'
        trust = str(e2e.get("trust", "unknown"))
        tip = TRUST_TIPS.get(trust, TRUST_TIPS["unknown"])
        mark = "🔒" if trust in ("verified", "own", "unverified") else "🔒?"
        return f'<span title="{html.escape(tip, quote=True)}">{mark}</span> ', body

    def local_notice(self, text: str, error: bool = False) -> str:
        colour = "#d04040" if error else self.dim
        return f'<p style="color:{colour}; font-style:italic; margin:2px 3px">• {html.escape(text)}</p>'

    def invitation(self, by: str, room: str) -> str:
        """A notice with a link that joins the room (see ``JOIN_LINK``)."""
        link = html.escape(JOIN_LINK + urllib.parse.quote(room, safe=""), quote=True)
        return (
            f'<p style="margin:2px 3px">• {html.escape(peer(by))} invited you to '
            f'<b>#{html.escape(peer(room))}</b> — <a href="{link}">join #{html.escape(peer(room))}</a></p>'
        )

    def conversation_html(
        self, events: list[dict[str, Any]], notes: list[tuple[int, str]] | None = None
    ) -> str:
        """``notes``: (id of the newest event when it was made, HTML) of
        this window's own notices, shown after that event."""
        out = []
        previous = None
        pending = list(notes or [])
        for event in events:
            while pending and pending[0][0] < event["id"]:
                out.append(pending.pop(0)[1])
            out.append(self.event_html(event, previous))
            previous = event
        out.extend(note for _, note in pending)
        return "".join(out)
