"""``python -m chatclient``: the desktop client (``chatclient-cli`` is the
terminal one)."""

from chatclient.gui.app import main

main()
