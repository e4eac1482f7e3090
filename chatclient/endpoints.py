"""Several servers of one deployment as one endpoint, for failover.

A deployment of several nodes shares its database, its hub and its
identity key, so a client may talk to any node: ``--host h1:7070,h2:7070``
(and the same in the desktop client's server entry).  A
:class:`FailoverEndpoint` connects to the node that worked last, and if it
cannot, to the next ones in turn, all within one connection attempt: a
dead node costs its refused (or timed-out) connection, not a backoff
period.  The reconnecting client does the rest as after any reconnection:
it resumes with its session token and catches up.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from OpenSSL import crypto
from twisted.internet import ssl
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import HostnameEndpoint, clientFromString, wrapClientTLS
from twisted.internet.endpoints import quoteStringArgument as quote
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

from chatclient.hosts import BadHostList, format_hosts, parse_hosts

__all__ = [
    "BadCA",
    "BadHostList",
    "FailoverEndpoint",
    "endpoint_description",
    "format_hosts",
    "parse_hosts",
    "tls_endpoint",
]


@implementer(IStreamClientEndpoint)
class FailoverEndpoint:
    """Connects to one of ``endpoints`` (name, endpoint), starting with the
    one that connected last.  ``on_switch(name)`` is told when it connects
    to another one than before."""

    def __init__(
        self, endpoints: list[tuple[str, Any]], on_switch: Callable[[str], None] | None = None
    ) -> None:
        if not endpoints:
            raise ValueError("no endpoints")
        self.endpoints = endpoints
        self.current = 0
        self._on_switch = on_switch

    @property
    def name(self) -> str:
        return self.endpoints[self.current][0]

    @inlineCallbacks
    def connect(self, factory: Any) -> Any:
        failure: Failure | None = None
        count = len(self.endpoints)
        for step in range(count):
            at = (self.current + step) % count
            name, endpoint = self.endpoints[at]
            try:
                protocol = yield endpoint.connect(factory)
            except Exception:
                failure = Failure()
                continue
            if at != self.current:
                self.current = at
                if self._on_switch is not None:
                    self._on_switch(name)
            return protocol
        assert failure is not None
        failure.raiseException()

    def __repr__(self) -> str:
        return f"FailoverEndpoint({[name for name, _ in self.endpoints]})"


def endpoint_description(
    host: str, port: int, tls: bool = False, ca_dir: str | None = None, timeout: int | None = None
) -> str:
    """A Twisted client endpoint string: TCP, or TLS checked against the
    system's CA certificates or those in ``ca_dir`` (PEM files).  Shared by
    both clients so that they connect alike.  ``timeout``: seconds to
    connect (Twisted's default: 30)."""
    description = f"{'tls' if tls else 'tcp'}:host={quote(host)}:port={port}"
    if tls and ca_dir is not None:
        description += f":trustRoots={quote(ca_dir)}"
    if timeout is not None:
        description += f":timeout={timeout}"
    return description


class BadCA(ValueError):
    """The CA certificates to trust cannot be read (the message says why)."""


def tls_endpoint(reactor: Any, host: str, port: int, ca: str | None = None, timeout: int = 30) -> Any:
    """The TLS endpoint of both clients: the server's certificate checked
    for ``host`` against the system's CA certificates, or only against
    those of ``ca``, a directory of ``*.pem`` files (``endpoint_description``'s
    ``trustRoots``) or one PEM file of one or more certificates.  Raises
    :class:`BadCA` if ``ca`` cannot be read."""
    if ca is not None and os.path.isfile(ca):
        options = ssl.optionsForClientTLS(host, trustRoot=ssl.trustRootFromCertificates(_certificates(ca)))
        return wrapClientTLS(options, HostnameEndpoint(reactor, host, port, timeout=timeout))
    if ca is not None and not os.path.isdir(ca):
        raise BadCA(f"{ca}: no such file or directory")
    try:
        return clientFromString(reactor, endpoint_description(host, port, True, ca, timeout))
    except OSError as e:  # a directory that cannot be listed
        raise BadCA(f"{ca}: {e.strerror or e}") from None


def _certificates(path: str) -> list[ssl.Certificate]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BadCA(f"{path}: {e.strerror or e}") from None
    end = b"-----END CERTIFICATE-----"
    found = []
    for block in data.split(end)[:-1]:
        start = block.find(b"-----BEGIN CERTIFICATE-----")
        if start < 0:
            continue
        try:
            found.append(ssl.Certificate.loadPEM(block[start:] + end + b"\n"))
        except crypto.Error:
            raise BadCA(f"{path}: a certificate in it cannot be read") from None
    if not found:
        raise BadCA(f"{path}: no PEM certificate in it")
    return found
