"""Fetching official weights: the real download path, exercised offline through file:// URLs
pointing at the official-format parity fixtures (no network in tests)."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import edgevision as ev
from edgevision.hub import WeightsUnavailableError, cached_path, fetch_weights

TOL = 2e-6


@pytest.fixture()
def official_pth(reference_dir, tmp_path):
    """emo_1m's official state dict as the official release ships it: a .pth named net.pth."""
    path = tmp_path / "release" / "net.pth"
    path.parent.mkdir()
    torch.save(load_file(str(reference_dir / "parity" / "emo_1m.safetensors")), path)
    return path


def _parity(model, reference_dir):
    io = load_file(str(reference_dir / "parity" / "emo_1m_io.safetensors"))
    with torch.no_grad():
        return (model.eval()(io["input"]) - io["logits"]).abs().max().item()


def test_fetch_downloads_once_then_loads_as_official(official_pth, reference_dir, tmp_path):
    cache = tmp_path / "cache"
    path = fetch_weights("emo_1m", url=official_pth.as_uri(), cache=cache, progress=False)
    assert path == cache / "emo_1m" / "net.pth" and path.read_bytes() == official_pth.read_bytes()
    official_pth.unlink()  # a second fetch is served from the cache, never downloaded again
    assert fetch_weights("emo_1m", url=official_pth.as_uri(), cache=cache) == path
    model = ev.create_model("emo_1m", checkpoint=str(path))
    assert model.checkpoint_format == "official"
    assert _parity(model, reference_dir) <= TOL


def test_pretrained_true_reads_the_cache(official_pth, reference_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEVISION_CACHE", str(tmp_path / "cache"))
    target = cached_path("emo_1m")  # the registered URL's file name under the cache
    assert target == tmp_path / "cache" / "emo_1m" / "net.pth"
    target.parent.mkdir(parents=True)
    target.write_bytes(official_pth.read_bytes())
    assert _parity(ev.create_model("emo_1m", pretrained=True), reference_dir) <= TOL
    import timm

    assert _parity(timm.create_model("emo_1m", pretrained=True), reference_dir) <= TOL
    with pytest.raises(ValueError, match="not both"):
        ev.create_model("emo_1m", pretrained=True, checkpoint=str(target))


def test_unavailable_weights_are_clear_errors(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="no downloadable official weights"):
        ev.create_model("efficientformer_l1", pretrained=True)
    with pytest.raises(WeightsUnavailableError, match="not a PyTorch or safetensors file"):
        fetch_weights("efficientnet_lite0", cache=tmp_path)
    missing = (tmp_path / "nowhere" / "net.pth").as_uri()
    with pytest.raises(WeightsUnavailableError, match="could not download"):
        fetch_weights("emo_1m", url=missing, cache=tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").rglob("*.pth"))  # nothing that looks cached


def test_every_registered_url_is_fetchable_or_refused_clearly():
    for name in ev.list_models():
        url = ev.model_info(name).weights_url
        try:
            path = cached_path(name)
        except WeightsUnavailableError:
            assert url is None or not url.endswith((".pth", ".pt", ".bin", ".safetensors"))
        else:
            assert url and path.name == url.rsplit("/", 1)[-1] and path.parent.name == name


@pytest.mark.slow
def test_fetch_cli_prints_the_cached_path(official_pth, tmp_path):
    cache = tmp_path / "cache"
    proc = subprocess.run([sys.executable, "-m", "edgevision", "fetch", "emo_1m", "--url",
                           official_pth.as_uri(), "--cache", str(cache)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(cache / "emo_1m" / "net.pth")
