"""Our server's ed25519 signing key: its file and its published key response.

What this module owns:

* the signing-key file, in Synapse's format (one ``ed25519 <version>
  <unpadded base64 seed>`` line per key, as ``signedjson.key.write_signing_keys``
  writes it), so a homeserver's key file can be shared with this worker and
  ours can be handed to a homeserver;
* the body of ``GET /_matrix/key/v2/server`` (``build_server_keys_response``),
  self-signed with the Signing JSON procedure.

Invariants: a key file is written whole or not at all (temporary file, fsync,
rename) with mode 0600; first-run generation never overwrites a key another
process created meanwhile (the file is linked into place, which fails if it
exists). Every problem with the file is a ``ConfigError`` on
``signing_key_path`` naming the file. The seed comes from PyNaCl's CSPRNG,
never from the injected ``random.Random``, which only picks the version.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import os
import random
import secrets
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from signedjson.key import (
    decode_signing_key_base64,
    encode_verify_key_base64,
    get_verify_key,
    write_signing_keys,
)
from signedjson.key import generate_signing_key as _nacl_signing_key
from signedjson.sign import sign_json
from signedjson.types import SigningKey

from federation_presence.errors import ConfigError
from federation_presence.ids import KEY_VERSION_RE

__all__ = [
    "CONFIG_KEY",
    "SigningKey",
    "build_server_keys_response",
    "generate_signing_key",
    "load_or_generate_signing_key",
    "read_signing_key_file",
    "signing_key_id",
    "verify_key_base64",
    "write_signing_key_file",
]

CONFIG_KEY = "signing_key_path"
_VERSION_ALPHABET = string.ascii_letters + string.digits
_SEED_BYTES = 32


def signing_key_id(signing_key: SigningKey) -> str:
    """``ed25519:<version>``, the key ID of ``signing_key``."""
    return f"{signing_key.alg}:{signing_key.version}"


def verify_key_base64(signing_key: SigningKey) -> str:
    """The unpadded base64 public key of ``signing_key``."""
    return str(encode_verify_key_base64(get_verify_key(signing_key)))


def generate_signing_key(
    version: str | None = None, rng: random.Random | None = None
) -> SigningKey:
    """A fresh ed25519 key; its version defaults to ``a_`` + 4 random letters/digits.

    ``rng`` picks only the version (tests pass a seeded one); the key itself
    always comes from the operating system's CSPRNG.
    """
    if version is None:
        if rng is None:
            suffix = "".join(secrets.choice(_VERSION_ALPHABET) for _ in range(4))
        else:
            suffix = "".join(rng.choice(_VERSION_ALPHABET) for _ in range(4))
        version = "a_" + suffix
    if not KEY_VERSION_RE.fullmatch(version):
        raise ValueError(f"key version {version!r} must match [a-zA-Z0-9_]+")
    key: SigningKey = _nacl_signing_key(version)
    return key


def _problem(path: Path, problem: str) -> ConfigError:
    return ConfigError(key=CONFIG_KEY, problem=problem, source=str(path))


def _decode_seed(text: str) -> bytes:
    """Unpadded (or padded) standard base64, strictly: no stray characters."""
    stripped = text.rstrip("=")
    return base64.b64decode(stripped + "=" * (-len(stripped) % 4), validate=True)


def read_signing_key_file(path: Path | str) -> list[SigningKey]:
    """Every key in a Synapse-format signing-key file (blank lines skipped)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _problem(path, f"cannot read the signing key file: {exc}") from exc
    keys: list[SigningKey] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 3:
            raise _problem(path, f"line {number}: expected 'ed25519 <version> <base64 seed>'")
        algorithm, version, seed_base64 = fields
        if algorithm != "ed25519":
            raise _problem(path, f"line {number}: unsupported algorithm {algorithm!r}")
        if not KEY_VERSION_RE.fullmatch(version):
            raise _problem(path, f"line {number}: key version {version!r} is not [a-zA-Z0-9_]+")
        try:
            seed = _decode_seed(seed_base64)
        except (binascii.Error, ValueError) as exc:
            raise _problem(path, f"line {number}: the seed is not base64") from exc
        if len(seed) != _SEED_BYTES:
            raise _problem(path, f"line {number}: the seed is {len(seed)} bytes, not 32")
        keys.append(decode_signing_key_base64(algorithm, version, seed_base64))
    if not keys:
        raise _problem(path, "the signing key file holds no key")
    return keys


def _key_file_text(keys: Sequence[SigningKey]) -> str:
    buffer = io.StringIO()
    write_signing_keys(buffer, keys)
    return buffer.getvalue()


def _write_temporary(path: Path, text: str) -> Path:
    """A fsynced 0600 sibling of ``path`` holding ``text``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            fd = -1
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
    except BaseException:
        if fd >= 0:
            os.close(fd)
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_signing_key_file(path: Path | str, keys: Sequence[SigningKey]) -> None:
    """Write ``keys`` to ``path`` (replacing it) in Synapse's format, mode 0600."""
    path = Path(path)
    if not keys:
        raise ValueError("no key to write")
    try:
        temporary = _write_temporary(path, _key_file_text(keys))
        try:
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _fsync_directory(path.parent)
    except OSError as exc:
        raise _problem(path, f"cannot write the signing key file: {exc}") from exc


def load_or_generate_signing_key(path: Path | str, rng: random.Random | None = None) -> SigningKey:
    """The first key of ``path``; on first run a new key, written there first.

    If two processes start together, one key wins and both use it.
    """
    path = Path(path)
    if path.exists():
        return read_signing_key_file(path)[0]
    key = generate_signing_key(rng=rng)
    try:
        temporary = _write_temporary(path, _key_file_text([key]))
        try:
            os.link(temporary, path)  # fails if another process got there first
        except FileExistsError:
            pass
        finally:
            temporary.unlink(missing_ok=True)
        _fsync_directory(path.parent)
    except OSError as exc:
        raise _problem(path, f"cannot create the signing key file: {exc}") from exc
    return read_signing_key_file(path)[0]


def build_server_keys_response(
    server_name: str,
    signing_key: SigningKey,
    now: int,
    valid_for_ms: int,
    old_keys: Mapping[str, tuple[str, int]],
) -> dict[str, Any]:
    """The self-signed body of ``GET /_matrix/key/v2/server``.

    ``old_keys`` maps a retired key ID to (unpadded base64 public key,
    ``expired_ts``); such keys verify old events only, never requests.
    """
    response: dict[str, Any] = {
        "server_name": server_name,
        "valid_until_ts": now + valid_for_ms,
        "verify_keys": {signing_key_id(signing_key): {"key": verify_key_base64(signing_key)}},
        "old_verify_keys": {
            key_id: {"key": key, "expired_ts": expired_ts}
            for key_id, (key, expired_ts) in old_keys.items()
        },
    }
    signed: dict[str, Any] = sign_json(response, server_name, signing_key)
    return signed
