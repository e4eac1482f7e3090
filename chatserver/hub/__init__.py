"""Delivery between processes: the ``Hub`` interface (interface.py), the
in-order guard every implementation uses (ordering.py) and the
implementations (local.py; a Redis one is planned)."""
