"""Our signing key: spec vectors, Synapse's key file format, the key response."""

from __future__ import annotations

import io
import json
import os
import random
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from signedjson.key import (
    decode_verify_key_bytes,
    encode_signing_key_base64,
    get_verify_key,
    write_signing_keys,
)
from signedjson.sign import verify_signed_json
from unpaddedbase64 import decode_base64, encode_base64

from federation_presence.errors import ConfigError
from federation_presence.federation.signing_keys import (
    build_server_keys_response,
    generate_signing_key,
    load_or_generate_signing_key,
    read_signing_key_file,
    signing_key_id,
    verify_key_base64,
    write_signing_key_file,
)
from federation_presence.federation.xmatrix import canonical_json_bytes

VECTORS = json.loads((Path(__file__).parents[2] / "vectors" / "signing.json").read_text("utf-8"))


@pytest.fixture
def vector_key_file(tmp_path: Path) -> Path:
    """The spec's test key, as a hand-written Synapse key file."""
    path = tmp_path / "vector.signing.key"
    path.write_text(f"ed25519 1 {VECTORS['signing_key_seed']}\n", encoding="utf-8")
    return path


@pytest.fixture
def no_umask() -> Iterator[None]:
    """A umask that lets everything through: the code must restrict the mode itself."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.parametrize("vector", VECTORS["json_signing"], ids=["empty", "one-two"])
def test_signing_reproduces_the_spec_test_vectors(
    vector_key_file: Path, vector: dict[str, Any]
) -> None:
    (key,) = read_signing_key_file(vector_key_file)
    assert signing_key_id(key) == VECTORS["key_id"]
    signature = key.sign(canonical_json_bytes(vector["input"])).signature
    assert encode_base64(signature) == vector["signature"]


def test_the_seeded_rng_picks_only_the_version_never_the_key() -> None:
    first = generate_signing_key(rng=random.Random(7))
    second = generate_signing_key(rng=random.Random(7))
    assert first.version == second.version
    assert first.version.startswith("a_")
    assert len(first.version) == 6
    assert first.version[2:].isalnum()
    assert encode_signing_key_base64(first) != encode_signing_key_base64(second)


def test_an_unseeded_key_gets_a_random_valid_version() -> None:
    key = generate_signing_key()
    assert key.alg == "ed25519"
    assert key.version.startswith("a_")
    assert key.version[2:].isalnum()


def test_a_version_outside_the_key_id_grammar_is_refused() -> None:
    with pytest.raises(ValueError, match="a-zA-Z0-9_"):
        generate_signing_key("a-b")


def test_written_file_is_synapse_format_with_mode_0600_in_a_new_directory(
    tmp_path: Path, no_umask: None
) -> None:
    keys = [generate_signing_key("a_1"), generate_signing_key("b_2")]
    path = tmp_path / "new" / "dir" / "signing.key"
    write_signing_key_file(path, keys)
    synapse = io.StringIO()
    write_signing_keys(synapse, keys)
    assert path.read_text("utf-8") == synapse.getvalue()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [f.name for f in path.parent.iterdir()] == ["signing.key"]  # no temporary left
    read = read_signing_key_file(path)
    assert [encode_signing_key_base64(k) for k in read] == [
        encode_signing_key_base64(k) for k in keys
    ]
    assert [k.version for k in read] == ["a_1", "b_2"]


def test_writing_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    write_signing_key_file(path, [generate_signing_key("old")])
    write_signing_key_file(path, [generate_signing_key("new")])
    assert [k.version for k in read_signing_key_file(path)] == ["new"]


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    path.write_text(f"\n  \ned25519 1 {VECTORS['signing_key_seed']}\n\n", encoding="utf-8")
    assert [k.version for k in read_signing_key_file(path)] == ["1"]


BAD_FILES = [
    pytest.param("", "holds no key", id="empty"),
    pytest.param("ed25519 1\n", "expected 'ed25519 <version> <base64 seed>'", id="two-fields"),
    pytest.param("ed25519 1 a b\n", "expected", id="four-fields"),
    pytest.param("rsa 1 AAAA\n", "unsupported algorithm", id="algorithm"),
    pytest.param("ed25519 a-b AAAA\n", "is not [a-zA-Z0-9_]+", id="version"),
    pytest.param("ed25519 1 !!!!\n", "not base64", id="not-base64"),
    pytest.param("ed25519 1 AAAA\n", "3 bytes, not 32", id="short-seed"),
    pytest.param(b"\xff\xfe\n", "cannot read", id="not-utf8"),
]


@pytest.mark.parametrize(("content", "problem"), BAD_FILES)
def test_a_bad_key_file_is_a_config_error_naming_the_file(
    tmp_path: Path, content: str | bytes, problem: str
) -> None:
    path = tmp_path / "signing.key"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        read_signing_key_file(path)
    assert caught.value.key == "signing_key_path"
    assert caught.value.source == str(path)
    assert problem in caught.value.problem


def test_a_missing_key_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        read_signing_key_file(tmp_path / "absent.key")


def test_an_unwritable_location_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="cannot write") as caught:
        write_signing_key_file(blocker / "signing.key", [generate_signing_key("a_1")])
    assert caught.value.key == "signing_key_path"


def test_first_run_generates_a_0600_key_and_the_second_reuses_it(
    tmp_path: Path, no_umask: None
) -> None:
    path = tmp_path / "keys" / "signing.key"
    first = load_or_generate_signing_key(path, rng=random.Random(1))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = load_or_generate_signing_key(path)
    assert signing_key_id(second) == signing_key_id(first)
    assert encode_signing_key_base64(second) == encode_signing_key_base64(first)
    assert [f.name for f in path.parent.iterdir()] == ["signing.key"]


def test_an_existing_key_file_is_used_not_overwritten(vector_key_file: Path) -> None:
    before = vector_key_file.read_bytes()
    key = load_or_generate_signing_key(vector_key_file)
    assert signing_key_id(key) == "ed25519:1"
    assert vector_key_file.read_bytes() == before


def test_the_key_response_is_self_signed_and_lists_current_and_old_keys(
    vector_key_file: Path,
) -> None:
    (key,) = read_signing_key_file(vector_key_file)
    old = generate_signing_key("old")
    response = build_server_keys_response(
        "domain",
        key,
        now=1_700_000_000_000,
        valid_for_ms=86_400_000,
        old_keys={"ed25519:old": (verify_key_base64(old), 1_600_000_000_000)},
    )
    assert response["server_name"] == "domain"
    assert response["valid_until_ts"] == 1_700_086_400_000
    assert response["verify_keys"] == {"ed25519:1": {"key": verify_key_base64(key)}}
    assert response["old_verify_keys"] == {
        "ed25519:old": {"key": verify_key_base64(old), "expired_ts": 1_600_000_000_000}
    }
    assert list(response["signatures"]) == ["domain"]
    assert list(response["signatures"]["domain"]) == ["ed25519:1"]
    published = decode_verify_key_bytes("ed25519:1", decode_base64(verify_key_base64(key)))
    verify_signed_json(response, "domain", published)
    assert encode_base64(bytes(get_verify_key(key))) == verify_key_base64(key)
