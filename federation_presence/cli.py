"""The ``federation-presence`` command line (also ``python -m federation_presence``).

Owns argument parsing, logging setup and the exit codes; every command is a
thin shell over the package:

* ``run [-c FILE]``: load the config (no file = the embedded defaults: SQLite
  in the working directory, a key generated on first run), run every check
  ``check-config`` runs, and hand it to ``federation_presence.worker.run``,
  imported lazily so that the other commands never import uvicorn or the
  store. The worker binds its listeners first: an address in use is a
  ``ConfigError`` naming ``listeners[i].port``;
* ``check-config FILE``: parse the file and check the files it names (TLS
  certificate and key, CA bundle, signing key if present); ``OK: <summary>``
  on stdout, or the one error line on stderr;
* ``generate-key [-o PATH] [--force]``: a new signing key in Synapse's format;
  never replaces an existing file without ``--force``;
* ``probe SERVER`` and ``loadtest TARGET``: their arguments, output and exit
  codes live in ``federation_presence.loadtest.commands``.

Exit codes: 0 success; 1 the worker failed at run time; 2 a usage or
configuration mistake (argparse's own code for usage errors), including a
listener address that cannot be bound; ``probe`` and ``loadtest`` also exit 1
when a step fails or the target refuses load.
Invariant: a ``ConfigError`` from anywhere becomes exactly one line on stderr
and exit 2, never a traceback. The config summary never shows a database password.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import ssl
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from signedjson.types import SigningKey

from federation_presence import __version__
from federation_presence.config import Config, load_config
from federation_presence.errors import ConfigError, FederationPresenceError
from federation_presence.federation import signing_keys
from federation_presence.loadtest import commands as loadtest_commands

__all__ = ["LOG_FORMAT", "PROG", "build_parser", "configure_logging", "describe_config", "main"]

PROG = "federation-presence"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

logger = logging.getLogger(__name__)

Command = Callable[[argparse.Namespace], int]


def configure_logging(level: str) -> None:
    """One line per record on stderr: timestamp, level, logger name, message."""
    logging.basicConfig(
        level=getattr(logging, level.upper()), format=LOG_FORMAT, stream=sys.stderr, force=True
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="A Matrix federation presence worker.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="serve federation and local presence",
        description="Serve until SIGINT/SIGTERM. Without --config: the embedded defaults"
        " (localhost:8448, SQLite federation-presence.db in the working directory,"
        " signing key keys/signing.key generated on first run).",
    )
    run.add_argument("-c", "--config", type=Path, metavar="FILE", help="YAML config file")
    run.set_defaults(handler=_run)

    check = commands.add_parser(
        "check-config",
        help="validate a config file and the files it names",
        description="Print 'OK: <summary>' and exit 0, or print the first mistake as one"
        " line '<file>: <key>: <problem>' on stderr and exit 2. Relative paths are"
        " resolved against the working directory, as `run` does.",
    )
    check.add_argument("file", type=Path, metavar="FILE")
    check.set_defaults(handler=_check_config)

    generate = commands.add_parser(
        "generate-key",
        help="write a new ed25519 signing key (Synapse's file format)",
        description="Write a new key as 'ed25519 <version> <base64 seed>', mode 0600.",
    )
    generate.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Config().signing_key_path,
        metavar="PATH",
        help="where to write it (default: %(default)s)",
    )
    generate.add_argument(
        "--force", action="store_true", help="replace an existing key file (retires that key)"
    )
    generate.set_defaults(handler=_generate_key)

    loadtest_commands.add_probe(commands)
    loadtest_commands.add_loadtest(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit code (argparse's exits are returned, not raised)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else 2)
    handler: Command = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except FederationPresenceError as exc:
        logger.debug("%s failed", args.command, exc_info=True)
        print(f"{PROG} {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


# --- commands ----------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    config_path: Path | None = args.config
    config = load_config(config_path)
    _check_files(config)  # what check-config checks, before anything starts
    _check_router(config)
    configure_logging(config.log_level)
    if config_path is None:
        logger.info("no --config given: embedded defaults (%s)", describe_config(config))
    from federation_presence import worker  # lazy: only `run` needs uvicorn and the store

    return worker.run(config)


def _check_config(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    key_state = _check_files(config)
    router = _check_router(config)
    print(
        f"OK: {describe_config(config)}; signing key: {config.signing_key_path} ({key_state})"
        + router
    )
    return EXIT_OK


def _check_router(config: Config) -> str:
    """Import the presence router module and parse its config (``ConfigError`` if
    either fails); a suffix for the summary line, empty without a router."""
    if config.presence_router is None:
        return ""
    from federation_presence.routing.modules import router_class

    router_class(config.presence_router, config.source)
    return f"; presence router: {config.presence_router.module} (imported, config parsed)"


def _generate_key(args: argparse.Namespace) -> int:
    path: Path = args.output
    replacing = path.exists() or path.is_symlink()
    if replacing and not args.force:
        print(f"{path}: already exists; pass --force to replace it", file=sys.stderr)
        return EXIT_USAGE
    retired: list[SigningKey] = []
    if replacing:
        with contextlib.suppress(ConfigError):  # --force replaces even an unreadable file
            retired = signing_keys.read_signing_key_file(path)
    key = signing_keys.generate_signing_key()
    if replacing:
        signing_keys.write_signing_key_file(path, [key])
    elif not _create_exclusively(path, key):
        print(f"{path}: already exists; pass --force to replace it", file=sys.stderr)
        return EXIT_USAGE
    key_id = signing_keys.signing_key_id(key)
    print(
        f"wrote {key_id} to {path} (public key {signing_keys.verify_key_base64(key)});"
        " it is read by `run` from signing_key_path"
    )
    if retired:
        from federation_presence.clock import SystemClock

        now = SystemClock().now_ms()
        print("replaced; to let peers verify what the old key signed, add to the config:")
        print("old_signing_keys:")
        for old in retired:
            print(
                f'  "{signing_keys.signing_key_id(old)}":'
                f' {{key: "{signing_keys.verify_key_base64(old)}", expired_ts: {now}}}'
            )
    return EXIT_OK


# --- pieces ------------------------------------------------------------------


def _create_exclusively(path: Path, key: SigningKey) -> bool:
    """Write ``key`` to a new file ``path``; False if ``path`` appeared meanwhile.

    The key is written whole to a sibling and hard-linked into place, which
    fails rather than replaces if another process created ``path`` first.
    """
    sibling = path.with_name(f".{path.name}.{secrets.token_hex(8)}.new")
    signing_keys.write_signing_key_file(sibling, [key])
    try:
        os.link(sibling, path)
    except FileExistsError:
        return False
    except OSError as exc:
        raise ConfigError("--output", f"cannot create {path}: {exc.strerror or exc}") from exc
    finally:
        sibling.unlink(missing_ok=True)
    return True


def _check_files(config: Config) -> str:
    """Check the files ``config`` names; the state of its signing key, in words."""
    source = config.source
    for index, listener in enumerate(config.listeners):
        cert, key = listener.tls_certificate_path, listener.tls_private_key_path
        if cert is None or key is None:
            continue
        where = f"listeners[{index}]"
        _require_file(cert, f"{where}.tls_certificate_path", source)
        _require_file(key, f"{where}.tls_private_key_path", source)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:  # an encrypted key gets an empty password: it fails instead of prompting
            context.load_cert_chain(cert, key, password=lambda: b"")
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"{where}.tls_certificate_path",
                f"cannot load the certificate with its key: {_one_line(exc)}",
                source,
            ) from exc
    bundle = config.federation.ca_bundle
    if bundle is not None:
        _require_file(bundle, "federation.ca_bundle", source)
        try:
            ssl.create_default_context(cafile=str(bundle))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                "federation.ca_bundle", f"not a PEM CA bundle: {_one_line(exc)}", source
            ) from exc
    if not config.signing_key_path.exists():
        return "absent: generated on first run"
    keys = signing_keys.read_signing_key_file(config.signing_key_path)
    return signing_keys.signing_key_id(keys[0])


def _require_file(path: Path, key: str, source: str | None) -> None:
    if not path.is_file():
        problem = "is not a file" if path.exists() else "no such file"
        raise ConfigError(key, f"{path}: {problem}", source)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def describe_config(config: Config) -> str:
    """A one-line summary for ``check-config`` and logs; database passwords masked."""
    listeners = ", ".join(
        f"{'+'.join(_host_port(a, listener.port) for a in listener.bind_addresses)}"
        f"{' TLS' if listener.tls_certificate_path else ''}"
        f" [{' '.join(sorted(listener.resources))}]"
        for listener in config.listeners
    )
    database = config.database
    if database.name == "sqlite3":
        where = f"sqlite3 {database.path} (synchronous={database.synchronous})"
    else:
        where = f"postgres {_redacted_dsn(database.dsn or '')}"
    admin = "admin API: token set" if config.admin_token else "admin API: no token (403)"
    router = f"; presence router: {config.presence_router.module}" if config.presence_router else ""
    return (
        f"server_name={config.server_name}; listeners: {listeners}; database: {where};"
        f" {admin}{router}"
    )


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _redacted_dsn(dsn: str) -> str:
    parts = urlsplit(dsn)
    if parts.scheme and parts.password is not None:
        user = parts.username or ""
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    if not parts.scheme:  # libpq key=value form
        return " ".join(
            "password=***" if item.startswith("password=") else item for item in dsn.split()
        )
    return dsn
