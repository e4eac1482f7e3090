"""The main window, one widget per file, fed by signals (the qutebrowser way).

``window`` puts them together and routes the bridge's signals to them:
``conversations`` (the side bar), ``header``, ``messages``, ``members``,
``input``, ``status`` and ``dialogs``.  None of them imports Twisted; the
client library reaches them only through :mod:`chatclient.gui.bridge`.
"""
