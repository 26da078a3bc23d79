"""Interest and routing: who gets whose presence (rooms and presence router modules)."""
