"""The presence core: pure, sans-I/O.

Rules of this package (checked by a test that imports it in a subprocess):
no sockets, no files, no database, no clock reads, no anyio/httpx/sqlite3
imports. Every function that depends on time takes ``now`` (ms since the
epoch) as its first time argument. Values are frozen dataclasses; functions
return new values and never mutate their arguments.

Modules: ``states`` (the enum and wire names), ``model`` (values and
``Outcome``), ``inputs`` (what happened), ``transitions`` (per device),
``aggregate`` (devices → user), ``notify`` (the notify rule), ``remote``
(pushes and the federation timeout), ``timers`` (``DeadlineQueue``) and
``machine`` (``PresenceMachine``, which sequences them all).
"""
