"""The chat core's database: the ``Storage`` interface (interface.py), its
group commit (group_commit.py) and its implementations (sqlite.py; a
PostgreSQL one is planned)."""
