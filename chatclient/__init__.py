"""chatclient: the client library, the terminal client and the desktop GUI."""
