"""Server-server federation: X-Matrix auth, keys, resolution, inbound and outbound.

Pure parts (no I/O, no clock): ``edu``, ``xmatrix``, ``origin_policy``, ``ip_policy``
(and, to come, ``outbound/{queue,backoff,sharding}``).
Shell parts: ``signing_keys`` (our key file), ``keyring`` (remote keys) and
``key_fetch_slots`` (bounded, fair key fetching), ``resolver``, ``outbound_http``
(the one outbound HTTP stack), ``client``, ``address_guard`` (the IP policy at
connect time), ``inbound`` (and, to come, ``outbound/sender``).
"""
