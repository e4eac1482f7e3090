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

from typing import Any, Callable

from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import quoteStringArgument as quote
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

from chatclient.hosts import BadHostList, format_hosts, parse_hosts

__all__ = ["BadHostList", "FailoverEndpoint", "endpoint_description", "format_hosts", "parse_hosts"]


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


def endpoint_description(host: str, port: int, tls: bool = False, ca_dir: str | None = None) -> str:
    """A Twisted client endpoint string: TCP, or TLS checked against the
    system's CA certificates or those in ``ca_dir`` (PEM files).  Shared by
    both clients so that they connect alike."""
    if not tls:
        return f"tcp:host={quote(host)}:port={port}"
    description = f"tls:host={quote(host)}:port={port}"
    if ca_dir is not None:
        description += f":trustRoots={quote(ca_dir)}"
    return description
