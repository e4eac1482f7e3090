"""chatserver: a small, secure, self-hosted chat server on Twisted."""

__version__ = "0.1.0"
