"""The environment for a subprocess that must run this checkout's code.

An editable install may point at another checkout (several worktrees share
one venv); ``PYTHONPATH`` puts this one first, as pytest's rootdir is first
on ``sys.path`` in the test process itself.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def checkout_env() -> dict[str, str]:
    """``os.environ`` with this checkout first on ``PYTHONPATH``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env
