"""TLS under the channel: ``ssl:`` on the server, ``--tls`` on the client."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import endpoints, reactor
from twisted.trial import unittest

from chatclient.endpoints import endpoint_description
from chatclient.reconnect import ReconnectingClient
from chatclient.session import TLS_CERTIFICATE, ConnectionClosed, connect
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
        refused = await self.assertFailure(
            connect(reactor, description, lambda fingerprint: True), ConnectionClosed
        )
        # Said in words, not as a bare "connection lost".
        self.assertEqual(refused.code, TLS_CERTIFICATE)
        self.assertIn("not signed by a certificate authority this client trusts", refused.message)

    async def test_a_certificate_for_another_name_is_refused_with_the_name(self) -> None:
        tls_dir = Path(self.mktemp()).resolve()
        key_path, cert_path = self_signed(tls_dir)  # for "localhost" only
        server = await start_server(
            self, endpoint=f"ssl:0:interface=127.0.0.1:privateKey={key_path}:certKey={cert_path}"
        )
        description = endpoint_description("127.0.0.1", server.port, tls=True, ca_dir=str(tls_dir))
        refused = await self.assertFailure(
            connect(reactor, description, lambda fingerprint: True), ConnectionClosed
        )
        self.assertEqual(refused.code, TLS_CERTIFICATE)
        self.assertEqual(refused.message, "TLS: the server's certificate is not valid for 127.0.0.1")

    async def test_tls_to_a_plain_server_says_so(self) -> None:
        server = await start_server(self)
        description = endpoint_description("localhost", server.port, tls=True)
        failed = await self.assertFailure(
            connect(reactor, description, lambda fingerprint: True), ConnectionClosed
        )
        self.assertEqual(failed.code, "tls")
        self.assertIn(
            "TLS error: wrong version number (is the server on this port using TLS?)", failed.message
        )

    async def test_a_refused_certificate_ends_a_client_that_would_retry_forever(self) -> None:
        """Retrying cannot change the certificate: the reconnecting client
        fails at once with the reason, even with no limit on attempts."""
        tls_dir = Path(self.mktemp()).resolve()
        key_path, cert_path = self_signed(tls_dir)
        server = await start_server(
            self, endpoint=f"ssl:0:interface=127.0.0.1:privateKey={key_path}:certKey={cert_path}"
        )
        other = Path(self.mktemp()).resolve()
        self_signed(other)
        endpoint = endpoints.clientFromString(
            reactor, endpoint_description("localhost", server.port, tls=True, ca_dir=str(other))
        )
        client = ReconnectingClient(
            reactor,
            endpoint,
            lambda fingerprint: True,
            "alice",
            PASSWORD,
            register=True,
            connect_attempts=None,
        )
        states: list[tuple[str, object]] = []
        client.add_state_listener(lambda state, detail: states.append((state, detail)))
        client.start()
        self.addCleanup(client.stop)
        failure = await self.assertFailure(client.when_online(), ConnectionClosed)
        self.assertEqual(failure.code, TLS_CERTIFICATE)
        self.assertEqual(client.state, "failed")
        self.assertEqual([state for state, _ in states], ["connecting", "failed"])
