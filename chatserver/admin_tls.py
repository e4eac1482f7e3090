"""``chatserver-admin make-cert``: a self-signed TLS certificate and its
key, for a LAN without a certificate authority.

The key is ECDSA P-256 (what browsers and OpenSSL's defaults prefer, and
small), made by ``cryptography``; the certificate is its own issuer, valid
for the names and addresses given (subjectAltName: clients check the name
they connect to against it, never the common name), for server
authentication only.  The key file is created 0600, owned by the
directory's owner when root makes it (the service user's data directory) (never readable by
anyone but the server's user, not even for a moment: the mode is given to
``open``, and an existing file is not replaced without ``--force``); the
certificate is public (0644), and is what clients are given to trust
(``chatclient-cli --tls-ca``, the GUI's "Trust certificates from").
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import socket
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: How long the certificate is valid by default: 825 days, the longest
#: that Apple's clients accept for a server certificate.
DEFAULT_DAYS = 825
KEY_NAME, CERT_NAME = "tls.key", "tls.crt"


class CertError(Exception):
    """One line for the operator; nothing was written."""


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    cert = sub.add_parser(
        "make-cert",
        parents=[parent],
        help="make a self-signed TLS certificate and key (for a LAN without a CA)",
    )
    cert.add_argument(
        "--dir", type=Path, help=f"where to write {KEY_NAME} and {CERT_NAME} (default: the data directory)"
    )
    cert.add_argument(
        "--name",
        action="append",
        default=[],
        help="a host name clients connect to (repeatable; default: this machine's names and localhost)",
    )
    cert.add_argument(
        "--ip",
        action="append",
        default=[],
        help="an IP address clients connect to (repeatable; default: 127.0.0.1 and ::1)",
    )
    cert.add_argument(
        "--days", type=int, default=DEFAULT_DAYS, help=f"how long it is valid (default {DEFAULT_DAYS})"
    )
    cert.add_argument("--force", action="store_true", help="replace an existing key and certificate")


def default_names() -> list[str]:
    names = []
    for name in (socket.getfqdn(), socket.gethostname(), "localhost"):
        if name and name not in names:
            names.append(name)
    return names


def make_cert(
    directory: Path, names: list[str], ips: list[str], days: int, force: bool = False
) -> dict[str, Any]:
    """Write the key and the certificate; what was made."""
    if not 1 <= days <= 3650:
        raise CertError("--days must be from 1 to 3650")
    try:
        addresses = [ipaddress.ip_address(ip) for ip in ips or ["127.0.0.1", "::1"]]
    except ValueError as e:
        raise CertError(str(e)) from None
    names = names or default_names()
    for name in names:
        if not name or any(c.isspace() or c in "/:@" for c in name) or len(name) > 253:
            raise CertError(f"{name!r} is not a host name")
    if not directory.is_dir():
        raise CertError(f"{directory} is not a directory")
    # Absolute: the endpoint string is read by a server whose working
    # directory may not be this one (systemd starts it in its data directory).
    directory = directory.resolve()
    key_path, cert_path = directory / KEY_NAME, directory / CERT_NAME
    if not force:
        for path in (key_path, cert_path):
            if path.exists():
                raise CertError(
                    f"{path} exists: give --force to replace it (clients must then trust the new one)"
                )

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])])
    now = datetime.datetime.now(datetime.timezone.utc)
    alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    alt_names += [x509.IPAddress(a) for a in addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # A little in the past: a client whose clock is slightly behind.
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write(key_path, key_pem, 0o600, force)
    try:
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644, force)
    except CertError:
        key_path.unlink(missing_ok=True)
        raise
    fingerprint = cert.fingerprint(hashes.SHA256()).hex(":").upper()
    return {
        "key": str(key_path),
        "certificate": str(cert_path),
        "names": names,
        "ips": [str(a) for a in addresses],
        "not_after": cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "sha256": fingerprint,
        "endpoint": f"ssl:7443:privateKey={_escaped(key_path)}:certKey={_escaped(cert_path)}:backlog=4096",
    }


def _escaped(path: Path) -> str:
    """A path in an endpoint string, where ``:`` and ``\\`` are special."""
    return str(path).replace("\\", "\\\\").replace(":", "\\:")


def _write(path: Path, data: bytes, mode: int, force: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        if force:
            path.unlink(missing_ok=True)  # a new file, made with its mode: never an old one's
        fd = os.open(path, flags, mode)
    except OSError as e:
        raise CertError(f"cannot create {path}: {e.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        owner = path.parent.stat()
        if os.geteuid() == 0 and owner.st_uid != 0:
            # Root making them in the service user's directory: the
            # service user must be able to read its key.
            os.fchown(f.fileno(), owner.st_uid, owner.st_gid)
        f.write(data)
    os.chmod(path, mode)  # whatever the umask took away (the certificate's 0644)


def describe(data: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"wrote {data['key']} (the private key, 0600: readable by this user only) and",
            f"      {data['certificate']} (the certificate, for clients to trust)",
            f"valid for {', '.join(data['names'] + data['ips'])} until {data['not_after']}",
            f"SHA-256 fingerprint: {data['sha256']}",
            "Listen with it ([server] endpoint in the configuration, or --endpoint):",
            f"  {data['endpoint']}",
            "Clients trust it with:",
            f"  chatclient-cli --tls --tls-ca {data['certificate']} --host {data['names'][0]} --port 7443",
        ]
    )
