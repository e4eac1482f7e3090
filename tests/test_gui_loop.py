"""Qt and Twisted on one thread: the GUI's event loop, proven end to end.

The asyncio reactor cannot be installed in the test process (trial runs
the default reactor), so a child process sets up the GUI's loop
(``chatclient.gui.loop``), uses the real client library over it against
a real server started here, and renders what it received into a Qt widget
offscreen.
"""

from __future__ import annotations

from pathlib import Path

from twisted.trial import unittest

from tests.processes import spawn
from tests.support import PASSWORD, PYTHON, EventQueue, logged_in, start_server

try:
    import PyQt6  # noqa: F401
    import qasync  # noqa: F401
except ImportError:  # pragma: no cover - the gui extra is part of make test
    PyQt6 = None

CHILD = r"""
import os, sys
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
from PyQt6.QtWidgets import QApplication, QLabel
from chatclient.gui import loop as gui_loop

app = QApplication(sys.argv[:1])
reactor, loop = gui_loop.install(app)
from PyQt6.QtCore import QThread
from chatclient.session import connect

port, png = int(sys.argv[1]), sys.argv[2]
label = QLabel("waiting")
label.resize(400, 60)
label.show()

async def main():
    session = await connect(reactor, f"tcp:host=127.0.0.1:port={port}", lambda fp: True)
    got = []
    session.add_listener(lambda e: e.get("type") == "msg" and got.append(e))
    await session.register("qtuser", sys.argv[3])
    await session.say("lobby", "hello from the Qt loop")
    while not any(e["from"] == "bob" for e in got):
        await asyncio_sleep(0.02)
    label.setText(" | ".join(f"{e['from']}: {e['body']}" for e in got))
    # One thread: the reactor ran on Qt's main thread all along.
    print("same thread:", QThread.currentThread() is app.thread(), flush=True)
    label.grab().save(png)
    print("rendered:", label.text(), flush=True)
    await session.close()

def asyncio_sleep(t):
    from twisted.internet import task
    return task.deferLater(reactor, t, lambda: None)

from twisted.internet import defer
d = defer.ensureDeferred(main())
d.addErrback(lambda f: print("failed:", f.getErrorMessage(), flush=True))
d.addBoth(lambda _: reactor.stop())
with loop:
    reactor.run()
"""


class QtLoopTests(unittest.TestCase):
    if PyQt6 is None:
        skip = "PyQt6 and qasync are not installed (pip install -e '.[gui]')"

    async def test_client_library_runs_on_the_qt_loop_against_a_real_server(self) -> None:
        server = await start_server(self)
        bob = await logged_in(self, server, "bob")
        bob_events = EventQueue(bob)
        png = Path(self.mktemp()).with_suffix(".png").resolve()
        child = spawn(self, "qt", [PYTHON, "-c", CHILD, str(server.port), str(png), PASSWORD])
        await bob_events.next(lambda e: e.get("type") == "msg" and e["from"] == "qtuser", timeout=30)
        await bob.say("lobby", "hello back from bob")
        await child.wait_for(r"^rendered: ")
        self.assertEqual(await child.ended, 0, child.errors())
        self.assertIn("same thread: True", child.output())
        self.assertIn("qtuser: hello from the Qt loop | bob: hello back from bob", child.output())
        self.assertGreater(png.stat().st_size, 500)
