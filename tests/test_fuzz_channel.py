"""Properties of the channel (``chatserver.wire.channel``): the line decoder,
the handshake records, the handshake state machines and the record layer,
fed arbitrary and mutated bytes.  The spec's rules for each (section
"Transport" and "Records" of ``docs/protocol.rst``) are checked against
the independent implementation in ``tests/spec_impl.py`` where it has one.
Bounded in ``make test``, long in ``make fuzz`` (see ``tests/fuzzing``).
"""

from __future__ import annotations

import base64
import copy
import os
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from twisted.trial import unittest

from chatserver.wire import channel, crypto
from chatserver.wire.channel import ChannelError, HandshakeState
from tests import fuzzing, spec_impl
from tests.fuzzing import ALERT_CODES, check

B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
KEY_PEM = (Path(__file__).parent / "vector_rsa.pem").read_bytes()
KEY = crypto.rsa_private_from_pem(KEY_PEM)
KEY_DER = crypto.rsa_public_der(KEY)

#: Lines: arbitrary bytes, and strings of the base64 alphabet (with and
#: without padding, of any length), which reach the decoder's own checks.
lines = st.one_of(
    st.binary(max_size=64),
    st.text(st.sampled_from((B64 + b"=").decode()), max_size=64).map(str.encode),
    st.binary(min_size=1, max_size=48).map(base64.b64encode),
    st.tuples(st.binary(min_size=1, max_size=48), st.integers(0, 70), st.binary(max_size=2)).map(
        lambda t: (lambda line: line[: t[1]] + t[2] + line[t[1] :])(base64.b64encode(t[0]))
    ),
)


def mutations(valid: bytes) -> st.SearchStrategy[bytes]:
    """Bytes near ``valid``: truncated, extended, with a byte changed, a
    run of bytes replaced or a length byte set to something else."""
    n = len(valid)
    return st.one_of(
        st.integers(0, n - 1).map(lambda i: valid[:i]),
        st.binary(min_size=1, max_size=40).map(lambda extra: valid + extra),
        st.tuples(st.integers(0, n - 1), st.integers(1, 255)).map(
            lambda t: valid[: t[0]] + bytes((valid[t[0]] ^ t[1],)) + valid[t[0] + 1 :]
        ),
        st.tuples(st.integers(0, n - 1), st.integers(0, 8), st.binary(max_size=8)).map(
            lambda t: valid[: t[0]] + t[2] + valid[t[0] + t[1] :]
        ),
        st.just(valid),
    ).filter(bool)


def records(valid: bytes) -> st.SearchStrategy[bytes]:
    """Anything a peer could put in a handshake record, near ``valid`` or not."""
    return st.one_of(
        mutations(valid),
        st.binary(min_size=1, max_size=300),
        st.tuples(st.integers(0, 255), st.binary(max_size=300)).map(lambda t: bytes((t[0],)) + t[1]),
        st.tuples(st.integers(0, 255), st.text(fuzzing.chars, max_size=40)).map(
            lambda t: spec_impl.build_alert(t[0], t[1])
        ),
    )


def _fails_cleanly(testcase: unittest.TestCase, error: ChannelError) -> None:
    if isinstance(error, channel.AlertReceived):
        return  # the peer's own code, whatever it is
    testcase.assertIn(error.alert, ALERT_CODES, error.reason)
    testcase.assertIsInstance(error.reason, str)


class LineDecoderProperties(unittest.TestCase):
    timeout = fuzzing.TEST_TIMEOUT

    def test_any_line_decodes_or_is_a_decode_error(self) -> None:
        """Every backend decodes exactly the lines the spec allows (checked
        against ``spec_impl.from_line``), to the same record, and refuses
        the others with a decode_error: never another exception."""

        def prop(line: bytes) -> None:
            expected: bytes | None = None
            if b"\n" not in line:  # from_line takes the delimiter too
                try:
                    expected = spec_impl.from_line(line)
                except (spec_impl.SpecError, UnicodeError):
                    pass
            for name, (_, decode) in channel.BASE64_BACKENDS.items():
                try:
                    record = decode(line)
                except ChannelError as e:
                    self.assertEqual(e.alert, channel.ALERT_DECODE_ERROR, (name, line))
                    self.assertIsNone(expected, f"{name} refused the valid line {line!r}")
                    continue
                self.assertEqual(record, expected, (name, line))

        check(prop, lines, scale=2, name="lines: any line")

    def test_canonical_lines_round_trip(self) -> None:
        def prop(record: bytes) -> None:
            for name, (encode, decode) in channel.BASE64_BACKENDS.items():
                line = encode(record)
                self.assertTrue(line.endswith(b"\n") and line.count(b"\n") == 1, name)
                self.assertEqual(decode(line[:-1]), record, name)
                self.assertEqual(encode(decode(line[:-1])), line, name)
            self.assertEqual(channel.encode_line(record)[:-1].decode(), spec_impl.to_line(record))

        check(prop, st.binary(min_size=1, max_size=200), name="lines: round trip")

    def test_non_canonical_lines_are_refused(self) -> None:
        """The same record with nonzero unused bits before the padding."""

        def prop(case: tuple[bytes, int]) -> None:
            record, bits = case
            line = bytearray(base64.b64encode(record))
            # One "=": the last char holds 2 unused bits; two: 4.
            index = len(line) - (2 if line.endswith(b"=") and not line.endswith(b"==") else 3)
            unused = 0x03 if line.endswith(b"=") and not line.endswith(b"==") else 0x0F
            value = B64.index(line[index]) | ((bits - 1) % unused + 1)
            line[index] = B64[value]
            for name, (_, decode) in channel.BASE64_BACKENDS.items():
                with self.assertRaises(ChannelError, msg=name) as caught:
                    decode(bytes(line))
                self.assertEqual(caught.exception.alert, channel.ALERT_DECODE_ERROR)

        records = st.binary(min_size=1, max_size=60).filter(lambda r: len(r) % 3 != 0)
        check(prop, st.tuples(records, st.integers(1, 15)), name="lines: non-canonical")


class HandshakeRecordProperties(unittest.TestCase):
    timeout = fuzzing.TEST_TIMEOUT

    def _client_hello(self) -> bytes:
        return channel.ClientHandshake().hello()

    def test_client_hello_parses_or_fails_cleanly(self) -> None:
        """A server fed any CLIENT_HELLO answers a SERVER_HELLO (only for
        one the spec's parser accepts, with a version and suite in
        common) or fails with an alert of the spec's table, and is FAILED
        for good."""
        valid = self._client_hello()
        hello = st.one_of(
            records(valid),
            st.builds(
                spec_impl.build_client_hello,
                st.lists(st.integers(0, 0xFFFF) | st.just(1), min_size=1, max_size=4),
                st.lists(st.integers(0, 0xFFFF) | st.just(1), min_size=1, max_size=4),
                st.binary(min_size=32, max_size=32),
                st.binary(min_size=32, max_size=32) | st.sampled_from(list(_low_order())),
            ).flatmap(records),
        )

        def prop(record: bytes) -> None:
            server = channel.ServerHandshake(KEY, KEY_DER)
            try:
                answer = server.receive_client_hello(record)
            except ChannelError as e:
                _fails_cleanly(self, e)
                self.assertIs(server.state, HandshakeState.FAILED)
                self.assertRaises(ChannelError, server.receive_client_hello, valid)
                return
            fields = spec_impl.parse_client_hello(record)  # it was valid
            self.assertIn(channel.PROTOCOL_VERSION, fields["versions"])
            self.assertIn(channel.SUITE_X25519_RSAOAEP_SHA256_AES256GCM, fields["suites"])
            parsed = spec_impl.parse_server_hello(answer)
            self.assertEqual((parsed["version"], parsed["suite"], parsed["spki"]), (1, 1, KEY_DER))
            self.assertIs(server.state, HandshakeState.AWAIT_KEY_EXCHANGE)

        check(prop, hello, scale=2, name="records: client hello")

    def test_resume_hello_parses_or_fails_cleanly_and_binds_its_bytes(self) -> None:
        """A server fed any RESUME_HELLO reads it or fails with an alert of
        the spec's table; the binder holds for the client's own record
        only: any other bytes (a changed ticket, share, random, binder or
        length) fail it."""
        psk = b"k" * 32
        valid = channel.ClientHandshake(ticket=channel.Ticket(b"t" * 104, psk, 1e12)).hello()

        def prop(record: bytes) -> None:
            server = channel.ServerHandshake(KEY, KEY_DER)
            try:
                hello = server.read_hello(record)
            except ChannelError as e:
                _fails_cleanly(self, e)
                self.assertIs(server.state, HandshakeState.FAILED)
                return
            self.assertIs(server.state, HandshakeState.HELLO_READ)
            self.assertEqual(server.binder_valid(psk), record == valid)
            if hello.ticket is None:
                self.assertEqual(record[0], channel.CLIENT_HELLO)

        check(prop, records(valid), scale=2, name="records: resume hello")

    def test_server_resume_and_cookie_parse_or_fail_cleanly(self) -> None:
        """A client that offered a ticket, fed any answer in place of
        SERVER_RESUME or COOKIE, fails cleanly or goes on; a changed
        SERVER_RESUME never yields a channel with the server's FINISHED."""
        psk = b"k" * 32
        ticket = channel.Ticket(b"t" * 104, psk, 1e12)
        client = channel.ClientHandshake(ticket=ticket)
        server = channel.ServerHandshake(KEY, KEY_DER)
        server.read_hello(client.hello())
        resume, finished = server.resume(psk)

        def prop(record: bytes) -> None:
            fresh = channel.ClientHandshake(ticket=ticket)
            fresh.hello()
            try:
                if record[:1] == bytes((channel.COOKIE,)):
                    echo, again = fresh.receive_cookie(record)
                    self.assertEqual(echo, record)
                    return
                fresh.receive_server_resume(record)
                fresh.receive_resumed_finished(finished)
            except ChannelError as e:
                _fails_cleanly(self, e)
                self.assertIs(fresh.state, HandshakeState.FAILED)
                return
            # Another ephemeral on our side: even the genuine record gives
            # keys the server's FINISHED does not match, so nothing passes.
            self.fail(f"accepted {record!r}")

        check(
            prop,
            st.one_of(records(resume), records(channel.cookie_record(b"c" * 32))),
            name="records: resume",
        )

    def test_server_hello_parses_or_fails_cleanly(self) -> None:
        server = channel.ServerHandshake(KEY, KEY_DER)
        valid = server.receive_client_hello(self._client_hello())

        def prop(record: bytes) -> None:
            client = channel.ClientHandshake()
            client.hello()
            try:
                fingerprint = client.receive_server_hello(record)
            except ChannelError as e:
                _fails_cleanly(self, e)
                self.assertIs(client.state, HandshakeState.FAILED)
                return
            parsed = spec_impl.parse_server_hello(record)
            self.assertEqual(fingerprint, spec_impl.fingerprint(parsed["spki"]))
            self.assertIs(client.state, HandshakeState.DERIVING)

        check(prop, records(valid), name="records: server hello")

    def test_server_hello_with_an_unknown_key_algorithm(self) -> None:
        """Found by the property above: a SERVER_HELLO whose SPKI names an
        algorithm OpenSSL does not know (one bit of the rsaEncryption OID
        flipped) made ``receive_server_hello`` raise cryptography's
        ``UnsupportedAlgorithm``; it must be a ChannelError, and the
        handshake FAILED."""
        server = channel.ServerHandshake(KEY, KEY_DER)
        valid = server.receive_client_hello(self._client_hello())
        record = valid[:78] + bytes((valid[78] ^ 2,)) + valid[79:]
        client = channel.ClientHandshake()
        client.hello()
        with self.assertRaises(ChannelError):
            client.receive_server_hello(record)
        self.assertIs(client.state, HandshakeState.FAILED)

    def test_key_exchange_parses_or_fails_cleanly(self) -> None:
        client = channel.ClientHandshake()
        server = channel.ServerHandshake(KEY, KEY_DER)
        client.receive_server_hello(server.receive_client_hello(client.hello()))
        kex, _ = client.key_exchange()

        def prop(record: bytes) -> None:
            server = channel.ServerHandshake(KEY, KEY_DER)
            server.receive_client_hello(channel.ClientHandshake().hello())
            try:
                server.receive_key_exchange(record)
                server.derive()
            except ChannelError as e:
                _fails_cleanly(self, e)
                self.assertIs(server.state, HandshakeState.FAILED)
                return
            spec_impl.parse_key_exchange(record)
            self.assertIs(server.state, HandshakeState.AWAIT_FINISHED)

        check(prop, records(kex), scale=0.5, name="records: key exchange")

    def test_finished_is_refused_unless_it_is_the_right_one(self) -> None:
        """Both sides, fed any FINISHED: only the exact right record is
        accepted; anything else fails with an alert of the table."""

        template = _handshakes(2)
        finished = template[2]

        def prop(case: tuple[int, bytes]) -> None:
            _, record = case
            client, server = copy.copy(template[0]), copy.copy(template[1])
            try:
                server_finished, _ = server.receive_finished(record)
            except ChannelError as e:
                _fails_cleanly(self, e)
                self.assertIs(server.state, HandshakeState.FAILED)
                self.assertNotEqual(record, finished)
                return
            self.assertEqual(record, finished)
            client.receive_finished(server_finished)

        check(prop, st.tuples(st.just(0), records(finished)), scale=0.3, name="records: finished")

    def test_server_handshake_fed_any_record_in_any_state(self) -> None:
        """A server handshake in each state, fed any record the way the
        server's connection feeds it, fails cleanly or advances only on a
        record the spec allows there; out of order is always a failure."""

        templates = [_handshakes(state)[1] for state in range(3)]

        def prop(case: tuple[int, int, bytes]) -> None:
            state, step, record = case
            server = copy.copy(templates[state])
            feed = [server.receive_client_hello, server.receive_key_exchange, server.receive_finished][step]
            try:
                feed(record)
                if step == 1:
                    server.derive()
            except ChannelError as e:
                _fails_cleanly(self, e)
                self.assertIs(server.state, HandshakeState.FAILED)
                return
            self.assertEqual(step, state, "a step out of order was accepted")
            self.assertEqual(record[0], [channel.CLIENT_HELLO, channel.KEY_EXCHANGE, channel.FINISHED][step])

        valid = [
            self._client_hello(),
            bytes((channel.KEY_EXCHANGE, 1, 128)) + bytes(384),
            bytes((4,)) + bytes(32),
        ]
        cases = st.tuples(st.integers(0, 2), st.integers(0, 2)).flatmap(
            lambda t: st.tuples(st.just(t[0]), st.just(t[1]), records(valid[t[1]]))
        )
        check(prop, cases, scale=0.3, name="records: server states")


def _handshakes(state: int) -> tuple[channel.ClientHandshake, channel.ServerHandshake, bytes]:
    """A client and a server handshake that have reached ``state`` (0:
    nothing received; 1: the hello; 2: the key exchange, keys derived),
    and the client's next record.  ``copy.copy`` of them is a fresh pair
    in the same state (each step rebinds, never mutates, their fields),
    which spares a properties' example the RSA work of getting there."""
    client = channel.ClientHandshake()
    server = channel.ServerHandshake(KEY, KEY_DER)
    hello = client.hello()
    if state == 0:
        return client, server, hello
    client.receive_server_hello(server.receive_client_hello(hello))
    kex, finished = client.key_exchange()
    if state == 1:
        return client, server, kex
    server.receive_key_exchange(kex)
    server.derive()
    return client, server, finished


def _low_order() -> list[bytes]:
    return [
        bytes(32),
        b"\x01" + bytes(31),
        bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    ]


class RecordLayerProperties(unittest.TestCase):
    timeout = fuzzing.TEST_TIMEOUT

    def _pair(self) -> tuple[channel.SecureChannel, channel.SecureChannel]:
        """Two ends of a channel, as a handshake would leave them (the
        record layer only needs the two secrets)."""
        up, down = os.urandom(32), os.urandom(32)
        return channel.SecureChannel(up, down), channel.SecureChannel(down, up)

    def test_any_line_after_the_handshake_opens_or_fails_cleanly(self) -> None:
        """The server's channel fed a sealed record (then perhaps tampered
        with) or any line: events, a KEY_UPDATE, a CLOSE, or ChannelError,
        after which the channel refuses everything."""
        client, server = self._pair()
        sample = client.seal_events([{"type": "ping", "ref": 1}])[:-1]

        @st.composite
        def cases(draw: Any) -> tuple[str, Any]:
            kind = draw(st.sampled_from(["sealed", "tampered", "line"]))
            if kind == "line":
                return kind, draw(lines | records(sample).map(lambda r: base64.b64encode(r)))
            rtype = draw(
                st.sampled_from([channel.DATA, channel.CLOSE, channel.KEY_UPDATE, channel.FINISHED, 0])
            )
            plaintext = draw(
                st.binary(max_size=60)
                | st.lists(fuzzing.any_events, min_size=1, max_size=3).map(channel.encode_events)
                | st.just(b"")
            )
            return kind, (
                rtype,
                plaintext,
                draw(records(b"\x17" + bytes(20)) if kind == "tampered" else st.none()),
            )

        def prop(case: tuple[str, Any]) -> None:
            client, server = self._pair()
            kind, value = case
            if kind == "line":
                line = value
            else:
                rtype, plaintext, tamper = value
                line = client.seal(rtype, plaintext)[:-1] if rtype in channel.SEALED_TYPES else b""
                if not line or tamper is not None:
                    line = base64.b64encode(tamper or bytes((rtype,)) + plaintext)
            try:
                events = server.open(line)
            except channel.PeerClosed as e:
                self.assertIsInstance(e.code, str)
                self.assertIsInstance(e.message, str)
            except ChannelError as e:
                _fails_cleanly(self, e)
            else:
                if events is not None:
                    self.assertTrue(events and all(isinstance(e.get("type"), str) for e in events))
                    channel.encode_events(events)  # sendable on
                return
            self.assertRaises(ChannelError, server.open, client.seal_events([{"type": "ping"}])[:-1])

        check(prop, cases(), name="records: sealed")

    def test_any_plaintext_is_events_or_a_decode_error(self) -> None:
        """DATA plaintext: a non-empty list of objects with a string type,
        which can be encoded again (no lone surrogates, no NaN), or a
        decode_error."""
        texts = st.one_of(
            st.binary(max_size=80),
            st.lists(fuzzing.any_events, max_size=3).map(lambda e: channel.encode_events(e)),
            st.recursive(
                st.sampled_from(
                    [
                        '"\\ud800"',
                        '"\\udfff\\ud800"',
                        "NaN",
                        "-Infinity",
                        "1e400",
                        "-0",
                        "1" * 5000,
                        '{"type":"x"}',
                        "[]",
                        "{}",
                        "null",
                        '"x"',
                    ]
                ),
                lambda inner: (
                    st.lists(inner, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]")
                    | st.lists(
                        st.tuples(st.sampled_from(['"type"', '"a"', '"\\u0000"']), inner), max_size=3
                    ).map(lambda kv: "{" + ",".join(f"{k}:{v}" for k, v in kv) + "}")
                ),
                max_leaves=8,
            ).map(str.encode),
            st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
        )

        def prop(plaintext: bytes) -> None:
            try:
                events = channel.decode_events(plaintext)
            except ChannelError as e:
                self.assertEqual(e.alert, channel.ALERT_DECODE_ERROR)
                return
            self.assertIsInstance(events, list)
            self.assertTrue(events)
            for event in events:
                self.assertIsInstance(event, dict)
                self.assertIsInstance(event["type"], str)
            channel.encode_events(events)

        check(prop, texts, scale=2, name="records: DATA plaintext")
