"""Fixtures of the interop suite: a real Synapse and a real worker federating over TLS.

``synapse_install`` (session) makes or reuses the cached Synapse venv and
prints its version in the test output. It never skips: a Synapse that cannot
be installed fails every interop test with pip's own words.

Each test gets a test CA (``certificates``) whose certificate for
``localhost`` both servers present and both trust, and chooses the ports of
its servers up front (each must know the other's name before either starts).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.tls_peer import TlsCertificates
from tests.interop.synapse_fixture import (
    SYNAPSE_VERSION,
    SynapseInstall,
    SynapseUnavailable,
    ensure_synapse_install,
    synapse_cache_dir,
)

_used: list[SynapseInstall] = []


def pytest_report_header() -> str:
    return f"interop: matrix-synapse=={SYNAPSE_VERSION} (venv cached in {synapse_cache_dir()})"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for install in _used:
        terminalreporter.write_line(
            f"interop: ran against Synapse {install.version} ({install.python})"
        )


@pytest.fixture(scope="session")
def synapse_install() -> SynapseInstall:
    try:
        install = ensure_synapse_install()
    except SynapseUnavailable as exc:
        pytest.fail(f"the interop suite needs Synapse and could not get it: {exc}", pytrace=False)
    _used.append(install)  # printed in the terminal summary (output is captured here)
    return install


@pytest.fixture
def certificates(tmp_path: Path) -> TlsCertificates:
    return TlsCertificates.issue(tmp_path)
