"""One thread for Qt and Twisted: Twisted's asyncio reactor on qasync's
Qt event loop.

Everything the GUI does (widgets, the client library, the channel's
crypto, timers) runs on the Qt main thread; nothing waits on the network
(the reactor is event-driven) and the expensive crypto of a handshake is
a few milliseconds on the client side.  This module is the only place
that wires the two loops together.
"""

from __future__ import annotations

import asyncio
from typing import Any


def install(app: Any) -> tuple[Any, Any]:
    """Install the reactor on a qasync loop for ``app`` (a QApplication).

    Returns ``(reactor, loop)``.  Call before anything imports
    ``twisted.internet.reactor``; run with ``with loop: reactor.run()``.
    """
    import qasync
    from twisted.internet import asyncioreactor

    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)
    from twisted.internet import reactor

    return reactor, loop
