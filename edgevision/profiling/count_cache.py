"""A disk cache of (params, MACs) per model and input shape, so `edgevision list` of the 100+
dense models is instant after the first run.

Counting builds each model on the meta device and runs FlopCounterMode: ~1 s per dense model.
An entry is keyed by the model name, the input shape, the torch version and a fingerprint of
edgevision's own source files (size and mtime of every .py), so any code change or upgrade
invalidates the cache instead of serving stale counts. The file is written atomically and a
damaged one is ignored (recounted and rewritten)."""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

import torch

_FILE = "counts.json"


def cache_path() -> Path:
    from edgevision.hub import cache_root

    return cache_root() / _FILE


@lru_cache(maxsize=1)
def source_fingerprint() -> str:
    import edgevision

    root = Path(edgevision.__file__).parent
    h = hashlib.sha1(f"{edgevision.__version__}|{torch.__version__}".encode())
    for p in sorted(root.rglob("*.py")):
        st = p.stat()
        h.update(f"{p.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("fingerprint") != source_fingerprint():
        return {}  # another version of the code: start over
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def cached_counts(name: str, shape: tuple[int, ...], count) -> tuple[int, int]:
    """(params, MACs) of ``name`` at ``shape``; ``count()`` computes them on a miss."""
    if os.environ.get("EDGEVISION_COUNT_CACHE", "1") == "0":
        return count()
    path = cache_path()
    entries = _load(path)
    key = f"{name}|{'x'.join(map(str, shape))}"
    hit = entries.get(key)
    if isinstance(hit, list) and len(hit) == 2 and all(isinstance(v, int) for v in hit):
        return hit[0], hit[1]
    params, macs = count()
    entries[key] = [int(params), int(macs)]
    try:
        from edgevision.io import atomic_write_text

        atomic_write_text(path, json.dumps({"fingerprint": source_fingerprint(), "entries": entries}))
    except OSError:  # a read-only home is no reason to fail a listing
        pass
    return params, macs
