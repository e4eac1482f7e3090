"""The desktop client under remote control, for tests and screenshots.

Runs the real application (``chatclient.gui.app``: its event loop, dialogs
and window) offscreen, and reads requests on stdin, one JSON object per
line: ``{"id": N, "op": "eval" | "exec" | "wait", "code": str,
"timeout": s}``.  ``eval`` answers an expression's value, ``exec`` runs
statements, ``wait`` polls an expression on the Qt loop until it is true.
Answers are lines ``@@{"id": N, "ok": bool, "value" | "error": ...}``.
The code runs with the names of :func:`namespace` in scope: user actions
go through ``QTest`` as real key and mouse events.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def namespace(app: Any, controller: Any, reactor: Any) -> dict[str, Any]:
    from PyQt6.QtCore import Qt
    from PyQt6.QtTest import QTest
    from PyQt6.QtWidgets import QApplication, QMessageBox

    def type_text(widget: Any, text: str) -> None:
        from PyQt6.QtCore import QEvent
        from PyQt6.QtGui import QKeyEvent

        widget.setFocus()
        for char in text:
            if char.isascii():
                QTest.keyClicks(widget, char)
            else:  # QTest maps ASCII only; other text arrives as the key event's text
                for kind in (QEvent.Type.KeyPress, QEvent.Type.KeyRelease):
                    QApplication.sendEvent(widget, QKeyEvent(kind, 0, Qt.KeyboardModifier.NoModifier, char))

    def press(widget: Any, key: str, modifiers: str = "") -> None:
        flags = Qt.KeyboardModifier.NoModifier
        for name in filter(None, modifiers.split("+")):
            flags |= getattr(Qt.KeyboardModifier, f"{name.capitalize()}Modifier")
        QTest.keyClick(widget, getattr(Qt.Key, f"Key_{key}"), flags)

    def click(widget: Any) -> None:
        QTest.mouseClick(widget, Qt.MouseButton.LeftButton)

    def shortcut(sequence: str) -> None:
        from PyQt6.QtGui import QKeySequence

        combo = QKeySequence(sequence)[0]
        if QApplication.activeModalWidget() is None and not controller.window.isActiveWindow():
            # Offscreen, closing a dialog does not hand activation back to
            # the window as a desktop would; window shortcuts need it.
            controller.window.activateWindow()
            QApplication.processEvents()
        target = QApplication.focusWidget() or controller.window
        QTest.keyClick(target, combo.key(), combo.keyboardModifiers())

    def window() -> Any:
        return controller.window

    def modal() -> Any:
        return QApplication.activeModalWidget()

    def shot(widget: Any, path: str) -> int:
        widget.grab().save(path)
        return os.path.getsize(path)

    def texts(listing: Any) -> list[str]:
        return [listing.item(row).text() for row in range(listing.count())]

    from PyQt6 import QtWidgets

    widgets = {name: getattr(QtWidgets, name) for name in dir(QtWidgets) if name.startswith("Q")}
    return widgets | {
        "app": app,
        "controller": controller,
        "reactor": reactor,
        "Qt": Qt,
        "QTest": QTest,
        "QApplication": QApplication,
        "QMessageBox": QMessageBox,
        "type_text": type_text,
        "press": press,
        "click": click,
        "shortcut": shortcut,
        "window": window,
        "modal": modal,
        "shot": shot,
        "texts": texts,
    }


def main() -> None:
    from PyQt6.QtWidgets import QApplication

    from chatclient.gui import app as gui_app
    from chatclient.gui import loop as gui_loop
    from chatclient.known_hosts import KnownHosts

    args = gui_app.parse_args(sys.argv[1:])
    if args.verbose:
        gui_app.start_logging(True)  # to stderr, as the real application logs
    qt_app = QApplication(sys.argv[:1])
    gui_app.apply_theme(qt_app, args.theme)
    reactor, loop = gui_loop.install(qt_app)
    from twisted.internet import stdio, task
    from twisted.protocols.basic import LineReceiver

    controller = gui_app.App(
        reactor,
        KnownHosts(args.known_hosts),
        args.servers,
        devices=args.device_dir,
        passphrase_file=args.store_passphrase_file,
        e2e=not args.no_e2e,
    )
    controller.show_connect()
    scope = namespace(qt_app, controller, reactor)

    def answer(request_id: Any, ok: bool, **rest: Any) -> None:
        line = json.dumps({"id": request_id, "ok": ok, **rest}, default=repr)
        sys.stdout.write("@@" + line + "\n")
        sys.stdout.flush()

    class Remote(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            request = json.loads(line)
            request_id, op, code = request["id"], request["op"], request["code"]
            try:
                if op == "eval":
                    answer(request_id, True, value=eval(code, scope))
                elif op == "exec":
                    exec(code, scope)
                    answer(request_id, True, value=None)
                else:
                    self._wait(request_id, code, reactor.seconds() + request.get("timeout", 30))
            except Exception:
                answer(request_id, False, error=traceback.format_exc())

        def _wait(self, request_id: Any, code: str, deadline: float) -> None:
            try:
                value = eval(code, scope)
            except Exception:
                value = None
                last = traceback.format_exc()
            else:
                last = repr(value)
            if value:
                answer(request_id, True, value=value)
            elif reactor.seconds() > deadline:
                answer(request_id, False, error=f"timed out waiting for {code}; last: {last}")
            else:
                task.deferLater(reactor, 0.05, self._wait, request_id, code, deadline)

        def connectionLost(self, reason: Any) -> None:
            reactor.stop()

    stdio.StandardIO(Remote(), reactor=reactor)
    print("remote ready", flush=True)
    with loop:
        reactor.run()


if __name__ == "__main__":
    main()
