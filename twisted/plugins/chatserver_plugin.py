"""twistd plugin stub: the real code is in chatserver.tap."""

from twisted.application.service import ServiceMaker

chatserver = ServiceMaker(
    "chatserver",
    "chatserver.tap",
    "A secure chat server (encrypted, authenticated channel over TCP).",
    "chatserver",
)
