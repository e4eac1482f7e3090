"""The refusal of one request: what becomes an ``error`` event.

Validation, the chat core and the accounts each refuse requests for their
own reasons (``RequestError``, ``ChatError``, ``AuthError``); all are this
one shape, and turn into the event the same way (docs/protocol.rst,
"Errors").
"""

from __future__ import annotations

import math
from typing import Any


class Refused(Exception):
    """A request the server will not do: ``code`` (the spec's Errors
    table), a message for the user, the ``field`` at fault if one is, and
    how many seconds to wait before trying again if that helps."""

    def __init__(
        self, code: str, message: str, field: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.retry_after = retry_after

    def event(self, request: str) -> dict[str, Any]:
        """The ``error`` event that answers a ``request`` of that type."""
        event: dict[str, Any] = {
            "type": "error",
            "code": self.code,
            "message": self.message,
            "request": request,
        }
        if self.field is not None:  # "" too: a member may be named so
            event["field"] = self.field
        if self.retry_after:
            # Rounded up: a client that waits exactly this long must succeed.
            event["retry_after"] = math.ceil(self.retry_after * 10) / 10
        return event
