"""Shared fixtures: the reference folder, deterministic small-input settings."""

import atexit
import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference"

# predict/bench apply edgevision's process-wide allocator setting (keep freed heap memory);
# tests run many models in one worker, so they keep glibc's defaults.
os.environ.setdefault("EDGEVISION_KEEP_HEAP", "0")
# Tests never write the user's cache (~/.cache/edgevision: weights, `list` counts).
if "EDGEVISION_CACHE" not in os.environ:
    os.environ["EDGEVISION_CACHE"] = tempfile.mkdtemp(prefix="edgevision-test-cache-")
    atexit.register(shutil.rmtree, os.environ["EDGEVISION_CACHE"], ignore_errors=True)

# One torch thread per test worker: pytest-xdist runs one worker per core.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


_LOOPBACK = ("127.0.0.1", "::1", "localhost")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Tests never reach the network (weights come from local fixtures); loopback stays open."""
    connect = socket.socket.connect

    def guarded(sock, address):
        host = address[0] if isinstance(address, tuple) else None
        if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in _LOOPBACK:
            raise OSError(f"tests must not use the network (tried to connect to {address})")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """../shared/reference, read in place. Skips only where the folder is absent (never in CI)."""
    if not REFERENCE.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"reference folder missing in CI: {REFERENCE}")
        pytest.skip(f"reference folder {REFERENCE} is absent (it sits beside the repo in CI)")
    return REFERENCE


@pytest.fixture(scope="session")
def model_stats(reference_dir):
    import json

    return json.loads((reference_dir / "model_stats.json").read_text())
