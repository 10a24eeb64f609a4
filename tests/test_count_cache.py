"""The disk cache behind `edgevision list`: a hit skips counting, damage or new code recounts."""

import json

import pytest

from edgevision.cli import models as cli_models
from edgevision.profiling import count_cache


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEVISION_CACHE", str(tmp_path))
    monkeypatch.delenv("EDGEVISION_COUNT_CACHE", raising=False)
    return tmp_path / "counts.json"


def _no_build(name):
    raise AssertionError(f"{name} was rebuilt although its counts are cached")


def test_second_listing_reads_the_cache(cache, monkeypatch):
    first = cli_models.zoo_rows("mobilenetv2_050")
    assert cache.is_file()
    monkeypatch.setattr(cli_models, "_meta_model", _no_build)
    assert cli_models.zoo_rows("mobilenetv2_050") == first
    # another input size is another entry: counted, not served from the 224 entry
    monkeypatch.undo()
    monkeypatch.setenv("EDGEVISION_CACHE", str(cache.parent))
    small = cli_models.zoo_rows("mobilenetv2_050", size=96)
    assert small[0]["macs"] < first[0]["macs"] and small[0]["params"] == first[0]["params"]


@pytest.mark.parametrize("content", ["{broken", json.dumps({"fingerprint": "old-code", "entries": {
    "mobilenetv2_050|1x3x224x224": [1, 2]}})])
def test_damaged_or_stale_cache_is_recounted(cache, content):
    cache.write_text(content)
    row = cli_models.zoo_rows("mobilenetv2_050")[0]
    assert row["params"] > 1_000_000 and row["macs"] > 50_000_000  # counted, not the stale [1, 2]
    assert json.loads(cache.read_text())["fingerprint"] == count_cache.source_fingerprint()
