"""The Synapse fixture itself: a Synapse that cannot be installed is an error, not a skip."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.interop import synapse_fixture
from tests.interop.synapse_fixture import SynapseUnavailable, ensure_synapse_install

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]


def test_an_uninstallable_synapse_raises_with_pips_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An empty cache and no package index: pip cannot find matrix-synapse.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    with pytest.raises(SynapseUnavailable, match=r"cannot install matrix-synapse==") as caught:
        ensure_synapse_install()
    assert "No matching distribution" in str(caught.value)
    # Nothing half-built is left where the next run would look for the venv.
    assert not synapse_fixture.synapse_cache_dir().exists()
    assert list(synapse_fixture.synapse_cache_dir().parent.iterdir()) == []


def test_prometheus_sum_adds_the_samples_whose_labels_match() -> None:
    text = (
        "# HELP x_total a counter\n"
        'x_total{type="m.presence",server_name="a"} 3.0\n'
        'x_total{type="m.typing",server_name="a"} 5.0\n'
        'x_total_created{type="m.presence",server_name="a"} 1.7e9\n'
        'x_total{type="m.presence",server_name="b"} 4.0\n'
    )
    assert synapse_fixture.prometheus_sum(text, "x_total", {"type": "m.presence"}) == 7.0
    assert synapse_fixture.prometheus_sum(text, "x_total", {}) == 12.0
