"""Where this server reaches past Twisted's public API, in one place.

The one thing it uses is the write buffer of a plain TCP connection
(``twisted.internet.tcp.Connection``): a record written to a socket with
nothing queued goes out at once, with ``writeSomeData``, instead of through
``transport.write``.  That would register the socket for writability, wait
a reactor turn and unregister it again: two ``epoll_ctl`` calls per record,
which profiled at a fifth of the server's time at moderate load.

If a Twisted release renames what is used here, ``direct_sender`` returns
None and every write takes the public path (correct, only slower), and
``tests/test_twisted_internals.py`` fails so that we notice.

``endpoint_port`` reads the port a parsed server endpoint string names
(``_port`` of the TCP endpoints), to refuse one out of range at start-up
rather than at bind time; None where that attribute is not there.

Listening goes through ``Listener``, our own service over the public
endpoint API, where twisted.application's would have us read the private
``_waitingForPort`` to learn the port.
"""

from __future__ import annotations

import socket
from typing import Any, Callable

from twisted.application import service
from twisted.internet import defer, endpoints, tcp
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

#: The private parts of tcp.Connection that a direct send relies on.
_CONNECTION_INTERNALS = ("dataBuffer", "_tempDataBuffer", "writeSomeData")


def endpoint_port(endpoint: Any) -> int | None:
    """The port a TCP server endpoint was parsed with, if it shows it."""
    port = getattr(endpoint, "_port", None)
    return port if isinstance(port, int) else None


def has_send_internals(transport: Any) -> bool:
    """Whether ``transport`` is a plain TCP connection with the write
    buffer this module knows (a TLS one, or a test's, is not)."""
    return isinstance(transport, tcp.Connection) and all(hasattr(transport, a) for a in _CONNECTION_INTERNALS)


def direct_sender(transport: Any) -> Callable[[bytes], bytes | None] | None:
    """A function that sends ``data`` now if nothing is queued before it,
    and returns what the socket did not take (b"": all of it; None: the
    connection is lost, and the reactor reports that as usual), for
    ``transport.write`` to queue; None if ``transport`` has no such buffer."""
    if not has_send_internals(transport):
        return None

    def send(data: bytes) -> bytes | None:
        if transport.dataBuffer or transport._tempDataBuffer:
            return data  # behind what waits: in order, the usual way
        sent = transport.writeSomeData(data)
        if not isinstance(sent, int):
            return None
        return data[sent:]

    return send


class Listener(service.Service):
    """Listens on an endpoint while it runs; ``listening`` fires with the
    port.  A failure to listen that the endpoint reports at once (a busy
    port, a foreign address) raises from ``startService``, as
    ``strports.service`` does, so that start-up can say so in one line."""

    def __init__(self, endpoint: IStreamServerEndpoint, factory: Any) -> None:
        self.endpoint = endpoint
        self.factory = factory
        #: Fires with the IListeningPort once listening (None until started).
        self.listening: defer.Deferred[IListeningPort] | None = None
        self._port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        self.listening = defer.Deferred()
        failed_now: list[Failure] = []
        starting = True

        def failed(failure: Failure) -> None:
            if starting:
                failed_now.append(failure)
            else:
                assert self.listening is not None
                self.listening.errback(failure)

        self.endpoint.listen(self.factory).addCallbacks(self._listened, failed)
        starting = False
        if failed_now:
            self.running = 0
            failed_now[0].raiseException()

    def _listened(self, port: IListeningPort) -> None:
        self._port = port
        assert self.listening is not None
        self.listening.callback(port)

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        port, self._port = self._port, None
        if port is None:
            return None
        return port.stopListening()


def listener(reactor: Any, description: str, factory: Any) -> Listener:
    """A Listener for a strports ``description`` (raises ValueError for a
    description that names no endpoint)."""
    return Listener(endpoints.serverFromString(reactor, description), factory)


@implementer(IStreamServerEndpoint)
class AdoptedEndpoint:
    """A listening socket inherited from the parent process (a worker's,
    see chatserver/supervisor.py): ``listen`` adopts it."""

    def __init__(self, reactor: Any, fd: int, family: int) -> None:
        self.reactor = reactor
        self.fd = fd
        self.family = family

    def listen(self, factory: Any) -> defer.Deferred[IListeningPort]:
        try:
            port = self.reactor.adoptStreamPort(self.fd, self.family, factory)
        except Exception:
            return defer.fail()
        return defer.succeed(port)


def tcp_parts(reactor: Any, description: str) -> tuple[int, str, int, int]:
    """(address family, interface, port, backlog) of a ``tcp:``/``tcp6:``
    endpoint description (the endpoint's private attributes: Twisted has
    no public accessor).  ValueError for any other endpoint."""
    endpoint = endpoints.serverFromString(reactor, description)
    if isinstance(endpoint, endpoints.TCP6ServerEndpoint):
        family = socket.AF_INET6
    elif isinstance(endpoint, endpoints.TCP4ServerEndpoint):
        family = socket.AF_INET
    else:
        raise ValueError("worker processes need a tcp: or tcp6: endpoint")
    interface = endpoint._interface or ("::" if family == socket.AF_INET6 else "0.0.0.0")
    return family, interface, int(endpoint._port), int(endpoint._backlog)


def reuseport_socket(family: int, interface: str, port: int, backlog: int, listen: bool) -> socket.socket:
    """A TCP socket bound with SO_REUSEPORT: every worker binds its own on
    the same port, and the kernel spreads new connections over those that
    listen.  The main process's (``listen=False``) only holds the port."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface, port))
        if listen:
            sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
