"""TLS under the channel: ``ssl:`` on the server, ``--tls`` on the client."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor
from twisted.trial import unittest

from chatclient.endpoints import endpoint_description
from chatclient.session import connect
from tests.support import PASSWORD, start_server


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for "localhost" (test material only)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    # The client reads every file in its CA directory as a certificate, so
    # the private key lives beside it, not in it.
    directory.mkdir(parents=True)
    key_path, cert_path = directory.parent / (directory.name + "-key.pem"), directory / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


class TLSTests(unittest.TestCase):
    async def test_chat_over_tls(self) -> None:
        tls_dir = Path(self.mktemp()).resolve()
        key_path, cert_path = self_signed(tls_dir)
        server = await start_server(
            self, endpoint=f"ssl:0:interface=127.0.0.1:privateKey={key_path}:certKey={cert_path}"
        )
        description = endpoint_description("localhost", server.port, tls=True, ca_dir=str(tls_dir))
        self.assertTrue(description.startswith("tls:"))
        session = await connect(reactor, description, lambda fingerprint: True)
        self.addCleanup(session.close)
        self.assertEqual(session.fingerprint, server.identity.fingerprint)
        welcome = await session.register("alice", PASSWORD)
        self.assertEqual(welcome["user"], "alice")
        ack = await session.say("lobby", "over tls")
        self.assertEqual(ack["type"], "ack")
        self.assertIn("TLS", type(session.protocol.transport).__name__ + repr(session.protocol.transport))

    async def test_untrusted_certificate_is_refused(self) -> None:
        tls_dir = Path(self.mktemp()).resolve()
        key_path, cert_path = self_signed(tls_dir)
        server = await start_server(
            self, endpoint=f"ssl:0:interface=127.0.0.1:privateKey={key_path}:certKey={cert_path}"
        )
        other = Path(self.mktemp()).resolve()
        self_signed(other)  # a CA that did not sign the server's certificate
        description = endpoint_description("localhost", server.port, tls=True, ca_dir=str(other))
        await self.assertFailure(connect(reactor, description, lambda fingerprint: True), Exception)
