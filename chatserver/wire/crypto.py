"""The crypto facade: every primitive the project uses, and nothing else.

No other module imports a crypto library.  Each function here is a thin,
named wrapper around `cryptography` (which pyOpenSSL already requires), so the
rest of the code speaks in terms of what it wants (``seal``, ``dh``,
``fingerprint``) and this module is the one place to audit and to test against
the Wycheproof vectors.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets

from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

__all__ = [
    "CryptoError",
    "AEAD",
    "random_bytes",
    "sha256",
    "sha512",
    "hmac_sha256",
    "hmac_equal",
    "hkdf",
    "hkdf_expand",
    "x25519_keypair",
    "x25519_private_from_bytes",
    "dh",
    "rsa_generate",
    "rsa_private_to_pem",
    "rsa_private_from_pem",
    "rsa_public_der",
    "rsa_public_from_der",
    "rsa_encrypt",
    "rsa_decrypt",
    "fingerprint",
    "ed25519_verify",
    "passphrase_key",
    "hash_password",
    "verify_password",
]

#: Bits of the long-term RSA identity keys we generate and accept.
RSA_BITS = 3072
RSA_MIN_BITS = 3072
RSA_MAX_BITS = 8192


class CryptoError(Exception):
    """A cryptographic check failed: bad tag, bad key, bad ciphertext.

    Deliberately carries no detail from the underlying library: callers log
    *that* a check failed and close the connection, never *why* in a way
    that could serve as an oracle.
    """


def random_bytes(n: int) -> bytes:
    return secrets.token_bytes(n)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def sha512(data: bytes) -> bytes:
    return hashlib.sha512(data).digest()


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def hmac_equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison of two MACs."""
    return hmac.compare_digest(a, b)


def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869), extract then expand."""
    return HKDF(hashes.SHA256(), length, salt, info).derive(ikm)


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand with SHA-256 (RFC 5869 section 2.3)."""
    return HKDFExpand(hashes.SHA256(), length, info).derive(prk)


class AEAD:
    """AES-256-GCM under one key.

    One instance per key, reused for every frame: building the cipher object
    is most of the cost of a small seal, so the hot path must not do it per
    frame.
    """

    __slots__ = ("_aes",)

    KEY_SIZE = 32
    NONCE_SIZE = 12
    TAG_SIZE = 16

    def __init__(self, key: bytes) -> None:
        if len(key) != self.KEY_SIZE:
            raise ValueError("AES-256-GCM needs a 32-byte key")
        self._aes = AESGCM(key)

    def seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """Return ciphertext || 16-byte tag."""
        return self._aes.encrypt(nonce, plaintext, aad)

    def open(self, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
        try:
            return self._aes.decrypt(nonce, sealed, aad)
        except InvalidTag:
            raise CryptoError("authentication failed") from None


# --- X25519 ---------------------------------------------------------------


def x25519_keypair() -> tuple[x25519.X25519PrivateKey, bytes]:
    """A fresh ephemeral key and its 32-byte public share."""
    key = x25519.X25519PrivateKey.generate()
    return key, _x25519_public_bytes(key)


def x25519_private_from_bytes(raw: bytes) -> tuple[x25519.X25519PrivateKey, bytes]:
    """Load a fixed private scalar (test vectors only)."""
    key = x25519.X25519PrivateKey.from_private_bytes(raw)
    return key, _x25519_public_bytes(key)


def _x25519_public_bytes(key: x25519.X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def dh(private: x25519.X25519PrivateKey, peer_public: bytes) -> bytes:
    """X25519 shared secret; rejects low-order peer shares.

    A low-order (or otherwise contributory-free) share makes the shared
    secret all zeros, which an attacker could predict; RFC 7748 section 6.1
    says to check for that, and ``cryptography`` raises ValueError for it.
    We also check explicitly so the guarantee does not hang on one library
    version's behaviour.
    """
    if len(peer_public) != 32:
        raise CryptoError("X25519 share must be 32 bytes")
    try:
        peer = x25519.X25519PublicKey.from_public_bytes(peer_public)
        shared = private.exchange(peer)
    except ValueError:
        raise CryptoError("X25519 share has low order") from None
    if not any(shared):
        raise CryptoError("X25519 share has low order")
    return shared


# --- RSA ------------------------------------------------------------------

_OAEP = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()),
    algorithm=hashes.SHA256(),
    label=None,
)


def rsa_generate(bits: int = RSA_BITS) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def rsa_private_to_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def rsa_private_from_pem(data: bytes) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise CryptoError("not a PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CryptoError("not an RSA private key")
    return key


def rsa_public_der(key: rsa.RSAPrivateKey | rsa.RSAPublicKey) -> bytes:
    """DER SubjectPublicKeyInfo of a key: what goes on the wire and is pinned."""
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def rsa_public_from_der(der: bytes) -> rsa.RSAPublicKey:
    """Parse a SubjectPublicKeyInfo; only RSA keys of a sane size pass."""
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # UnsupportedAlgorithm: a well-formed SPKI of an algorithm OpenSSL
        # does not know (found by fuzzing the SERVER_HELLO).
        raise CryptoError("not a DER public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise CryptoError("not an RSA public key")
    if not RSA_MIN_BITS <= key.key_size <= RSA_MAX_BITS:
        raise CryptoError(f"RSA key size {key.key_size} out of range")
    return key


def rsa_encrypt(public: rsa.RSAPublicKey, plaintext: bytes) -> bytes:
    """RSA-OAEP with SHA-256 and MGF1-SHA-256, empty label."""
    return public.encrypt(plaintext, _OAEP)


def rsa_decrypt(private: rsa.RSAPrivateKey, ciphertext: bytes) -> bytes:
    try:
        return private.decrypt(ciphertext, _OAEP)
    except ValueError:
        raise CryptoError("RSA-OAEP decryption failed") from None


def fingerprint(public_der: bytes) -> str:
    """``SHA256:`` + unpadded base64 of SHA-256(DER SPKI), as OpenSSH prints."""
    digest = base64.b64encode(sha256(public_der)).rstrip(b"=").decode("ascii")
    return "SHA256:" + digest


# --- passwords ------------------------------------------------------------

_SCRYPT_R = 8
_SCRYPT_P = 1


def ed25519_verify(public: bytes, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is a valid Ed25519 signature of ``message``
    under the 32-byte ``public`` key (RFC 8032).  Any malformed input is
    simply not valid."""
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def hash_password(password: str, log2_n: int) -> str:
    """scrypt with a fresh 16-byte salt, encoded with its parameters.

    The encoding keeps the cost with the hash, so raising the configured cost
    later does not lock out existing users.
    """
    salt = os.urandom(16)
    digest = _scrypt(password, salt, log2_n, _SCRYPT_R, _SCRYPT_P)
    return "scrypt${}${}${}${}${}".format(
        log2_n,
        _SCRYPT_R,
        _SCRYPT_P,
        base64.b64encode(salt).decode("ascii"),
        base64.b64encode(digest).decode("ascii"),
    )


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, log2_n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = _scrypt(password, base64.b64decode(salt), int(log2_n), int(r), int(p))
    except (ValueError, TypeError, OverflowError, MemoryError):
        # A damaged or hostile encoding (absurd cost, bad base64) is simply
        # not a match; it must never take the login path down.
        return False
    return hmac.compare_digest(actual, expected)


def passphrase_key(passphrase: str, salt: bytes, log2_n: int) -> bytes:
    """A 32-byte key from a passphrase: scrypt (RFC 7914) with r=8, p=1."""
    return _scrypt(passphrase, salt, log2_n, _SCRYPT_R, _SCRYPT_P)


def _scrypt(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    n = 1 << log2_n
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        # scrypt needs 128*r*n bytes; leave headroom for its other buffers.
        maxmem=132 * n * r + (1 << 20),
        dklen=32,
    )
