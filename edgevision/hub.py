"""Fetching the official weights for users, verified.

``create_model(name, pretrained=True)``, ``timm.create_model(name, pretrained=True)`` and
``edgevision fetch NAME`` download the registered ``weights_url`` once into a cache folder
(``$EDGEVISION_CACHE``, else ``~/.cache/edgevision``) and then read it like any checkpoint:
format detected from the keys, converted, strict load, with ``weights_only=True``.

- **Integrity.** When a SHA-256 is known (registered with the model as ``weights_sha256``,
  or given with ``sha256=``), a download whose hash differs is refused and never cached, and
  a cached file is checked again on every fetch; a mismatching one is deleted and fetched
  again. Without a known hash a cached file that no longer reads as weights is deleted and
  fetched again.
- **Transport.** Only ``https://`` (and ``file://``, for local mirrors and the tests); plain
  ``http://`` is refused, since nothing would protect an unhashed download in transit.
- **Cache key.** ``<cache>/<model>/<sha256(url)[:12]>-<file name>``: another URL with the
  same file name never returns the old file.
- **Atomic.** The download goes to a temporary file beside the destination, renamed only
  when complete and verified (:mod:`edgevision.io`): an interrupted or refused download
  never leaves a file that looks cached, and a full disk is one clear line.

Nothing here runs in the tests or the demo against the network: the tests fetch the local
official-format fixtures through ``file://`` URLs.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

from edgevision.checkpoints import CheckpointError
from edgevision.registry import model_info

LOADABLE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
_SCHEMES = ("https", "file")
_CHUNK = 1 << 20


class WeightsUnavailableError(CheckpointError):
    """No downloadable PyTorch weights are registered for the model, or the download failed."""


class WeightsHashError(WeightsUnavailableError):
    """The downloaded file's SHA-256 differs from the expected one; nothing was cached."""


def cache_root() -> Path:
    return Path(os.environ.get("EDGEVISION_CACHE") or Path.home() / ".cache" / "edgevision")


def registered_sha256(name: str) -> str | None:
    """The SHA-256 registered for ``name``'s official weights (None when none is known)."""
    return getattr(model_info(name), "weights_sha256", None) or None


def _is_registered(name: str, url: str | None) -> bool:
    return url is None or url == model_info(name).weights_url


def _describe(name: str, url: str) -> str:
    """'the official weights of NAME (URL)' only for the registered URL; else 'the weights at URL'."""
    return f"{name}'s official weights ({url})" if _is_registered(name, url) else f"the weights at {url}"


def _url_for(name: str, url: str | None) -> str:
    url = url or model_info(name).weights_url
    if not url:
        raise WeightsUnavailableError(
            f"{name}: no downloadable official weights are registered; load a file with "
            f"checkpoint=PATH (ours, timm's, torchvision's or the official format)"
        )
    parsed = urlparse(url)
    if parsed.scheme not in _SCHEMES:
        registered = _is_registered(name, url)
        what = f"{name}'s registered weights URL" if registered else "the URL"
        why = ("plain http is not protected in transit" if parsed.scheme == "http"
               else f"the {parsed.scheme or 'missing'} scheme is not supported")
        raise WeightsUnavailableError(
            f"{name}: refusing to download {url}: {what} is not https ({why}); "
            + ("download the file yourself over a trusted channel and pass checkpoint=PATH"
               if registered else "give an https:// (or file://) URL, or pass checkpoint=PATH")
        )
    if not parsed.path.endswith(LOADABLE_SUFFIXES):
        raise WeightsUnavailableError(
            f"{name}: {_describe(name, url)} are not a PyTorch or safetensors file "
            f"({', '.join(LOADABLE_SUFFIXES)}); convert them and pass checkpoint=PATH "
            f"(see `edgevision info {name}`)"
        )
    return url


def _expected_sha256(name: str, url: str | None, sha256: str | None) -> str | None:
    if sha256 is not None:
        value = str(sha256).strip().lower()
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise ValueError(f"sha256 must be 64 hexadecimal digits; got {sha256!r}")
        return value
    return registered_sha256(name) if _is_registered(name, url) else None


def cached_path(name: str, url: str | None = None, cache: str | os.PathLike | None = None) -> Path:
    """Where the weights of ``name`` from ``url`` (default: the registered URL) are cached.

    ``<cache>/<model>/<first 12 hex digits of sha256(url)>-<file name>``.
    """
    url = _url_for(name, url)
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:12]
    return Path(cache or cache_root()) / name / f"{key}-{Path(urlparse(url).path).name}"


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _cached_problem(path: Path, expected: str | None) -> str | None:
    """Why the cached file cannot be used (None when it is good)."""
    try:
        if expected is not None:
            got = file_sha256(path)
            return None if got == expected else f"SHA-256 {got} differs from the expected {expected}"
        from edgevision.checkpoints import read_state_dict

        read_state_dict(path)  # no hash known: at least it must still read as weights
        return None
    except CheckpointError as e:
        return f"unreadable ({e})"
    except OSError as e:
        return f"unreadable ({e.strerror or e})"


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr)


def _download(name: str, url: str, f, progress: bool) -> str:
    """Stream ``url`` into the open file ``f``; returns its SHA-256.

    Read failures are WeightsUnavailableError; write failures stay OSErrors, which the atomic
    writer turns into one-line WriteErrors (disk full, permission).
    """
    import urllib.request

    h = hashlib.sha256()
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "edgevision"}),
                                          timeout=60)
    except (OSError, ValueError) as e:  # URLError/HTTPError/timeouts are OSErrors
        raise _download_error(name, url, e) from e
    bar = None
    with response:
        total = response.headers.get("Content-Length")
        if progress:
            try:
                from tqdm import tqdm

                bar = tqdm(total=int(total) if total else None, unit="B", unit_scale=True,
                           unit_divisor=1024, file=sys.stderr)
            except ImportError:
                bar = None
        try:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except OSError as e:  # the connection broke mid-download
                    raise _download_error(name, url, e) from e
                if not chunk:
                    break
                f.write(chunk)
                h.update(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
    return h.hexdigest()


def _download_error(name: str, url: str, e: BaseException) -> WeightsUnavailableError:
    reason = getattr(e, "reason", None) or e
    text = (getattr(reason, "strerror", None) or str(reason)).strip()
    text = text.splitlines()[0] if text else type(e).__name__
    return WeightsUnavailableError(
        f"{name}: could not download {url} ({text}); download it yourself and pass checkpoint=PATH"
    )


def fetch_weights(name: str, url: str | None = None, cache: str | os.PathLike | None = None,
                  progress: bool = True, force: bool = False, sha256: str | None = None) -> Path:
    """Path of the cached weights of ``name``, downloading (and verifying) them when needed.

    url: fetch from this URL instead of the registered one (https or file only).
    sha256: the expected SHA-256 of the file; default the registered one for the registered
    URL, none for another URL (then the file is only checked to read as weights).
    force: download again even when a good cached copy exists.
    progress: show a progress bar and notes on stderr.

    Raises :class:`WeightsUnavailableError` (no weights, refused URL, download failed),
    :class:`WeightsHashError` (downloaded file has another SHA-256; nothing cached) or
    :class:`edgevision.io.WriteError` (the cache cannot be written: disk full, permission).
    """
    from edgevision.io import as_path, atomic_write

    if url is not None and (not isinstance(url, str) or not url.strip()):
        raise (ValueError if isinstance(url, str) else TypeError)(
            f"url must be a non-empty https:// or file:// URL string (or None for the registered weights); "
            f"got {url!r}")
    if cache is not None:
        cache = as_path(cache, "cache")
    for arg, value in (("progress", progress), ("force", force)):
        if not isinstance(value, bool):
            raise TypeError(f"{arg} must be True or False; got {value!r}")
    url = _url_for(name, url)
    expected = _expected_sha256(name, url, sha256)
    path = cached_path(name, url, cache)
    if path.is_dir():
        raise WeightsUnavailableError(f"{name}: the cache path {path} is a directory; remove it")
    if path.is_file() and not force:  # force: the good copy stays until the new one replaces it
        problem = _cached_problem(path, expected)
        if problem is None:
            return path
        _say(progress, f"edgevision: cached {path} is corrupt ({problem}); deleting it and fetching again")
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            from edgevision.io import translate_os_error

            raise translate_os_error(e, path) from e

    def download(tmp: str) -> None:
        _say(progress, f"edgevision: downloading {_describe(name, url)} to {path}")
        with open(tmp, "wb") as f:  # atomic_write's temporary file
            got = _download(name, url, f, progress)
        if expected is not None and got != expected:
            raise WeightsHashError(
                f"{name}: refusing {_describe(name, url)}: its SHA-256 is {got}, expected {expected}; "
                "the file was not cached (it changed upstream, or the download was corrupted or tampered with)"
            )
        if expected is None:
            from edgevision.checkpoints import read_state_dict

            try:
                read_state_dict(tmp)  # the temporary file keeps the suffix that picks the reader
            except CheckpointError as e:
                first = str(e).splitlines()[0].replace(f"{tmp}: ", "")
                raise WeightsUnavailableError(
                    f"{name}: {_describe(name, url)} do not read as weights; not cached ({first})"
                ) from e

    atomic_write(path, download, keep_suffix=True)  # the suffix picks the reader of the check above
    return path
