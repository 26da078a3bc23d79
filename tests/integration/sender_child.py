"""A worker process for the sender's ``kill -9`` test (run as a script).

``python -m tests.integration.sender_child CONFIG DESTINATIONS [LOCALPART=STATUS ...]``
runs the real worker from CONFIG, routes every local user to the servers
listed (comma-separated) in DESTINATIONS, applies the given status changes
one after another (each durable), prints ``ready`` and serves until killed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from federation_presence.config import load_config
from federation_presence.ids import ServerName
from federation_presence.worker import running_worker
from tests.integration.sending import Routes, present, set_status


async def main(config_path: str, destinations: str, changes: list[str]) -> None:
    routes = Routes()
    routes.everyone = {ServerName(d) for d in destinations.split(",") if d}
    async with running_worker(load_config(Path(config_path)), destinations=routes) as worker:
        seen: set[str] = set()
        for change in changes:
            localpart, _, status = change.partition("=")
            if localpart not in seen:
                seen.add(localpart)
                await present(worker, localpart, status)
            else:
                await set_status(worker, localpart, status)
        print("ready", flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3:], backend="asyncio")
