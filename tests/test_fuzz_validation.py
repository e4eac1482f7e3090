"""Properties of request validation (``chatserver.wire.validation.validate``).

The request types and their members come from the spec's Requests table
and the value rules from its Values section (``tests/fuzzing.py``); the
error codes from its Errors table.  Run with a bounded number of examples
in ``make test`` and for long in ``make fuzz`` (see ``tests/fuzzing``).
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from twisted.trial import unittest

from chatserver.wire import channel
from chatserver.wire.validation import REQUESTS, Limits, RequestError, validate
from tests import fuzzing
from tests.fuzzing import ERROR_CODES, MAX_BODY, REQUEST_TABLE, VALIDATION_CODES, check, skip_when_fuzzing

LIMITS = Limits(MAX_BODY)


def _refused(event: dict[str, Any]) -> RequestError:
    try:
        clean = validate(event, LIMITS)
    except RequestError as e:
        return e
    raise AssertionError(f"{event!r} was accepted as {clean!r}")


class SpecTableTests(unittest.TestCase):
    def test_requests_match_the_spec_table(self) -> None:
        """Every request type of the spec's table is validated, with the
        members the table lists, required where it says so."""
        implemented = {
            kind: {m: required for m, (_, required) in schema.items()} for kind, schema in REQUESTS.items()
        }
        self.assertEqual(implemented, REQUEST_TABLE)

    def test_every_member_has_a_generator(self) -> None:
        members = {m for schema in REQUEST_TABLE.values() for m in schema}
        self.assertEqual(members - set(fuzzing.MEMBER_KINDS), set())

    def test_validation_codes_are_in_the_spec(self) -> None:
        self.assertEqual(VALIDATION_CODES - ERROR_CODES, set())


class ValidationProperties(unittest.TestCase):
    timeout = fuzzing.TEST_TIMEOUT

    def test_valid_requests_validate_to_their_normalized_values(self) -> None:
        def prop(pair: tuple[dict[str, Any], dict[str, Any]]) -> None:
            request, clean = pair
            self.assertEqual(validate(request, LIMITS), clean)

        check(prop, fuzzing.valid_requests(), name="validation: valid requests")

    def test_valid_requests_validate_for_every_type(self) -> None:
        """The same, type by type, so no type is left to chance."""
        skip_when_fuzzing()
        for kind in sorted(REQUEST_TABLE):

            def prop(pair: tuple[dict[str, Any], dict[str, Any]]) -> None:
                self.assertEqual(validate(pair[0], LIMITS), pair[1])

            check(prop, fuzzing.valid_requests([kind]), scale=0.1, name=f"validation: valid {kind}")

    def test_mutated_requests_are_refused_with_the_right_code_and_field(self) -> None:
        def prop(mutation: fuzzing.Mutation) -> None:
            error = _refused(mutation.request)
            self.assertEqual((error.code, error.field), (mutation.code, mutation.field), mutation)
            self.assertIsInstance(error.message, str)

        check(prop, fuzzing.mutated_requests(), scale=1.5, name="validation: mutated requests")

    def test_mutated_requests_for_every_type(self) -> None:
        skip_when_fuzzing()
        for kind in sorted(REQUEST_TABLE):

            def prop(mutation: fuzzing.Mutation) -> None:
                error = _refused(mutation.request)
                self.assertEqual((error.code, error.field), (mutation.code, mutation.field), mutation)

            check(prop, fuzzing.mutated_requests([kind]), scale=0.15, name=f"validation: mutated {kind}")

    def test_any_event_validates_or_is_refused_with_a_spec_code(self) -> None:
        """Whatever the members, ``validate`` returns a clean request or
        raises ``RequestError`` with a validation code of the spec's table
        and a field that names the member at fault: never anything else."""

        def prop(event: dict[str, Any]) -> None:
            try:
                clean = validate(event, LIMITS)
            except RequestError as e:
                self.assertIn(e.code, VALIDATION_CODES)
                self.assertIsInstance(e.field, str)
                self.assertTrue(
                    e.field in ("type", "ref")
                    or e.field in REQUEST_TABLE.get(event["type"], {})
                    or any(name[:40] == e.field for name in event),
                    (event, e.code, e.field),
                )
                return
            self.assertEqual(clean["type"], event["type"])
            self.assertLessEqual(set(clean), set(event))

        check(prop, fuzzing.any_events, scale=1.5, name="validation: any event")

    def test_strings_that_are_not_unicode_are_refused(self) -> None:
        """A lone surrogate (which a DATA record cannot carry, but a caller
        might) in any string member is a ``bad_field``, never a crash."""

        @st.composite
        def events(draw: Any) -> tuple[dict[str, Any], str]:
            request, _ = draw(fuzzing.valid_requests())
            members = [m for m, v in request.items() if isinstance(v, str) and m != "type"]
            if not members:
                return {"type": "ping", "ref": draw(fuzzing.surrogates)}, "ref"
            member = draw(st.sampled_from(members))
            request[member] = request[member] + draw(fuzzing.surrogates)
            return request, member

        def prop(case: tuple[dict[str, Any], str]) -> None:
            event, member = case
            try:
                validate(event, LIMITS)
            except RequestError as e:
                self.assertIn(e.code, VALIDATION_CODES)
                return
            # Accepted: then it must not be a string that goes on the wire.
            self.assertRaises(ValueError, channel.encode_event, event)

        check(prop, events(), name="validation: lone surrogates")
