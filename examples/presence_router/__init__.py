"""Synapse's documented example presence router, run by federation-presence."""
