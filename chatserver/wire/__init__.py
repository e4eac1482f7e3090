"""The protocol both sides speak, and nothing else of the server.

``channel``: the handshake state machines and the record layer (the
spec is docs/protocol.rst); ``crypto``: the crypto facade, the one place
that imports a crypto library; ``validation``: the request schemas and
their checks; ``safetext``: peer text made safe to log or show.

This package imports nothing else from ``chatserver`` and nothing from
``chatclient``: the client imports it, and only it, from the server.
"""
