"""Request handlers, one module per area, each a plain class whose
``requests`` table maps request types to its methods.  ``table`` joins
them into the one table a session dispatches on; each type has exactly
one handler, and every type the validator admits has one."""

from __future__ import annotations

from chatserver.handlers.accounts import AccountHandlers
from chatserver.handlers.devices import DeviceHandlers
from chatserver.handlers.direct import DirectHandlers
from chatserver.handlers.moderation import ModerationHandlers
from chatserver.handlers.rooms import RoomHandlers
from chatserver.handlers.stats import StatsHandlers
from chatserver.session import Handler, Services
from chatserver.wire.validation import REQUESTS


def table(factory: Services) -> dict[str, Handler]:
    """Every request type's handler, from the factory's services."""
    joined: dict[str, Handler] = {}
    for handlers in (
        AccountHandlers(factory.accounts, factory.chat),
        RoomHandlers(factory.chat),
        DirectHandlers(factory.chat),
        DeviceHandlers(factory.chat),
        ModerationHandlers(factory.chat, factory.sessions),
        StatsHandlers(factory),
    ):
        for kind, handler in handlers.requests.items():
            if kind in joined:
                raise ValueError(f"two handlers for request type {kind!r}")
            joined[kind] = handler
    missing = set(REQUESTS) - set(joined)
    if missing:
        raise ValueError(f"no handler for request types {sorted(missing)}")
    return joined
