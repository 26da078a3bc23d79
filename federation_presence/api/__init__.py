"""The HTTP surfaces: one ASGI app (``app``) and thin handlers per surface."""
