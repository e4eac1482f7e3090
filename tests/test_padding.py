"""Length padding (issue 13, item 7): every DATA plaintext, the server's
and the reference client's, is padded with JSON whitespace to a multiple
of the padding block, so a record's length tells only roughly how long
its content is.  Observed on the wire, through a loopback proxy."""

from __future__ import annotations

from twisted.trial import unittest

from chatserver.wire import channel
from tests.support import PASSWORD
from tests.test_protocol import ChannelTestCase
from tests.test_spec_points import logged_in_raw

SEALED_OVERHEAD = 1 + channel.TAG_SIZE  # type byte and tag


def data_plaintext_lengths(records: list[bytes]) -> list[int]:
    return [len(r) - SEALED_OVERHEAD for r in records if r[0] == channel.DATA]


class PaddingOnTheWireTests(ChannelTestCase):
    async def test_both_directions_are_padded_to_the_block(self) -> None:
        server = await self.start()
        proxy = await self.proxy(server.port)
        session = await self.client(proxy.port)
        await session.register("alice", PASSWORD)
        for body in ("a", "ab" * 7, "x" * 1000):
            await session.say("lobby", body)
        conn = proxy.connections[0]
        sent = data_plaintext_lengths(conn.records("c2s"))
        received = data_plaintext_lengths(conn.records("s2c"))
        self.assertGreaterEqual(len(sent), 4)
        self.assertGreaterEqual(len(received), 4)
        for length in sent + received:
            self.assertEqual(length % channel.PAD_BLOCK, 0, (sent, received))
        # Messages of 1 and 14 characters give records of the same size.
        self.assertEqual(sent[1], sent[2])

    async def test_no_padding_when_the_block_is_zero(self) -> None:
        server = await self.start(pad_block=0)
        raw = await logged_in_raw(self, server.port)
        seen = len(raw.lines)
        await raw.ping(ref=1)
        (line,) = raw.lines[seen:]
        answer = b'[{"type":"pong","ref":1}]'
        self.assertEqual(data_plaintext_lengths([channel.decode_line(line)]), [len(answer)])


class PadTests(unittest.TestCase):
    def test_pads_with_spaces_to_the_block(self) -> None:
        padded = channel.pad(b'[{"type":"ping"}]', 32, 1000)
        self.assertEqual(len(padded), 32)
        self.assertEqual(channel.decode_events(padded), [{"type": "ping"}])

    def test_a_multiple_of_the_block_is_left_alone(self) -> None:
        text = b"[" + b" " * 30 + b"]"
        self.assertIs(channel.pad(text, 32, 1000), text)

    def test_never_past_the_limit(self) -> None:
        text = b'["' + b"x" * 95 + b'"]'  # 99 bytes
        self.assertEqual(len(channel.pad(text, 32, 120)), 120)
        self.assertEqual(len(channel.pad(text, 32, 99)), 99)

    def test_block_zero_is_off(self) -> None:
        self.assertEqual(channel.pad(b"[1]", 0, 1000), b"[1]")
