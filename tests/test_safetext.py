"""chatserver.wire.safetext: peer text made safe for a log line, a terminal and
a bidi-aware display."""

from __future__ import annotations

from twisted.trial import unittest

from chatserver.wire.safetext import bidi_isolate, log_text, terminal_lines, terminal_text

RLO, PDF, FSI, PDI, LRI = "\u202e", "\u202c", "\u2068", "\u2069", "\u2066"


class LogTextTests(unittest.TestCase):
    def test_one_line_escaped_and_capped(self) -> None:
        self.assertEqual(log_text("a\r\nb\x1b[2J\x07\u202e\\"), "a\\r\\nb\\x1b[2J\\x07\\u202e\\\\")
        self.assertEqual(log_text("x" * 210, limit=200), "x" * 200 + "…[10 more]")
        self.assertEqual(log_text(b"\xff ok"), "\\xff ok")
        self.assertEqual(log_text(None), "-")


class TerminalTests(unittest.TestCase):
    def test_controls_escaped_and_invisible_characters_shown(self) -> None:
        self.assertEqual(terminal_text("abc\u202edef\u200b\x1b"), "abc<U+202E>def<U+200B>\\x1b")
        self.assertEqual(terminal_text("plain"), "plain")

    def test_every_line_break_splits(self) -> None:
        self.assertEqual(
            terminal_lines("a\nb\r\nc\rd\u2028e\u2029f\x85g\x0bh\x0ci"),
            ["a", "b", "c", "d", "e", "f", "g", "h", "i"],
        )


class BidiIsolateTests(unittest.TestCase):
    def test_plain_text_is_left_alone(self) -> None:
        for text in ("alice", "hello, world 123", "café ünïcode", ""):
            self.assertEqual(bidi_isolate(text), text)

    def test_right_to_left_text_and_overrides_are_isolated(self) -> None:
        self.assertEqual(bidi_isolate("שלום"), FSI + "שלום" + PDI)
        self.assertEqual(bidi_isolate("eve" + RLO), FSI + "eve" + RLO + PDI)
        self.assertEqual(bidi_isolate("a" + RLO + "b" + PDF), FSI + "a" + RLO + "b" + PDF + PDI)

    def test_a_stray_pdi_cannot_close_the_isolate_early(self) -> None:
        self.assertEqual(bidi_isolate("eve" + PDI + RLO), FSI + "eve" + RLO + PDI)
        # Balanced isolates inside stay; unclosed ones are closed.
        self.assertEqual(bidi_isolate(LRI + "x" + PDI + PDI), FSI + LRI + "x" + PDI + PDI)
        self.assertEqual(bidi_isolate(LRI + LRI + "x"), FSI + LRI + LRI + "x" + PDI * 3)
