"""Fetching official weights: the real download path, exercised offline through file:// URLs
pointing at the official-format parity fixtures (no network in tests).

Covers the hub's contract: SHA-256 verified downloads (registered or given), https/file only,
a cache key that includes the URL, corrupt cached files detected and fetched again, a wrong
download refused and not cached, ``force`` and the ``fetch`` command."""

import hashlib
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import edgevision as ev
from edgevision.cli import main as cli_main
from edgevision.hub import (
    WeightsHashError,
    WeightsUnavailableError,
    cached_path,
    fetch_weights,
)

TOL = 2e-6


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def url_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:12]


def files_under(folder):
    """Every file, hidden temporaries included."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) \
        if folder.exists() else []


@pytest.fixture()
def official_pth(reference_dir, tmp_path):
    """emo_1m's official state dict as the official release ships it: a .pth named net.pth."""
    path = tmp_path / "release" / "net.pth"
    path.parent.mkdir()
    torch.save(load_file(str(reference_dir / "parity" / "emo_1m.safetensors")), path)
    return path


@pytest.fixture()
def registered(monkeypatch, official_pth):
    """emo_1m registered with the fixture's file:// URL and its true SHA-256."""
    info = ev.model_info("emo_1m")
    monkeypatch.setattr(info, "weights_url", official_pth.as_uri())
    monkeypatch.setattr(info, "weights_sha256", sha256(official_pth), raising=False)
    return info


def _parity(model, reference_dir):
    io = load_file(str(reference_dir / "parity" / "emo_1m_io.safetensors"))
    with torch.no_grad():
        return (model.eval()(io["input"]) - io["logits"]).abs().max().item()


def test_fetch_downloads_once_verified_then_loads_as_official(official_pth, reference_dir, tmp_path):
    cache = tmp_path / "cache"
    url = official_pth.as_uri()
    path = fetch_weights("emo_1m", url=url, cache=cache, progress=False, sha256=sha256(official_pth))
    assert path == cache / "emo_1m" / f"{url_key(url)}-net.pth"
    assert path.read_bytes() == official_pth.read_bytes()
    assert files_under(cache) == [f"emo_1m/{path.name}"]  # no temporary file left
    official_pth.unlink()  # a second fetch is served from the cache, never downloaded again
    assert fetch_weights("emo_1m", url=url, cache=cache, sha256=sha256(path)) == path
    model = ev.create_model("emo_1m", checkpoint=str(path))
    assert model.checkpoint_format == "official"
    assert _parity(model, reference_dir) <= TOL


def test_registered_hash_is_checked(registered, official_pth, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    path = fetch_weights("emo_1m", cache=cache, progress=False)  # registered URL and hash
    assert sha256(path) == registered.weights_sha256
    # The registered file changed upstream: its hash no longer matches, so the cached copy is
    # rejected, the new download is refused, and nothing is left in the cache.
    monkeypatch.setattr(registered, "weights_sha256", "ab" * 32)
    with pytest.raises(WeightsHashError, match=r"refusing emo_1m's official weights .* SHA-256 is "
                       + sha256(official_pth) + ", expected " + "ab" * 32 + r"; the file was not cached"):
        fetch_weights("emo_1m", cache=cache, progress=False)
    assert files_under(cache) == []


def test_wrong_hash_download_is_refused_and_not_cached(official_pth, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(WeightsHashError) as info:
        fetch_weights("emo_1m", url=official_pth.as_uri(), cache=cache, progress=False, sha256="0" * 64)
    msg = str(info.value)
    assert "\n" not in msg and "the weights at file://" in msg and "official" not in msg
    assert f"SHA-256 is {sha256(official_pth)}, expected {'0' * 64}" in msg
    assert files_under(cache) == []  # neither the file nor a temporary one
    with pytest.raises(ValueError, match="sha256 must be 64 hexadecimal digits"):
        fetch_weights("emo_1m", url=official_pth.as_uri(), cache=cache, sha256="abc")


# A flipped byte inside a tensor still reads as weights: only a known hash can detect it.
@pytest.mark.parametrize("known_hash,damage", [(True, "truncate"), (True, "flip"), (True, "empty"),
                                               (False, "truncate"), (False, "empty")])
def test_corrupted_cache_is_detected_deleted_and_fetched_again(official_pth, tmp_path, capsys,
                                                               known_hash, damage):
    cache = tmp_path / "cache"
    url = official_pth.as_uri()
    good = official_pth.read_bytes()
    digest = sha256(official_pth) if known_hash else None
    path = fetch_weights("emo_1m", url=url, cache=cache, progress=False, sha256=digest)
    data = bytearray(good)
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    capsys.readouterr()
    assert fetch_weights("emo_1m", url=url, cache=cache, progress=True, sha256=digest) == path
    assert path.read_bytes() == good
    err = capsys.readouterr().err
    assert f"cached {path} is corrupt" in err and "fetching again" in err
    assert files_under(cache) == [f"emo_1m/{path.name}"]


def test_cache_key_includes_the_url(official_pth, tmp_path):
    """Two URLs ending in the same file name are two cache entries, never each other's file."""
    other = tmp_path / "mirror" / "net.pth"
    other.parent.mkdir()
    sd = torch.load(official_pth, weights_only=True)
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}, other)
    cache = tmp_path / "cache"
    a = fetch_weights("emo_1m", url=official_pth.as_uri(), cache=cache, progress=False)
    b = fetch_weights("emo_1m", url=other.as_uri(), cache=cache, progress=False)
    assert a != b and a.name.endswith("-net.pth") and b.name.endswith("-net.pth")
    assert a.read_bytes() == official_pth.read_bytes() and b.read_bytes() == other.read_bytes()


def test_force_downloads_again(official_pth, tmp_path):
    cache = tmp_path / "cache"
    url = official_pth.as_uri()
    path = fetch_weights("emo_1m", url=url, cache=cache, progress=False)
    old = path.read_bytes()
    sd = torch.load(official_pth, weights_only=True)
    torch.save({k: v * 2 if v.is_floating_point() else v for k, v in sd.items()}, official_pth)
    assert fetch_weights("emo_1m", url=url, cache=cache, progress=False).read_bytes() == old
    assert fetch_weights("emo_1m", url=url, cache=cache, progress=False, force=True) == path
    assert path.read_bytes() == official_pth.read_bytes() != old


def test_not_weights_download_is_refused_when_no_hash_is_known(tmp_path):
    junk = tmp_path / "srv" / "net.pth"
    junk.parent.mkdir()
    junk.write_bytes(b"<html>404 not found</html>")
    cache = tmp_path / "cache"
    with pytest.raises(WeightsUnavailableError, match=r"the weights at file://.* do not read as weights; not cached"):
        fetch_weights("emo_1m", url=junk.as_uri(), cache=cache, progress=False)
    assert files_under(cache) == []


def test_plain_http_and_other_schemes_are_refused(tmp_path):
    with pytest.raises(WeightsUnavailableError, match=r"refusing to download http://example.com/net.pth: "
                       r"the URL is not https \(plain http is not protected in transit\)"):
        fetch_weights("emo_1m", url="http://example.com/net.pth", cache=tmp_path)
    with pytest.raises(WeightsUnavailableError, match="the ftp scheme is not supported"):
        fetch_weights("emo_1m", url="ftp://example.com/net.pth", cache=tmp_path)
    assert files_under(tmp_path) == []


def test_registered_plain_http_url_is_refused_clearly(tmp_path, monkeypatch):
    """NASNet-A Mobile's only published PyTorch weights are served over plain http."""
    url = ev.model_info("nasnet_a_mobile").weights_url
    if not (url or "").startswith("http://"):
        pytest.skip(f"nasnet_a_mobile's registered URL is no longer plain http ({url})")
    with pytest.raises(WeightsUnavailableError) as info:
        fetch_weights("nasnet_a_mobile", cache=tmp_path)
    msg = str(info.value)
    assert "\n" not in msg
    assert "nasnet_a_mobile's registered weights URL is not https (plain http" in msg
    assert "pass checkpoint=PATH" in msg


def test_pretrained_true_reads_the_cache(registered, official_pth, reference_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEVISION_CACHE", str(tmp_path / "cache"))
    target = cached_path("emo_1m")  # the registered URL's key and file name under the cache
    assert target == tmp_path / "cache" / "emo_1m" / f"{url_key(official_pth.as_uri())}-net.pth"
    target.parent.mkdir(parents=True)
    target.write_bytes(official_pth.read_bytes())
    official_pth.unlink()  # must be served from the cache
    assert _parity(ev.create_model("emo_1m", pretrained=True), reference_dir) <= TOL
    import timm

    assert _parity(timm.create_model("emo_1m", pretrained=True), reference_dir) <= TOL
    with pytest.raises(ValueError, match="not both"):
        ev.create_model("emo_1m", pretrained=True, checkpoint=str(target))


def test_unavailable_weights_are_clear_errors(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="no downloadable official weights"):
        ev.create_model("efficientformer_l1", pretrained=True)
    with pytest.raises(WeightsUnavailableError, match="official weights .* are not a PyTorch or safetensors file"):
        fetch_weights("efficientnet_lite0", cache=tmp_path)
    # A URL the user gives is never called "the official weights".
    with pytest.raises(WeightsUnavailableError, match=r"^emo_1m: the weights at file:///x/w.tar.gz are not"):
        fetch_weights("emo_1m", url="file:///x/w.tar.gz", cache=tmp_path)
    missing = (tmp_path / "nowhere" / "net.pth").as_uri()
    with pytest.raises(WeightsUnavailableError, match="could not download .*; download it yourself"):
        fetch_weights("emo_1m", url=missing, cache=tmp_path / "cache", progress=False)
    assert files_under(tmp_path / "cache") == []  # nothing that looks cached


def test_every_registered_url_is_fetchable_or_refused_clearly():
    for name in ev.list_models():
        url = ev.model_info(name).weights_url
        try:
            path = cached_path(name)
        except WeightsUnavailableError as e:
            assert url is None or url.startswith("http://") \
                or not url.endswith((".pth", ".pt", ".bin", ".safetensors")), (name, str(e))
        else:
            assert url.startswith("https://"), name
            assert path.name == f"{url_key(url)}-{url.rsplit('/', 1)[-1]}" and path.parent.name == name


def test_fetch_cli(official_pth, tmp_path, capsys):
    cache = tmp_path / "cache"
    url = official_pth.as_uri()
    digest = sha256(official_pth)
    assert cli_main(["fetch", "emo_1m", "--url", url, "--cache", str(cache), "--sha256", digest]) == 0
    out, err = capsys.readouterr()
    path = cache / "emo_1m" / f"{url_key(url)}-net.pth"
    assert out.strip() == str(path)
    assert f"{url} is not emo_1m's registered official weights URL; SHA-256 verified" in err
    path.write_bytes(b"stale")  # --force replaces whatever is cached
    assert cli_main(["fetch", "emo_1m", "--url", url, "--cache", str(cache), "--force"]) == 0
    out, err = capsys.readouterr()
    assert path.read_bytes() == official_pth.read_bytes()
    assert "not hash-verified (give --sha256 to check it)" in err
    # A wrong hash: one line, non-zero exit, nothing cached.
    assert cli_main(["fetch", "emo_1m", "--url", url, "--cache", str(tmp_path / "c2"),
                     "--sha256", "1" * 64]) == 2
    out, err = capsys.readouterr()
    errors = [ln for ln in err.splitlines() if "error" in ln]  # beside the progress bar and notes
    assert out == "" and len(errors) == 1 and errors[0].startswith("edgevision fetch: error: emo_1m: refusing")
    assert files_under(tmp_path / "c2") == []
    assert cli_main(["fetch", "emo_1m", "--url", "http://example.com/net.pth", "--cache", str(cache)]) == 2
    assert "is not https" in capsys.readouterr().err


@pytest.mark.slow
def test_fetch_cli_prints_the_cached_path(official_pth, tmp_path):
    cache = tmp_path / "cache"
    url = official_pth.as_uri()
    proc = subprocess.run([sys.executable, "-m", "edgevision", "fetch", "emo_1m", "--url",
                           url, "--cache", str(cache)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(cache / "emo_1m" / f"{url_key(url)}-net.pth")
