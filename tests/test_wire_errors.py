"""chatserver.wire.errors: a refusal becomes the spec's ``error`` event."""

from __future__ import annotations

from twisted.trial import unittest

from chatserver.accounts import AuthError
from chatserver.chat import ChatError
from chatserver.wire.errors import Refused
from chatserver.wire.validation import RequestError


class RefusedTests(unittest.TestCase):
    def test_the_event_has_the_code_message_and_request(self) -> None:
        self.assertEqual(
            ChatError("room_full", "that room is full").event("join"),
            {"type": "error", "code": "room_full", "message": "that room is full", "request": "join"},
        )

    def test_a_field_is_named_even_when_it_is_empty(self) -> None:
        self.assertEqual(RequestError("bad_field", "no", "room").event("join")["field"], "room")
        self.assertEqual(ChatError("no_such_user", "no", "").event("kick")["field"], "")

    def test_retry_after_is_rounded_up_to_a_tenth(self) -> None:
        event = AuthError("throttled", "wait", retry_after=0.31).event("login")
        self.assertEqual(event["retry_after"], 0.4)
        self.assertNotIn("retry_after", AuthError("auth_failed", "no").event("login"))
        self.assertNotIn("retry_after", AuthError("throttled", "no", retry_after=0).event("login"))

    def test_the_three_kinds_are_one_shape(self) -> None:
        for error in (RequestError("a", "b"), ChatError("a", "b"), AuthError("a", "b")):
            self.assertIsInstance(error, Refused)
            fields = (error.code, error.message, error.field, error.retry_after)
            self.assertEqual(fields, ("a", "b", None, None))
