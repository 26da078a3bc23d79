"""``python -m federation_presence`` is the ``federation-presence`` command."""

from federation_presence.cli import main

raise SystemExit(main())
