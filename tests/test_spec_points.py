"""Points the spec once left open or got wrong, each settled in
docs/protocol.rst and checked here against the real server (the hardening
issue's points 9 to 12).

Each test names the rule it checks; ``SpecTextTests`` checks that the
spec itself states the rule, so the document and the server cannot drift
apart unnoticed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from twisted.trial import unittest

from chatserver.wire import channel
from tests.fuzzing import _section
from tests.support import PASSWORD, ROOT, assert_spec_says
from tests.test_protocol import ChannelTestCase, RawClient, record_of

SPEC = (ROOT / "docs" / "protocol.rst").read_text(encoding="utf-8")


async def logged_in_raw(testcase: ChannelTestCase, port: int, user: str = "alice") -> RawClient:
    raw = await testcase.raw(port)
    await raw.do_handshake()
    raw.send_sealed(
        channel.DATA, channel.encode_events([{"type": "register", "user": user, "password": PASSWORD}])
    )
    welcomed = False
    for _ in range(20):  # bounded: the welcome and the first notifications
        events = await raw.next_events() or []
        welcomed = welcomed or any(e.get("type") == "welcome" for e in events)
        # The resumption ticket follows the welcome (and what it held
        # back): after it the connection is quiet.
        if welcomed and any(e.get("type") == "ticket" for e in events):
            return raw
    raise AssertionError("no welcome and ticket")


async def answers(raw: RawClient, count: int) -> list[dict[str, Any]]:
    """The next ``count`` answers (events with a ``ref`` or errors), in
    order, skipping notifications."""
    got: list[dict[str, Any]] = []
    for _ in range(count * 4 + 20):  # bounded
        if len(got) >= count:
            break
        for event in await raw.next_events() or []:
            if "ref" in event or event.get("type") == "error":
                got.append(event)
    return got


class RequestCheckOrderTests(ChannelTestCase):
    async def test_ref_is_checked_before_the_type(self) -> None:
        """Point 10: ``{"type": "frobnicate", "ref": true}`` is a bad
        ``ref``, not an unknown type; a good ``ref`` on an unknown type
        comes back in the ``unknown_type`` error."""
        server = await self.start()
        raw = await logged_in_raw(self, server.port)
        raw.send_sealed(channel.DATA, b'[{"type":"frobnicate","ref":true},{"type":"frobnicate","ref":7}]')
        first, second = await answers(raw, 2)
        self.assertEqual((first["code"], first.get("field")), ("bad_field", "ref"))
        self.assertNotIn("ref", first)
        self.assertEqual((second["code"], second.get("field"), second["ref"]), ("unknown_type", "type", 7))

    async def test_refs_with_a_fraction_or_exponent_are_not_integers(self) -> None:
        """Point 12: ``1.0`` and ``1e2`` are not integers, so not refs."""
        server = await self.start()
        raw = await logged_in_raw(self, server.port)
        raw.send_sealed(
            channel.DATA, b'[{"type":"ping","ref":1.0},{"type":"ping","ref":1e2},{"type":"ping","ref":3}]'
        )
        got = await answers(raw, 3)
        self.assertEqual([(a.get("code"), a.get("field")) for a in got[:2]], [("bad_field", "ref")] * 2)
        self.assertEqual(got[2], {"type": "pong", "ref": 3})

    async def test_a_record_may_carry_more_than_32_requests(self) -> None:
        """Point 12: all are handled, in order; past 32 unanswered the
        server only waits."""
        server = await self.start()
        raw = await logged_in_raw(self, server.port)
        raw.send_sealed(channel.DATA, channel.encode_events([{"type": "ping", "ref": n} for n in range(100)]))
        got = await answers(raw, 100)
        self.assertEqual(got, [{"type": "pong", "ref": n} for n in range(100)])

    async def test_only_rate_limited_refusals_are_strikes(self) -> None:
        """Point 12: other errors, however many, never end the connection."""
        server = await self.start(abuse_strikes=3)
        raw = await logged_in_raw(self, server.port)
        requests = [{"type": "say", "room": "nowhere", "body": "x", "ref": n} for n in range(20)]
        raw.send_sealed(channel.DATA, channel.encode_events(requests))
        got = await answers(raw, 20)
        self.assertEqual({a["code"] for a in got}, {"no_such_room"})
        await raw.ping(ref=99)


class HandshakeOrderTests(ChannelTestCase):
    async def test_out_of_order_handshake_record_gets_decode_error(self) -> None:
        """Point 12: a handshake record other than the next one expected."""
        server = await self.start()
        raw = await self.raw(server.port)
        hs = channel.ClientHandshake()
        hello = hs.hello()
        raw.send_record(bytes((channel.FINISHED,)) + hello[1:])
        await self.assert_alerted(raw, channel.ALERT_DECODE_ERROR, lambda r: "unexpected record type" in r)


class CloseTests(ChannelTestCase):
    async def test_the_receiver_of_a_close_sends_nothing_more(self) -> None:
        """Point 12: requests before the CLOSE are carried out, their
        answers are not sent, and nothing else is."""
        server = await self.start()
        watcher = await logged_in_raw(self, server.port, "bob")
        raw = await logged_in_raw(self, server.port)
        seen = len(raw.lines)
        say = raw.sealed_line(
            channel.DATA, channel.encode_events([{"type": "say", "room": "lobby", "body": "last"}])
        )
        close = raw.sealed_line(channel.CLOSE, b'{"code":"bye","message":"goodbye"}')
        raw.transport.write(say + b"\n" + close + b"\n")
        await raw.when_lost()
        self.assertEqual(raw.lines[seen:], [])
        # Carried out: the message is stored and was delivered to others.
        for _ in range(20):
            events = await watcher.next_events() or []
            if any(e.get("type") == "msg" and e.get("body") == "last" for e in events):
                break
        else:
            raise AssertionError("the message before the CLOSE was not carried out")

    async def test_no_close_after_a_protocol_error_after_the_handshake(self) -> None:
        """Point 12: after the handshake, an error ends the connection at
        once, with no ALERT and no CLOSE."""
        server = await self.start()
        raw = await logged_in_raw(self, server.port)
        seen = len(raw.lines)
        line = raw.sealed_line(channel.DATA, b'[{"type":"ping"}]')
        raw.send_line(line[:-4] + (b"AAAA" if line[-4:] != b"AAAA" else b"BBBB"))
        await raw.when_lost()
        self.assertEqual([record_of(x)[0] for x in raw.lines[seen:]], [])


class SpecTextTests(unittest.TestCase):
    """The rules above are written in docs/protocol.rst."""

    def says(self, *fragments: str) -> None:
        assert_spec_says(self, *fragments)

    def test_alert_text_limit_is_in_bytes_and_receivers_cap_it(self) -> None:
        self.says("at most 200 bytes", "A receiver reads at most the first 200 bytes of the text")

    def test_check_order_places_ref_then_type(self) -> None:
        self.says("its ``ref``; its ``type`` (``unknown_type``, field ``type``")

    def test_default_room_has_no_member_cap_in_both_sections(self) -> None:
        """Issue 13 item 6: a wave of registrations must not lock newcomers
        out of the default room, so it has no member cap; "Sessions" and
        "Rooms and roles" both say so, and neither keeps the old rule."""
        sessions = re.sub(r"\s+", " ", _section(SPEC, "Sessions", "-"))
        rooms = re.sub(r"\s+", " ", _section(SPEC, "Rooms and roles", "-"))
        for old in ("needs space in the room", "and the room has space", "into a full default room"):
            self.assertNotIn(old, sessions + rooms, "the spec still states the old rule")
        self.assertIn("The default room has no member cap", sessions)
        self.assertIn("except the default room, which has no member cap", rooms)
        self.assertIn("nor a ``join`` of the default room is ever refused for its number of members", rooms)

    def test_open_points_are_settled(self) -> None:
        self.says(
            "Receivers reject a non-canonical encoding",
            "at most 65536 bytes",
            "gets ALERT ``decode_error``",
            "The receiver of a CLOSE sends nothing more",
            "sends neither an ALERT nor a CLOSE",
            "Only ``rate_limited`` refusals are strikes",
            "``1.0`` and ``1e2`` are not integers",
            "A DATA record may carry any number of requests",
            "The receiver of an ALERT sends nothing in reply",
            "``who`` and ``rooms`` answers are paged",
        )


_unused = (json, Path)
