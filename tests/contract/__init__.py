"""One Store contract suite, run over SQLite and PostgreSQL."""
