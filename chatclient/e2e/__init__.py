"""End-to-end encryption in the client (docs/protocol.rst, "End-to-end
encryption"), on vodozemac: this device's keys (``device``), where they
are kept at rest (``store``), Olm and Megolm sessions and the payloads
they carry (``sessions``), what this device knows of other devices and
how far it trusts them (``trust``), and the part that speaks to the
server (``client``)."""
