"""Peer-supplied text made safe to show, in a log line or on a terminal.

Anything a peer sends may be hostile: a CR or LF in a log line forges a
whole line of its own, ESC and BEL reach the terminal of whoever tails the
log, and bidirectional overrides (U+202E) or zero-width characters make a
text read differently from what it is.  So every such string goes through
one of these functions on its way out:

- :func:`log_text` for a log line: one line, every character that is not
  plainly printable written as an escape (``\\r``, ``\\x1b``, ``\\u202e``),
  backslashes doubled so an escape cannot be faked, and a length cap.
- :func:`terminal_lines` for a terminal: the text's lines, each with
  controls written as escapes and invisible formatting characters shown
  as ``<U+202E>``, so the reader sees that they are there.

Shared by the server and the clients.
"""

from __future__ import annotations

import unicodedata

#: What a log line keeps of one peer-supplied string, in characters.
LOG_LIMIT = 200

# Letters that render as nothing, although Unicode calls them letters:
# the Hangul fillers and the Khmer inherent vowels.  (Format characters,
# category Cf, are caught by category: the bidi controls, ZWSP, ZWJ, the
# word joiner, the BOM, the soft hyphen ...)
_INVISIBLE_LETTERS = frozenset("\u115f\u1160\u17b4\u17b5\u3164\uffa0")

# Line breaks a terminal (or a reader) honours, besides LF: CR, VT, FF,
# NEL and the Unicode line and paragraph separators.
_LINE_BREAKS = str.maketrans({c: "\n" for c in "\r\x0b\x0c\x85\u2028\u2029"})

_SIMPLE_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape(char: str) -> str:
    simple = _SIMPLE_ESCAPES.get(char)
    if simple is not None:
        return simple
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _plain(char: str) -> bool:
    """Shown as itself in a log line: printable, no backslash, and not
    invisible."""
    return char.isprintable() and char != "\\" and char not in _INVISIBLE_LETTERS


def log_text(value: str | bytes | None, limit: int = LOG_LIMIT) -> str:
    """``value`` as one safe piece of a log line: at most ``limit``
    characters of it, each non-printable one escaped, then ``…`` and how
    many characters were left out."""
    if value is None:
        return "-"
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")
    text = value if len(value) <= limit else value[:limit]
    if not all(map(_plain, text)):
        text = "".join(c if _plain(c) else _escape(c) for c in text)
    if len(value) > limit:
        text += f"…[{len(value) - limit} more]"
    return text


def _visible(char: str) -> str:
    """A character as a terminal should show it."""
    if char == "\t":
        return "    "
    category = unicodedata.category(char)
    if category == "Cc" or 0xDC80 <= ord(char) <= 0xDCFF:
        return _escape(char)
    if category in ("Cf", "Cs", "Zl", "Zp") or char in _INVISIBLE_LETTERS:
        return f"<U+{ord(char):04X}>"
    return char


def terminal_text(text: str) -> str:
    """One line of peer text for a terminal: controls escaped, invisible
    formatting characters made visible.  A line break becomes ``\\n``;
    use :func:`terminal_lines` to keep them as lines."""
    if text.isprintable() and not any(c in _INVISIBLE_LETTERS for c in text):
        return text  # the common case, at C speed
    return "".join(map(_visible, text))


def terminal_lines(text: str) -> list[str]:
    """The lines of a peer's text for a terminal, each made safe as by
    :func:`terminal_text`.  Every kind of line break splits (CR, VT, FF,
    NEL, U+2028 and U+2029 as well as LF), so that none of them can move
    the cursor to forge a line; the caller shows the lines indented under
    their sender."""
    return [terminal_text(line) for line in text.replace("\r\n", "\n").translate(_LINE_BREAKS).split("\n")]


# Bidirectional classes that can change how text around them is ordered:
# strong right-to-left letters, Arabic numbers, and the explicit controls.
_BIDI_ACTIVE = frozenset({"R", "AL", "AN", "LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI"})
_ISOLATE_OPENERS = frozenset("\u2066\u2067\u2068")  # LRI, RLI, FSI
_PDI = "\u2069"
FSI = "\u2068"


def bidi_isolate(text: str) -> str:
    """``text`` made a bidi isolate (FSI ... PDI, Unicode's ``<bdi>``), so
    that whatever it holds (right-to-left words, an RLO) orders only
    itself, never the text around it: the sender name or the time beside a
    body.  A PDI without its opener inside ``text`` is dropped (it would
    close our isolate early) and openers left open are closed.  Text with
    nothing that could reorder anything (plain ASCII, as a rule) is
    returned as it is."""
    if text.isascii() or not any(unicodedata.bidirectional(c) in _BIDI_ACTIVE for c in text):
        return text
    out = [FSI]
    depth = 0
    for char in text:
        if char in _ISOLATE_OPENERS:
            depth += 1
        elif char == _PDI:
            if depth == 0:
                continue
            depth -= 1
        out.append(char)
    out.append(_PDI * (depth + 1))
    return "".join(out)
