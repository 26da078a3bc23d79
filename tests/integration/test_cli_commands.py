"""The ``federation-presence`` commands as an operator runs them: real
subprocesses (``python -m federation_presence``), real files, real TLS
certificates (trustme, and the openssl one-liner of ``deploy/dev-tls.md``).

What must hold: ``check-config`` says ``OK: ...`` or exactly one error line on
stderr with exit 2, never a traceback; ``generate-key`` writes Synapse's format
and never replaces a key without ``--force``; ``run`` reads the config before
importing the worker and hands the loaded ``Config`` to ``worker.run``.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
from signedjson.key import read_signing_keys

from tests.integration.checkout import checkout_env

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "federation-presence.example.yaml"
DEV_TLS = Path(__file__).resolve().parents[2] / "deploy" / "dev-tls.md"
KEY_LINE = re.compile(r"ed25519 (a_[A-Za-z0-9]{4}) ([A-Za-z0-9+/]{43})\n")


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "federation_presence", *args],
        env=checkout_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _python(cwd: Path, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script],
        env=checkout_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _assert_one_error_line(result: subprocess.CompletedProcess[str], line: str) -> None:
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr == line + "\n"


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(certificate chain, private key, CA certificate) from a trustme CA."""
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    keys = tmp_path / "keys"
    keys.mkdir()
    cert, key, ca_pem = keys / "server.pem", keys / "server.key", keys / "ca.pem"
    issued.private_key_and_cert_chain_pem.write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_pem))
    return cert, key, ca_pem


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- check-config ---------------------------------------------------------------


def test_check_config_ok_prints_a_summary_and_exits_0(tmp_path: Path) -> None:
    _write(
        tmp_path / "fp.yaml",
        "server_name: example.org\n"
        "database:\n  name: postgres\n  args: {user: fp, password: hunter2, database: p}\n",
    )
    result = _cli(tmp_path, "check-config", "fp.yaml")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("OK: server_name=example.org; ")
    assert "postgresql://fp:***@/p" in result.stdout
    assert "hunter2" not in result.stdout
    assert result.stdout.count("\n") == 1


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("listeners:\n  - port: abc\n", "listeners[0].port: must be an integer 1-65535, got 'abc'"),
        (
            "server_name: example.org\nlistners: []\n",
            "listners: unknown key; did you mean 'listeners'?",
        ),
        (
            "presence:\n  idle_timeout: soon\n",
            "presence.idle_timeout: must be a duration: integer milliseconds or a number with a"
            " unit ms, s, m, h, d or w (e.g. '30s'), got 'soon'",
        ),
        (
            "server_name: [\n",
            "line 2, column 1: YAML syntax error: expected the node content, "
            "but found '<stream end>'",
        ),
        ("a: 1\na: 2\n", "line 2, column 1: duplicate key 'a'"),
        ("- 1\n", "(top level): must be a mapping, got a list"),
        (
            "listeners:\n  - tls_certificate_path: c.pem\n",
            "listeners[0].tls_private_key_path: required when tls_certificate_path is set "
            "(TLS needs both)",
        ),
    ],
)
def test_check_config_broken_file_is_one_line_on_stderr_and_exit_2(
    tmp_path: Path, text: str, line: str
) -> None:
    _write(tmp_path / "fp.yaml", text)
    _assert_one_error_line(_cli(tmp_path, "check-config", "fp.yaml"), f"fp.yaml: {line}")


def test_check_config_missing_file_is_one_line(tmp_path: Path) -> None:
    _assert_one_error_line(
        _cli(tmp_path, "check-config", "nope.yaml"), "nope.yaml: (file): no such file"
    )


def test_check_config_loads_the_tls_certificate_with_its_key(
    tmp_path: Path, tls_files: tuple[Path, Path, Path]
) -> None:
    _write(
        tmp_path / "fp.yaml",
        "listeners:\n  - tls_certificate_path: keys/server.pem\n"
        "    tls_private_key_path: keys/server.key\n"
        "federation:\n  ca_bundle: keys/ca.pem\n",
    )
    result = _cli(tmp_path, "check-config", "fp.yaml")
    assert (result.returncode, result.stderr) == (0, "")
    assert "127.0.0.1:8448 TLS [admin client federation ops]" in result.stdout


def test_check_config_names_a_missing_certificate(tmp_path: Path) -> None:
    _write(
        tmp_path / "fp.yaml",
        "listeners:\n  - tls_certificate_path: keys/gone.pem\n"
        "    tls_private_key_path: keys/gone.key\n",
    )
    _assert_one_error_line(
        _cli(tmp_path, "check-config", "fp.yaml"),
        "fp.yaml: listeners[0].tls_certificate_path: keys/gone.pem: no such file",
    )


def test_check_config_refuses_a_key_that_is_not_the_certificates(
    tmp_path: Path, tls_files: tuple[Path, Path, Path]
) -> None:
    other = trustme.CA().issue_cert("localhost")
    other.private_key_pem.write_to_path(str(tmp_path / "keys" / "other.key"))
    _write(
        tmp_path / "fp.yaml",
        "listeners:\n  - tls_certificate_path: keys/server.pem\n"
        "    tls_private_key_path: keys/other.key\n",
    )
    result = _cli(tmp_path, "check-config", "fp.yaml")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(
        "fp.yaml: listeners[0].tls_certificate_path: cannot load the certificate with its key: "
    )
    assert result.stderr.count("\n") == 1


def test_check_config_refuses_a_ca_bundle_that_is_not_pem(tmp_path: Path) -> None:
    _write(tmp_path / "ca.pem", "not a certificate\n")
    _write(tmp_path / "fp.yaml", "federation:\n  ca_bundle: ca.pem\n")
    result = _cli(tmp_path, "check-config", "fp.yaml")
    assert result.returncode == 2
    assert result.stderr.startswith("fp.yaml: federation.ca_bundle: not a PEM CA bundle: ")
    assert result.stderr.count("\n") == 1


def test_check_config_reads_an_existing_signing_key(tmp_path: Path) -> None:
    assert _cli(tmp_path, "generate-key", "-o", "k/signing.key").returncode == 0
    (version,) = KEY_LINE.findall((tmp_path / "k" / "signing.key").read_text())[0][:1]
    _write(tmp_path / "fp.yaml", "signing_key_path: k/signing.key\n")
    result = _cli(tmp_path, "check-config", "fp.yaml")
    assert result.returncode == 0
    assert result.stdout.endswith(f"signing key: k/signing.key (ed25519:{version})\n")


def test_check_config_refuses_a_corrupt_signing_key(tmp_path: Path) -> None:
    _write(tmp_path / "bad.key", "ed25519 a_1 notbase64!\n")
    _write(tmp_path / "fp.yaml", "signing_key_path: bad.key\n")
    _assert_one_error_line(
        _cli(tmp_path, "check-config", "fp.yaml"),
        "bad.key: signing_key_path: line 1: the seed is not base64",
    )


def test_the_example_config_checks_ok_once_its_files_exist(
    tmp_path: Path, tls_files: tuple[Path, Path, Path]
) -> None:
    cert, key, ca_pem = tls_files
    shutil.copy(cert, tmp_path / "keys" / "dev-cert.pem")
    shutil.copy(key, tmp_path / "keys" / "dev-key.pem")
    shutil.copy(ca_pem, tmp_path / "keys" / "test-network-ca.pem")
    shutil.copy(EXAMPLE, tmp_path / "federation-presence.yaml")
    result = _cli(tmp_path, "check-config", "federation-presence.yaml")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("OK: server_name=example.org; ")


def test_the_dev_tls_openssl_one_liner_gives_a_certificate_check_config_accepts(
    tmp_path: Path,
) -> None:
    assert shutil.which("openssl"), "openssl is needed (deploy/dev-tls.md uses it)"
    line = next(
        text for text in DEV_TLS.read_text().splitlines() if text.startswith("mkdir -p keys &&")
    )
    subprocess.run(line, shell=True, cwd=tmp_path, check=True, capture_output=True, timeout=60)
    _write(
        tmp_path / "fp.yaml",
        "listeners:\n  - tls_certificate_path: keys/dev-cert.pem\n"
        "    tls_private_key_path: keys/dev-key.pem\n"
        "federation:\n  ca_bundle: keys/dev-cert.pem\n",
    )
    result = _cli(tmp_path, "check-config", "fp.yaml")
    assert (result.returncode, result.stderr) == (0, "")


def test_check_config_imports_neither_uvicorn_nor_the_worker(tmp_path: Path) -> None:
    _write(tmp_path / "fp.yaml", "server_name: example.org\n")
    result = _python(
        tmp_path,
        "import sys\n"
        "from federation_presence.cli import main\n"
        "code = main(['check-config', 'fp.yaml'])\n"
        "print(code, 'uvicorn' in sys.modules, 'federation_presence.worker' in sys.modules)\n",
    )
    assert result.stdout.splitlines()[-1] == "0 False False"


# --- generate-key -------------------------------------------------------------


def test_generate_key_writes_synapses_format_that_signedjson_reads(tmp_path: Path) -> None:
    result = _cli(tmp_path, "generate-key")
    assert (result.returncode, result.stderr) == (0, "")
    path = tmp_path / "keys" / "signing.key"
    text = path.read_text(encoding="utf-8")
    match = KEY_LINE.fullmatch(text)
    assert match is not None, text
    with path.open(encoding="utf-8") as stream:
        (key,) = read_signing_keys(stream)
    assert (key.alg, key.version) == ("ed25519", match[1])
    assert path.stat().st_mode & 0o777 == 0o600
    assert result.stdout.startswith(f"wrote ed25519:{match[1]} to keys/signing.key ")


def test_generate_key_refuses_to_overwrite_and_leaves_the_key(tmp_path: Path) -> None:
    assert _cli(tmp_path, "generate-key", "-o", "signing.key").returncode == 0
    before = (tmp_path / "signing.key").read_text()
    _assert_one_error_line(
        _cli(tmp_path, "generate-key", "-o", "signing.key"),
        "signing.key: already exists; pass --force to replace it",
    )
    assert (tmp_path / "signing.key").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["signing.key"]  # no stray temporary


def test_generate_key_force_replaces_and_says_how_to_keep_the_old_key(tmp_path: Path) -> None:
    assert _cli(tmp_path, "generate-key", "-o", "signing.key").returncode == 0
    with (tmp_path / "signing.key").open() as stream:
        (old,) = read_signing_keys(stream)
    result = _cli(tmp_path, "generate-key", "-o", "signing.key", "--force")
    assert result.returncode == 0
    with (tmp_path / "signing.key").open() as stream:
        (new,) = read_signing_keys(stream)
    assert new.encode() != old.encode()
    snippet = result.stdout.split("add to the config:\n", 1)[1]
    _write(tmp_path / "fp.yaml", "signing_key_path: signing.key\n" + snippet)
    check = _cli(tmp_path, "check-config", "fp.yaml")
    assert (check.returncode, check.stderr) == (0, "")
    assert f"ed25519:{old.version}" in snippet


# --- run ----------------------------------------------------------------------

_FAKE_WORKER = (
    "import sys, types\n"
    "import federation_presence\n"
    "fake = types.ModuleType('federation_presence.worker')\n"
    "def run(config):\n"
    "    print('worker.run', config.server_name, config.listeners[0].port, config.log_level)\n"
    "    return 7\n"
    "fake.run = run\n"
    "sys.modules['federation_presence.worker'] = fake\n"
    "federation_presence.worker = fake\n"
    "from federation_presence.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def test_run_hands_the_loaded_config_to_the_worker_and_returns_its_code(tmp_path: Path) -> None:
    _write(tmp_path / "fp.yaml", "server_name: hs.test\nlisteners: [{port: 8009}]\n")
    result = subprocess.run(
        [sys.executable, "-c", _FAKE_WORKER, "run", "-c", "fp.yaml"],
        env=checkout_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 7
    assert result.stdout == "worker.run hs.test 8009 info\n"


def test_run_without_a_config_uses_the_embedded_defaults(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _FAKE_WORKER, "run"],
        env=checkout_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 7
    assert result.stdout == "worker.run localhost:8448 8448 info\n"
    assert "INFO federation_presence.cli: no --config given: embedded defaults" in result.stderr


def test_run_with_a_broken_config_stops_before_importing_the_worker(tmp_path: Path) -> None:
    _write(tmp_path / "fp.yaml", "log_level: loud\n")
    result = _python(
        tmp_path,
        "import sys\n"
        "from federation_presence.cli import main\n"
        "code = main(['run', '-c', 'fp.yaml'])\n"
        "print(code, 'federation_presence.worker' in sys.modules, 'uvicorn' in sys.modules)\n",
    )
    assert result.stdout == "2 False False\n"
    assert result.stderr == (
        "fp.yaml: log_level: must be one of debug, info, warning, error, critical, got 'loud'\n"
    )


# --- the rest -----------------------------------------------------------------


def test_help_and_version(tmp_path: Path) -> None:
    help_text = _cli(tmp_path, "--help")
    assert help_text.returncode == 0
    for command in ("run", "check-config", "generate-key", "probe", "loadtest"):
        assert command in help_text.stdout
    version = _cli(tmp_path, "--version")
    assert (version.returncode, version.stdout) == (0, "federation-presence 0.1.0\n")


@pytest.mark.parametrize("argv", [("probe", "example.org"), ("loadtest", "example.org")])
def test_probe_and_loadtest_are_honest_placeholders(tmp_path: Path, argv: tuple[str, str]) -> None:
    result = _cli(tmp_path, *argv)
    assert result.returncode == 2
    assert f"federation-presence {argv[0]}: not implemented yet" in result.stderr
    assert "Traceback" not in result.stderr


# --- run: the same checks as check-config, one line ------------------------------


def test_run_with_a_missing_tls_file_says_what_check_config_says(tmp_path: Path) -> None:
    _write(
        tmp_path / "fp.yaml",
        "listeners:\n  - port: 18448\n    tls_certificate_path: keys/absent.pem\n"
        "    tls_private_key_path: keys/absent.key\n",
    )
    line = "fp.yaml: listeners[0].tls_certificate_path: keys/absent.pem: no such file"
    _assert_one_error_line(_cli(tmp_path, "check-config", "fp.yaml"), line)
    _assert_one_error_line(_cli(tmp_path, "run", "-c", "fp.yaml"), line)
    assert not (tmp_path / "federation-presence.db").exists()  # stopped before starting


def test_run_on_a_port_in_use_is_one_line_naming_the_listener_and_exit_2(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as free:
        free_port = free.getsockname()[1]
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        _write(
            tmp_path / "fp.yaml",
            f"listeners:\n  - port: {free_port}\n  - port: {port}\n",
        )
        assert _cli(tmp_path, "generate-key").returncode == 0  # so `run` logs nothing else
        result = _cli(tmp_path, "run", "-c", "fp.yaml")
    _assert_one_error_line(
        result,
        f"fp.yaml: listeners[1].port: cannot listen on 127.0.0.1:{port}: Address already in use",
    )
