"""The server's long-term RSA identity key: made once, kept private."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from chatserver.wire import crypto

audit = Logger(namespace="chatserver.audit")


class IdentityError(Exception):
    """The key file is unreadable, malformed or readable by others."""


class Identity:
    """The private key, its DER public key (what clients pin) and fingerprint."""

    def __init__(self, key: Any) -> None:
        self.key = key
        self.public_der = crypto.rsa_public_der(key)
        self.fingerprint = crypto.fingerprint(self.public_der)


def load_or_create(path: Path) -> tuple[Identity, bool]:
    """Load the key at ``path``, generating it first if missing.

    Returns the identity and whether it was just created.  The file is
    created with mode 0600 atomically (O_EXCL), so there is no moment when
    it exists with looser permissions; an existing file that others can
    read is refused, as OpenSSH refuses such host keys.
    """
    created = False
    if not path.exists():
        try:
            created = _create(path)
        except OSError as e:
            # An operator's mistake (a data directory under a file, a
            # read-only file system): one line, not a traceback.
            raise IdentityError(f"cannot create {path}: {e.strerror or e}") from None
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise IdentityError(
                f"{path} is accessible by group or others (mode {stat.S_IMODE(mode):o}); "
                f"run: chmod 600 {path}"
            )
        identity = Identity(crypto.rsa_private_from_pem(path.read_bytes()))
    except OSError as e:
        raise IdentityError(f"cannot read {path}: {e.strerror}") from None
    except crypto.CryptoError as e:
        raise IdentityError(f"{path}: {e}") from None
    if created:
        audit.info(
            "created server identity key {path} with fingerprint {fingerprint}",
            path=str(path),
            fingerprint=identity.fingerprint,
        )
    return identity, created


def _create(path: Path) -> bool:
    """Write a new key to ``path``; False if another process made it first."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = crypto.rsa_private_to_pem(crypto.rsa_generate())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False  # another process made it first; load theirs
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    return True
