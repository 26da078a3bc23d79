"""The outbound federation sender: local presence to interested remote servers.

Pure parts (no I/O, ``now`` passed in): ``settings``, ``queue`` (one
destination's owed state and suppression), ``backoff``, ``sharding``,
``keepalive``. The shell: ``sender`` (``OutboundSender``, the design essay)
and ``routing`` (the ``DestinationSource`` seam the routing package fills).
"""
