"""Tests of ``federation_presence.cli`` called in-process: the parser, exit
codes, the config summary (passwords masked) and the log line format.

The same commands as real subprocesses are in
``tests/integration/test_cli_commands.py``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from signedjson.key import read_signing_keys

from federation_presence import __version__
from federation_presence.cli import build_parser, describe_config, main
from federation_presence.config import Config, DatabaseConfig, ListenerConfig

COMMANDS = ("run", "check-config", "generate-key", "probe", "loadtest")


def test_help_lists_every_command() -> None:
    text = build_parser().format_help()
    for command in COMMANDS:
        assert command in text


def test_version_is_printed_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"federation-presence {__version__}\n"


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "required: COMMAND" in capsys.readouterr().err


def test_an_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve"]) == 2
    assert "invalid choice: 'serve'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["loadtest", "https://hs.test:8448"],
            "TARGET: 'https://hs.test:8448': load tests target loopback only (127.0.0.1, ::1)",
        ),
        (
            ["loadtest", "https://127.0.0.1"],
            "TARGET: 'https://127.0.0.1': give the port explicitly",
        ),
        (
            ["loadtest", "127.0.0.1:8448", "--shape", "1y50"],
            "--shape: '1y50': expected EDUSxPUSHES, 1-100 x 1-10000",
        ),
        (
            ["loadtest", "127.0.0.1:8448", "--mix", "online=2,asleep=1"],
            "--mix: unknown presence state 'asleep'",
        ),
        (
            ["probe", "example.org", "--send-presence", "@a:example.com"],
            "-c: --send-presence and --expect-presence need our config (-c FILE)",
        ),
    ],
)
def test_probe_and_loadtest_usage_mistakes_are_one_line_and_exit_2(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == line + "\n"


def test_check_config_prints_ok_and_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fp.yaml").write_text("server_name: example.org\n", encoding="utf-8")
    assert main(["check-config", "fp.yaml"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out == (
        "OK: server_name=example.org; listeners: 127.0.0.1:8448 [admin client federation ops];"
        " database: sqlite3 federation-presence.db (synchronous=full); admin API: no token (403);"
        " signing key: keys/signing.key (absent: generated on first run)\n"
    )


def test_check_config_error_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "fp.yaml"
    path.write_text("listeners:\n  - port: abc\n", encoding="utf-8")
    assert main(["check-config", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"{path}: listeners[0].port: must be an integer 1-65535, got 'abc'\n"


def test_generate_key_writes_a_key_signedjson_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "deep" / "signing.key"
    assert main(["generate-key", "-o", str(path)]) == 0
    with path.open(encoding="utf-8") as stream:
        (key,) = read_signing_keys(stream)
    assert f"wrote ed25519:{key.version} to {path}" in capsys.readouterr().out
    assert path.stat().st_mode & 0o777 == 0o600


def test_generate_key_refuses_to_replace_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "signing.key"
    path.write_text("precious\n", encoding="utf-8")
    assert main(["generate-key", "-o", str(path)]) == 2
    assert capsys.readouterr().err == f"{path}: already exists; pass --force to replace it\n"
    assert path.read_text(encoding="utf-8") == "precious\n"


def test_generate_key_force_replaces_even_an_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    path.write_text("not a key\n", encoding="utf-8")
    assert main(["generate-key", "-o", str(path), "--force"]) == 0
    assert path.read_text(encoding="utf-8").startswith("ed25519 a_")


def test_summary_masks_the_postgres_password() -> None:
    url = Config(database=DatabaseConfig(name="postgres", dsn="postgresql://fp:s3cr%40t@db:5432/p"))
    assert "database: postgres postgresql://fp:***@db:5432/p;" in describe_config(url)
    assert "s3cr" not in describe_config(url)
    libpq = Config(database=DatabaseConfig(name="postgres", dsn="host=db password=s3cret dbname=p"))
    assert "database: postgres host=db password=*** dbname=p;" in describe_config(libpq)


def test_summary_names_listeners_with_tls_and_ipv6() -> None:
    config = Config(
        listeners=(
            ListenerConfig(
                port=8443,
                bind_addresses=("::1", "127.0.0.1"),
                tls_certificate_path=Path("c.pem"),
                tls_private_key_path=Path("k.pem"),
                resources=frozenset({"federation"}),
            ),
        ),
        admin_token="t",
    )
    summary = describe_config(config)
    assert "listeners: [::1]:8443+127.0.0.1:8443 TLS [federation];" in summary
    assert "admin API: token set" in summary


def test_log_lines_carry_timestamp_level_and_logger_name() -> None:
    script = (
        "import logging\n"
        "from federation_presence.cli import configure_logging\n"
        "configure_logging('debug')\n"
        "logging.getLogger('federation_presence.test').debug('hello %s', 'there')\n"
        "configure_logging('warning')\n"
        "logging.getLogger('federation_presence.test').info('hidden')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} DEBUG federation_presence\.test: hello there\n",
        result.stderr,
    )


def test_check_config_imports_the_presence_router_and_parses_its_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    module = "tests.interop.synapse_modules.interop_presence_router.InteropPresenceRouter"
    (tmp_path / "fp.yaml").write_text(
        f"server_name: example.org\npresence_router:\n  module: {module}\n", encoding="utf-8"
    )
    assert main(["check-config", "fp.yaml"]) == 0
    out = capsys.readouterr().out
    assert out.endswith(f"; presence router: {module} (imported, config parsed)\n")


@pytest.mark.parametrize(
    ("module", "problem"),
    [
        ("no_such_package.Router", "presence_router.module: cannot import 'no_such_package'"),
        ("json.NoSuchRouter", "presence_router.module: 'json' has no class 'NoSuchRouter'"),
        ("json.JSONDecoder", "presence_router.module: json.JSONDecoder has no method parse_config"),
    ],
)
def test_check_config_names_the_file_and_key_of_a_router_that_does_not_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], module: str, problem: str
) -> None:
    path = tmp_path / "fp.yaml"
    path.write_text(f"presence_router:\n  module: {module}\n", encoding="utf-8")
    assert main(["check-config", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"{path}: {problem}")
    assert captured.err.count("\n") == 1
