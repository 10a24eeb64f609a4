"""Training checkpoints: everything needed to continue exactly, pickle-free, written atomically.

A checkpoint is a dict of tensors, plain containers and primitives only, so it loads with
``torch.load(weights_only=True)``: model, optimizer, scheduler, EMA and grad-scaler state,
the RNG states (python, numpy, torch CPU and CUDA) as tensors/lists, the epoch and step
counters, the model name, num_classes, class names, the run's config and the log history.
Files are written through :func:`edgevision.io.atomic_torch_save` (temp file, fsync, rename,
mode from the umask), so a crash while saving leaves the previous checkpoint intact and a full
disk is one clear line ("disk full while writing .../last.pth"), not torch's C++ message.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from edgevision.checkpoints import CheckpointError, describe_load_error
from edgevision.io import atomic_torch_save

FORMAT = "edgevision-train-v1"
LAST = "last.pth"


def rng_state() -> dict:
    """All RNG states as tensors and lists (no pickled objects)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(mt), gauss],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, mt, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in mt), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def plain(obj):
    """Config values as primitives/containers only (paths and tuples become str/list)."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write ``state`` (plus a format tag) atomically."""
    state = dict(state, format=FORMAT)
    atomic_torch_save(state, path)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict:
    """Read a training checkpoint with weights_only=True; clear errors for bad files."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a training checkpoint")
    if not path.is_file():
        raise CheckpointError(f"training checkpoint not found: {path}")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupt or unsafe files raise many types
        raise CheckpointError(describe_load_error(path, e, "training checkpoint")) from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an edgevision training checkpoint (no '{FORMAT}' tag); "
                              "to start from pretrained weights use --checkpoint instead of --resume")
    return state


def check_resumable(state: dict, model_name: str, num_classes: int, path, classes=None) -> None:
    """Refuse to resume into a different model, class count or class names, naming both."""
    if state["model_name"] != model_name:
        raise CheckpointError(f"{path}: checkpoint is for model {state['model_name']!r}, "
                              f"this run trains {model_name!r}; use another --output or drop --resume")
    if int(state["num_classes"]) != int(num_classes):
        raise CheckpointError(f"{path}: checkpoint has num_classes={state['num_classes']}, "
                              f"the data has {num_classes} classes; use another --output or drop --resume")
    saved = list(state.get("classes") or [])
    if classes is not None and saved and saved != list(classes):
        diff = [f"{a!r} vs {b!r}" for a, b in zip(saved, classes) if a != b]
        raise CheckpointError(f"{path}: checkpoint's classes differ from the data's ({', '.join(diff[:3])}); "
                              "use another --output or drop --resume")


def find_resume(output: Path, resume: str | None) -> Path | None:
    """The checkpoint to resume from: an explicit file, 'auto' (output/last.pth if present) or None."""
    if resume in (None, "", "none", "no"):
        return None
    if resume == "auto":
        p = output / LAST
        return p if p.is_file() else None
    p = Path(resume)
    if p.is_dir():
        p = p / LAST
    if not p.is_file():
        raise CheckpointError(f"--resume: checkpoint not found: {p}")
    return p
