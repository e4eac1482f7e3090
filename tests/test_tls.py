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

from chatclient.endpoints import BadCA, endpoint_description, tls_endpoint
from chatclient.reconnect import ReconnectingClient
from chatclient.session import TLS_CERTIFICATE, ConnectionClosed, connect, connect_endpoint
from tests.processes import cli
from tests.support import PASSWORD, RunningServer, start_server


def self_signed(directory: Path, subject: str = "localhost") -> tuple[Path, Path]:
    """A throwaway certificate for "localhost" (test material only), its
    own issuer, named ``subject``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
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


async def tls_server(testcase: unittest.TestCase) -> tuple[RunningServer, Path, Path]:
    """A server on TLS with a fresh certificate for "localhost": the
    server, the directory with its certificate, and the certificate."""
    tls_dir = Path(testcase.mktemp()).resolve()
    key_path, cert_path = self_signed(tls_dir)
    server = await start_server(
        testcase, endpoint=f"ssl:0:interface=127.0.0.1:privateKey={key_path}:certKey={cert_path}"
    )
    return server, tls_dir, cert_path


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


class TLSEndpointTests(unittest.TestCase):
    """``tls_endpoint``, which both clients connect with: a CA directory
    or a CA file."""

    async def test_a_ca_file_of_several_certificates_is_trusted(self) -> None:
        server, _, cert_path = await tls_server(self)
        other = Path(self.mktemp()).resolve()
        _, other_cert = self_signed(other, "Another CA")  # (OpenSSL looks an issuer up by its name)
        bundle = Path(self.mktemp()).resolve().with_suffix(".crt")  # any name will do for a file
        bundle.write_bytes(b"a comment before\n" + other_cert.read_bytes() + cert_path.read_bytes())
        endpoint = tls_endpoint(reactor, "localhost", server.port, str(bundle))
        session = await connect_endpoint(endpoint, lambda fingerprint: True, clock=reactor)
        self.addCleanup(session.close)
        self.assertEqual((await session.register("alice", PASSWORD))["user"], "alice")

    async def test_a_ca_file_without_the_servers_issuer_is_refused(self) -> None:
        server, _, _ = await tls_server(self)
        other = Path(self.mktemp()).resolve()
        _, other_cert = self_signed(other)
        endpoint = tls_endpoint(reactor, "localhost", server.port, str(other_cert))
        refused = await self.assertFailure(
            connect_endpoint(endpoint, lambda fingerprint: True, clock=reactor), ConnectionClosed
        )
        self.assertEqual(refused.code, TLS_CERTIFICATE)

    def test_a_ca_that_cannot_be_read_is_named(self) -> None:
        missing = str(Path(self.mktemp()).resolve())
        with self.assertRaises(BadCA) as raised:
            tls_endpoint(reactor, "localhost", 7070, missing)
        self.assertEqual(str(raised.exception), f"{missing}: no such file or directory")
        not_pem = Path(self.mktemp()).resolve()
        not_pem.write_text("not a certificate\n")
        with self.assertRaises(BadCA) as raised:
            tls_endpoint(reactor, "localhost", 7070, str(not_pem))
        self.assertEqual(str(raised.exception), f"{not_pem}: no PEM certificate in it")
        damaged = Path(self.mktemp()).resolve()
        damaged.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        with self.assertRaises(BadCA) as raised:
            tls_endpoint(reactor, "localhost", 7070, str(damaged))
        self.assertIn("cannot be read", str(raised.exception))


class CliTLSTests(unittest.TestCase):
    def setUp(self) -> None:
        self.base = Path(self.mktemp()).resolve()
        self.base.mkdir()
        (self.base / "password").write_text(PASSWORD + "\n")

    def args(self, ca: Path) -> list[str]:
        return [
            "--host", "localhost", "--tls", "--tls-ca", str(ca), "--register",
            "--password-file", str(self.base / "password"), "--known-hosts", str(self.base / "known_hosts"),
        ]  # fmt: skip

    async def test_the_terminal_client_trusts_a_ca_file(self) -> None:
        server, _, cert_path = await tls_server(self)
        alice = cli(self, "alice", server.port, "alice", *self.args(cert_path))
        await alice.wait_for(r"logged in as alice")
        alice.close_stdin()
        self.assertEqual(await alice.ended, 0, alice.errors())

    async def test_the_terminal_client_names_a_refused_certificate(self) -> None:
        server, _, _ = await tls_server(self)
        other = Path(self.mktemp()).resolve()
        self_signed(other)
        alice = cli(self, "alice", server.port, "alice", *self.args(other))
        self.assertEqual(await alice.ended, 1)
        self.assertIn(
            f"error: cannot connect to localhost:{server.port}: TLS: the server's certificate is not signed",
            alice.errors(),
        )
        self.assertNotIn("Traceback", alice.errors())
