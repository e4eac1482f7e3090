"""The one place where the GUI meets the client library and Twisted.

The client library speaks in listeners and Deferreds; the widgets speak Qt.
:class:`ClientBridge` turns the library's events and state changes into Qt
signals, and each request's Deferred into a call of ``answered(answer)`` or
``failed(problem)`` (a :class:`~chatclient.gui.rules.Problem`), so that no
widget imports Twisted (an import-linter contract keeps it so).  Once the
window is going away (:meth:`shut_down`), answers still arriving are
dropped, as are events: the widgets they would draw on are gone.
"""

from __future__ import annotations

from typing import Any, Callable

from PyQt6.QtCore import QObject, pyqtSignal
from twisted.internet import defer
from twisted.logger import Logger

from chatclient.gui.rules import Problem
from chatclient.reconnect import ReconnectingClient
from chatclient.session import ConnectionClosed, ServerError

log = Logger(namespace="chatclient.gui")

Answered = Callable[[dict[str, Any]], Any]
Failed = Callable[[Problem], Any]


def problem(error: BaseException) -> Problem:
    """What a request's failure means to the user."""
    if isinstance(error, ServerError):
        return Problem("refused", str(error.message), error.event.get("retry_after"), error.event)
    if isinstance(error, ConnectionClosed):
        return Problem("dropped", str(error))
    return Problem("failed", str(error))


class ClientBridge(QObject):
    """A :class:`ReconnectingClient` for widgets."""

    #: Every event the server pushes (a dict), in order.
    event_arrived = pyqtSignal(object)
    #: The connection's state (``connecting``, ``online``, ``reconnecting``,
    #: ``failed``, ``stopped``) and its detail (the welcome when online,
    #: the reason otherwise).
    state_changed = pyqtSignal(str, object)

    def __init__(self, reactor: Any, client: ReconnectingClient) -> None:
        super().__init__()
        self._reactor = reactor
        self.client = client
        self.closed = False
        client.add_listener(self._event)
        client.add_state_listener(self._state)

    def _event(self, event: dict[str, Any]) -> None:
        if not self.closed:
            self.event_arrived.emit(event)

    def _state(self, state: str, detail: Any) -> None:
        if not self.closed:
            self.state_changed.emit(state, detail)

    # --- what the widgets read ----------------------------------------------------

    @property
    def user(self) -> str:
        return self.client.user

    @property
    def role(self) -> str | None:
        return self.client.role

    @property
    def state(self) -> str:
        return self.client.state

    @property
    def online(self) -> bool:
        return self.client.state == "online"

    @property
    def connections(self) -> int:
        """Successful logins so far (more than one: this is a reconnection)."""
        return self.client.connections

    @property
    def fingerprint(self) -> str | None:
        session = self.client.session
        return session.fingerprint if session is not None else None

    def has_seen(self, stream: str) -> bool:
        """Whether the client has a place to catch ``stream`` up from."""
        return stream in self.client.last_ids

    def note_seen(self, stream: str, last_id: int) -> None:
        self.client.note_seen(stream, last_id)

    def retry_in(self) -> float | None:
        """Seconds until the next connection attempt; None when not waiting."""
        if self.client.state not in ("reconnecting", "connecting"):
            return None
        at = self.client.retry_at
        return max(0.0, at - self._reactor.seconds()) if at is not None else 0.0

    # --- what the widgets do ----------------------------------------------------

    def request(
        self, request: dict[str, Any], answered: Answered | None = None, failed: Failed | None = None
    ) -> None:
        """Send ``request``; ``answered(answer)`` or ``failed(problem)`` is
        called later (never after :meth:`shut_down`)."""

        def ok(answer: dict[str, Any]) -> None:
            if not self.closed and answered is not None:
                answered(answer)

        def bad(failure: Any) -> None:
            if not self.closed and failed is not None:
                failed(problem(failure.value))

        d = self.client.request(request)
        d.addCallbacks(ok, bad)
        # A widget's mistake in drawing an answer is logged, not lost.
        d.addErrback(
            lambda failure: log.failure(
                "drawing the answer to a {kind} request", failure, kind=request.get("type")
            )
        )

    @property
    def e2e(self) -> Any:
        """This device's end-to-end encryption (``chatclient.e2e.client.EndToEnd``), or None."""
        return self.client.e2e

    def call(
        self, make: Callable[[], Any], answered: Callable[[Any], Any], failed: Failed | None = None
    ) -> None:
        """Run ``make()`` (which may return a Deferred: an end-to-end
        operation) and hand its result to ``answered``, or its failure to
        ``failed`` as a Problem; never after :meth:`shut_down`."""

        def ok(result: Any) -> None:
            if not self.closed:
                answered(result)

        def bad(failure: Any) -> None:
            if not self.closed and failed is not None:
                failed(problem(failure.value))

        d = defer.maybeDeferred(make)
        d.addCallbacks(ok, bad)
        d.addErrback(lambda failure: log.failure("drawing the result of an end-to-end operation", failure))

    def stop(self) -> None:
        """No reconnecting: the window closed, or the user logged out."""
        self.client.stop()

    def shut_down(self) -> None:
        """Nothing more reaches the widgets."""
        self.closed = True
