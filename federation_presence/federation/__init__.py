"""Server-server federation: X-Matrix auth, keys, resolution, inbound and outbound.

Pure parts (no I/O, no clock): ``edu``, ``xmatrix``, ``outbound/{queue,backoff,sharding}``.
Shell parts: ``signing_keys`` (our key file), ``keyring`` (remote keys), ``resolver``,
``client``, ``inbound``, ``outbound/sender``.
"""
