"""Fetching the official weights for users.

``create_model(name, pretrained=True)``, ``timm.create_model(name, pretrained=True)`` and
``edgevision fetch NAME`` download the registered ``weights_url`` once into a cache folder
(``$EDGEVISION_CACHE``, else ``~/.cache/edgevision``) as ``<cache>/<model>/<file name>`` and
then read it like any checkpoint: format detected from the keys, converted, strict load, with
``weights_only=True``. The download goes to a temporary file that is renamed when complete
(torch.hub's downloader), so an interrupted download never leaves a file that looks cached.
Nothing here runs in the tests or the demo against the network: the tests fetch the local
official-format fixtures through ``file://`` URLs.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from edgevision.checkpoints import CheckpointError
from edgevision.registry import model_info

LOADABLE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


class WeightsUnavailableError(CheckpointError):
    """No downloadable PyTorch weights are registered for the model, or the download failed."""


def cache_root() -> Path:
    return Path(os.environ.get("EDGEVISION_CACHE") or Path.home() / ".cache" / "edgevision")


def _url_for(name: str, url: str | None) -> str:
    url = url or model_info(name).weights_url
    if not url:
        raise WeightsUnavailableError(
            f"{name}: no downloadable official weights are registered; load a file with "
            f"checkpoint=PATH (ours, timm's, torchvision's or the official format)"
        )
    if not urlparse(url).path.endswith(LOADABLE_SUFFIXES):
        raise WeightsUnavailableError(
            f"{name}: the official weights ({url}) are not a PyTorch or safetensors file; "
            f"convert them and pass checkpoint=PATH (see `edgevision info {name}`)"
        )
    return url


def cached_path(name: str, url: str | None = None, cache: str | os.PathLike | None = None) -> Path:
    """Where the weights of ``name`` are (or would be) cached."""
    url = _url_for(name, url)
    return Path(cache or cache_root()) / name / Path(urlparse(url).path).name


def fetch_weights(name: str, url: str | None = None, cache: str | os.PathLike | None = None,
                  progress: bool = True) -> Path:
    """Path of the cached official weights of ``name``, downloading them the first time."""
    import torch.hub

    path = cached_path(name, url, cache)
    if path.is_file():
        return path
    url = _url_for(name, url)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(path), progress=progress)
    except (OSError, ValueError) as e:  # URLError/HTTPError are OSErrors
        raise WeightsUnavailableError(
            f"{name}: could not download {url} ({e}); download it yourself and pass checkpoint=PATH"
        ) from e
    return path
