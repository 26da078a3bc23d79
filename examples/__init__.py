"""Examples that run against federation-presence (importable in tests)."""
