"""The Olm and Megolm test vectors of docs/protocol.rst, and cross-checks of
the reference implementation ``tests/spec_e2e.py`` against vodozemac.

* :class:`E2EVectorTests` reads the ``.. olm-vector`` and ``.. megolm-vector``
  blocks of the specification (or of the file named by the environment
  variable ``E2E_VECTOR_SPEC``) and recomputes every value from the block's
  own inputs with ``spec_e2e`` alone; it does not use vodozemac.
* :class:`OlmReferenceTests` and :class:`MegolmReferenceTests` check the
  reference implementation against itself (round trips, rejections).
* :class:`VodozemacOlmTests` and :class:`VodozemacMegolmTests` check it
  against vodozemac, which cannot be given fixed private keys: messages go
  both ways between a fresh vodozemac object and the reference with the
  vector's fixed keys.
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial import unittest

from tests import spec_e2e as e2e
from tests.test_vector import parse_vector_block

try:
    import vodozemac
except ImportError:  # pragma: no cover - vodozemac is in the dev environment
    vodozemac = None  # type: ignore[assignment]

SPEC = Path(__file__).parent.parent / "docs" / "protocol.rst"
OLM_MARKER = ".. olm-vector"
MEGOLM_MARKER = ".. megolm-vector"
MEGOLM_INPUT_NAMES = ("ratchet", "message_index", "ed25519_seed")


def _spec_path() -> Path:
    override = os.environ.get("E2E_VECTOR_SPEC")
    return Path(override) if override else SPEC


def _h(vector: dict[str, str], name: str) -> bytes:
    return bytes.fromhex(vector[name])


def _export_at(inbound: vodozemac.InboundGroupSession, index: int) -> str:
    """vodozemac's exported session key at ``index``, in base64."""
    exported = inbound.export_at(index)
    assert exported is not None, index
    return exported.to_base64()


def _fixed(name: str) -> bytes:
    return bytes.fromhex(e2e.OLM_INPUTS[name])


class E2EVectorTests(unittest.TestCase):
    """The documented vectors, recomputed from their inputs (no vodozemac)."""

    def setUp(self) -> None:
        path = _spec_path()
        self.lines = path.read_text(encoding="utf-8").splitlines()
        self.source = str(path)

    def _block(self, marker: str) -> dict[str, str]:
        if marker not in self.lines:
            self.fail(f"{self.source} has no {marker!r} line")
        return parse_vector_block(self.lines, marker)

    def _compare(self, documented: dict[str, str], computed: dict[str, str]) -> None:
        # first the values, in document order, so that the first mistake shows
        for name, value in documented.items():
            if name in computed:
                self.assertEqual(value, computed[name], f"{name} in {self.source}")
        self.assertEqual(list(documented), list(computed), "names (and their order) of the block")

    def test_olm_vector(self) -> None:
        documented = self._block(OLM_MARKER)
        inputs = {name: documented[name] for name in e2e.OLM_INPUT_NAMES}
        self._compare(documented, e2e.make_olm_vector(inputs))

    def test_olm_vector_decrypts(self) -> None:
        """Bob, from his two private keys, opens the base64 that travels."""
        v = self._block(OLM_MARKER)
        wire = e2e.b64decode(v["prekey_message_base64"])
        self.assertEqual(wire, _h(v, "prekey_message"))
        out = e2e.olm_decrypt_prekey(_h(v, "bob_identity_private"), _h(v, "bob_one_time_private"), wire)
        self.assertEqual(out["plaintext"], _h(v, "plaintext"))
        for name in ("shared_secret", "root_key", "chain_key", "message_key", "aes_key", "hmac_key", "iv"):
            self.assertEqual(out[name], _h(v, name), name)
        self.assertEqual(out["session_id"], v["session_id"])

    def test_megolm_vector(self) -> None:
        documented = self._block(MEGOLM_MARKER)
        inputs = {name: documented[name] for name in MEGOLM_INPUT_NAMES}
        self._compare(documented, e2e.make_megolm_vector(inputs))

    def test_megolm_vector_decrypts(self) -> None:
        """A receiver, from the session key that travels, opens the message."""
        v = self._block(MEGOLM_MARKER)
        key = e2e.parse_megolm_session_key(e2e.b64decode(v["session_key_base64"]))
        exported = e2e.parse_megolm_exported_key(e2e.b64decode(v["exported_session_key_base64"]))
        for parsed in (key, exported):
            self.assertEqual(parsed["ratchet"], _h(v, "ratchet"))
            self.assertEqual(parsed["message_index"], int(v["message_index"]))
            self.assertEqual(e2e.b64encode(parsed["signing_public"]), v["session_id"])
        out = e2e.megolm_decrypt(
            key["ratchet"], key["message_index"], key["signing_public"], e2e.b64decode(v["message_base64"])
        )
        self.assertEqual(out["plaintext"], _h(v, "plaintext"))
        self.assertEqual(out["message_index"], int(v["message_index"]))


class OlmReferenceTests(unittest.TestCase):
    """The reference Olm code against itself."""

    def _encrypt(self, plaintext: bytes, chain_index: int = 0) -> dict:
        bob_identity = e2e.x25519_public(_fixed("bob_identity_private"))
        bob_one_time = e2e.x25519_public(_fixed("bob_one_time_private"))
        return e2e.olm_encrypt_prekey(
            _fixed("alice_identity_private"),
            _fixed("alice_base_private"),
            _fixed("alice_ratchet_private"),
            bob_identity,
            bob_one_time,
            plaintext,
            chain_index,
        )

    def _decrypt(self, prekey: bytes) -> dict:
        return e2e.olm_decrypt_prekey(_fixed("bob_identity_private"), _fixed("bob_one_time_private"), prekey)

    def test_round_trip_chain_indexes(self) -> None:
        for chain_index in (0, 1, 5, 200):
            sent = self._encrypt(b"x" * chain_index, chain_index)
            got = self._decrypt(sent["prekey_message"])
            self.assertEqual(got["plaintext"], b"x" * chain_index)
            self.assertEqual(got["chain_index"], chain_index)
            self.assertEqual(got["message_key"], sent["message_key"])

    def test_chain_index_zero_uses_c00(self) -> None:
        sent = self._encrypt(b"hi")
        self.assertEqual(sent["message_key"], e2e.olm_message_key(sent["chain_key"]))
        later = self._encrypt(b"hi", 1)
        self.assertEqual(later["message_key"], e2e.olm_message_key(sent["next_chain_key"]))

    def test_tampering_is_refused(self) -> None:
        prekey = self._encrypt(b"secret")["prekey_message"]
        for pos in (len(prekey) - 1, len(prekey) - 12, len(prekey) - 40):
            bad = bytearray(prekey)
            bad[pos] ^= 1
            self.assertRaises(e2e.SpecError, self._decrypt, bytes(bad))
        self.assertRaises(e2e.SpecError, self._decrypt, b"\x04" + prekey[1:])
        self.assertRaises(e2e.SpecError, self._decrypt, prekey[:-1])

    def test_wrong_one_time_key_is_refused(self) -> None:
        prekey = self._encrypt(b"secret")["prekey_message"]
        self.assertRaises(
            e2e.SpecError,
            e2e.olm_decrypt_prekey,
            _fixed("bob_identity_private"),
            _fixed("alice_base_private"),
            prekey,
        )

    def test_varints(self) -> None:
        for n, encoded in (
            (0, b"\x00"),
            (1, b"\x01"),
            (127, b"\x7f"),
            (128, b"\x80\x01"),
            (300, b"\xac\x02"),
        ):
            self.assertEqual(e2e.encode_varint(n), encoded)
            self.assertEqual(e2e.decode_varint(encoded, 0), (n, len(encoded)))
        self.assertRaises(e2e.SpecError, e2e.decode_varint, b"\x80", 0)

    def test_base64_is_unpadded_and_strict(self) -> None:
        self.assertEqual(e2e.b64encode(b"\xff"), "/w")
        self.assertEqual(e2e.b64decode("/w"), b"\xff")
        for bad in ("/w==", "/x", "a", "a b", "-_"):
            self.assertRaises(e2e.SpecError, e2e.b64decode, bad)


class MegolmReferenceTests(unittest.TestCase):
    """The reference Megolm code against itself."""

    ratchet = bytes.fromhex(e2e.MEGOLM_INPUTS["ratchet"])
    seed = bytes.fromhex(e2e.MEGOLM_INPUTS["ed25519_seed"])

    def test_advance_to_matches_single_steps(self) -> None:
        ratchet, index = self.ratchet, 0
        for _ in range(600):  # crosses the 2^8 boundaries at 256 and 512
            ratchet, index = e2e.megolm_advance(ratchet, index)
            if index in (1, 2, 255, 256, 257, 511, 512, 513, 600):
                self.assertEqual(e2e.megolm_advance_to(self.ratchet, 0, index), ratchet, index)

    def test_advance_to_composes(self) -> None:
        for start, middle, end in (
            (0, 65530, 65541),
            (0, 2**24 - 3, 2**24 + 258),
            (100, 2**25 - 2, 2**25 + 3),
        ):
            direct = e2e.megolm_advance_to(self.ratchet, start, end)
            ratchet = e2e.megolm_advance_to(self.ratchet, start, middle)
            for index in range(middle, end):
                ratchet, _ = e2e.megolm_advance(ratchet, index)
            self.assertEqual(ratchet, direct, (start, middle, end))

    def test_round_trip_later_index(self) -> None:
        r300 = e2e.megolm_advance_to(self.ratchet, 0, 300)
        message = e2e.megolm_encrypt(r300, 300, self.seed, b"later")["message"]
        public = e2e.ed25519_public(self.seed)
        out = e2e.megolm_decrypt(self.ratchet, 0, public, message)
        self.assertEqual((out["plaintext"], out["message_index"]), (b"later", 300))
        self.assertRaises(
            e2e.SpecError,
            e2e.megolm_decrypt,
            e2e.megolm_advance_to(self.ratchet, 0, 301),
            301,
            public,
            message,
        )

    def test_tampering_is_refused(self) -> None:
        message = e2e.megolm_encrypt(self.ratchet, 0, self.seed, b"room")["message"]
        public = e2e.ed25519_public(self.seed)
        for pos in (len(message) - 1, len(message) - 70, len(message) - 80):
            bad = bytearray(message)
            bad[pos] ^= 1
            self.assertRaises(e2e.SpecError, e2e.megolm_decrypt, self.ratchet, 0, public, bytes(bad))
        other = e2e.ed25519_public(bytes(32))
        self.assertRaises(e2e.SpecError, e2e.megolm_decrypt, self.ratchet, 0, other, message)

    def test_session_key_signature(self) -> None:
        key = e2e.megolm_session_key(self.ratchet, 7, self.seed)
        self.assertEqual(len(key), 229)
        self.assertEqual(e2e.parse_megolm_session_key(key)["message_index"], 7)
        bad = bytearray(key)
        bad[3] ^= 1
        self.assertRaises(e2e.SpecError, e2e.parse_megolm_session_key, bytes(bad))
        exported = e2e.megolm_exported_key(self.ratchet, 7, e2e.ed25519_public(self.seed))
        self.assertEqual(len(exported), 165)
        self.assertRaises(e2e.SpecError, e2e.parse_megolm_session_key, exported)
        self.assertRaises(e2e.SpecError, e2e.parse_megolm_exported_key, key[:165])


class VodozemacOlmTests(unittest.TestCase):
    """Olm pre-key messages between vodozemac and the reference."""

    if vodozemac is None:
        skip = "vodozemac is not installed"

    def test_vodozemac_alice_to_reference_bob(self) -> None:
        """(a) A vodozemac Account encrypts to the vector's fixed Bob."""
        bob_identity = e2e.x25519_public(_fixed("bob_identity_private"))
        bob_one_time = e2e.x25519_public(_fixed("bob_one_time_private"))
        alice = vodozemac.Account()
        session = alice.create_outbound_session(
            vodozemac.Curve25519PublicKey.from_base64(e2e.b64encode(bob_identity)),
            vodozemac.Curve25519PublicKey.from_base64(e2e.b64encode(bob_one_time)),
        )
        plaintext = e2e.make_olm_vector()["plaintext"]
        ratchet_keys = set()
        # Until Bob answers, every message is a pre-key message; the chain
        # index counts up (a long one exercises two-byte varints).
        for chain_index, body in enumerate((bytes.fromhex(plaintext), b"second", b"z" * 1000)):
            message_type, data = session.encrypt(body).to_parts()
            self.assertEqual(message_type, 0)
            got = e2e.olm_decrypt_prekey(_fixed("bob_identity_private"), _fixed("bob_one_time_private"), data)
            self.assertEqual(got["plaintext"], body)
            self.assertEqual(got["chain_index"], chain_index)
            self.assertEqual(e2e.b64encode(got["alice_identity_public"]), alice.curve25519_key.to_base64())
            pre = e2e.parse_olm_prekey_message(data)
            self.assertEqual(pre["one_time_key"], bob_one_time)
            self.assertEqual(got["session_id"], session.session_id)
            self.assertEqual(
                got["session_id"], vodozemac.PreKeyMessage.from_base64(e2e.b64encode(data)).session_id()
            )
            # the reference re-encodes the same bytes from the parts
            inner = e2e.parse_olm_normal_message(pre["message"])
            rebuilt = e2e.olm_normal_message(
                got["hmac_key"], inner["ratchet_key"], chain_index, inner["ciphertext"]
            )
            self.assertEqual(
                e2e.olm_prekey_message(pre["one_time_key"], pre["base_key"], pre["identity_key"], rebuilt),
                data,
            )
            ratchet_keys.add(got["alice_ratchet_public"])
        self.assertEqual(len(ratchet_keys), 1)

    def test_reference_alice_to_vodozemac_bob(self) -> None:
        """The other direction: the reference, with the vector's fixed Alice
        keys, encrypts to a fresh vodozemac Account, which opens it."""
        alice_identity = e2e.x25519_public(_fixed("alice_identity_private"))
        for chain_index in (0, 3):
            # a fresh Bob each time: opening the message uses up his one-time key
            bob = vodozemac.Account()
            bob.generate_one_time_keys(1)
            ((_, one_time),) = bob.one_time_keys.items()
            plaintext = b"from the reference, index %d" % chain_index
            sent = e2e.olm_encrypt_prekey(
                _fixed("alice_identity_private"),
                _fixed("alice_base_private"),
                _fixed("alice_ratchet_private"),
                e2e.b64decode(bob.curve25519_key.to_base64()),
                e2e.b64decode(one_time.to_base64()),
                plaintext,
                chain_index,
            )
            message = vodozemac.PreKeyMessage.from_base64(sent["prekey_message_base64"])
            self.assertEqual(message.session_id(), sent["session_id"])
            session, got = bob.create_inbound_session(
                vodozemac.Curve25519PublicKey.from_base64(e2e.b64encode(alice_identity)), message
            )
            self.assertEqual(got, plaintext)
            self.assertEqual(session.session_id, sent["session_id"])
            self.assertEqual(bob.one_time_keys, {})


class VodozemacMegolmTests(unittest.TestCase):
    """Megolm messages and session keys between vodozemac and the reference."""

    if vodozemac is None:
        skip = "vodozemac is not installed"

    def test_reference_message_decrypts_with_vodozemac(self) -> None:
        """(b) The vector's message, with the reference-built exported key
        (and with the signed session key)."""
        v = e2e.make_megolm_vector()
        message = vodozemac.MegolmMessage.from_base64(v["message_base64"])
        self.assertEqual(message.to_bytes(), bytes.fromhex(v["message"]))
        self.assertEqual(message.message_index(), 0)
        imported = vodozemac.InboundGroupSession.import_session(
            vodozemac.ExportedSessionKey(v["exported_session_key_base64"])
        )
        shared = vodozemac.InboundGroupSession(vodozemac.SessionKey(v["session_key_base64"]))
        for inbound in (imported, shared):
            self.assertEqual(inbound.session_id, v["session_id"])
            self.assertEqual(inbound.first_known_index, 0)
            out = inbound.decrypt(message)
            self.assertEqual(out.plaintext, bytes.fromhex(v["plaintext"]))
            self.assertEqual(out.message_index, 0)
            self.assertEqual(_export_at(inbound, 0), v["exported_session_key_base64"])
        # a later message of the same session, which vodozemac must ratchet to
        ratchet = bytes.fromhex(v["ratchet"])
        seed = bytes.fromhex(v["ed25519_seed"])
        for index in (1, 256, 70000):
            later = e2e.megolm_encrypt(
                e2e.megolm_advance_to(ratchet, 0, index), index, seed, b"later %d" % index
            )
            out = imported.decrypt(vodozemac.MegolmMessage.from_base64(later["message_base64"]))
            self.assertEqual((out.plaintext, out.message_index), (b"later %d" % index, index))

    def test_vodozemac_message_decrypts_with_reference(self) -> None:
        """(c) A vodozemac GroupSession's session key and messages."""
        group = vodozemac.GroupSession()
        key = e2e.parse_megolm_session_key(e2e.b64decode(group.session_key.to_base64()))
        self.assertEqual(key["message_index"], 0)
        self.assertEqual(e2e.b64encode(key["signing_public"]), group.session_id)
        messages = {}
        for index in range(300):
            message = group.encrypt(b'{"body":"msg %d"}' % index)
            self.assertEqual(message.message_index(), index)
            messages[index] = message
        for index in (0, 1, 2, 255, 256, 257, 299):
            out = e2e.megolm_decrypt(key["ratchet"], 0, key["signing_public"], messages[index].to_bytes())
            self.assertEqual((out["plaintext"], out["message_index"]), (b'{"body":"msg %d"}' % index, index))
        # the session key at the current index carries the advanced ratchet
        now = e2e.parse_megolm_session_key(e2e.b64decode(group.session_key.to_base64()))
        self.assertEqual(now["message_index"], 300)
        self.assertEqual(now["ratchet"], e2e.megolm_advance_to(key["ratchet"], 0, 300))

    def test_ratchet_matches_vodozemac_export_at(self) -> None:
        """The ratchet advance rules, at the boundaries of every part."""
        group = vodozemac.GroupSession()
        inbound = vodozemac.InboundGroupSession(group.session_key)
        key = e2e.parse_megolm_session_key(e2e.b64decode(group.session_key.to_base64()))
        indexes = (0, 1, 255, 256, 257, 511, 65535, 65536, 65537, 2**24 - 1, 2**24, 2**24 + 65793, 2**31 + 5)
        for index in indexes:
            exported = _export_at(inbound, index)
            ratchet = e2e.megolm_advance_to(key["ratchet"], 0, index)
            self.assertEqual(
                exported, e2e.b64encode(e2e.megolm_exported_key(ratchet, index, key["signing_public"]))
            )
            parsed = e2e.parse_megolm_exported_key(e2e.b64decode(exported))
            self.assertEqual(parsed["message_index"], index)
