"""``python -m chatclient``: the desktop client arrives with the GUI issue;
until then this runs the terminal client."""

from chatclient.cli import main

main()
