"""Checkpoint I/O: safetensors first, pickle-free torch files, strict loads with a readable diff.

- :func:`read_state_dict` reads ``.safetensors`` or ``.pth/.pt/.bin`` (``torch.load`` with
  ``weights_only=True``: never unpickles arbitrary objects), unwraps the usual containers
  (``{"state_dict": ...}``, ``{"model": ...}``, ...) and strips DDP's ``module.`` prefix.
- :func:`load_state_dict_strict` loads only when every key and shape fits, and otherwise
  raises :class:`CheckpointMismatchError` listing missing, unexpected and mis-shaped keys,
  before anything is copied (never a partial load).
- :func:`convert_to_model` detects the checkpoint's format (ours, timm, torchvision or the
  official repository) by trying the model's converters and keeping the one whose keys fit.
- :func:`save_model` writes safetensors with metadata, atomically (temp file + rename).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
import torch.nn as nn

from edgevision.io import atomic_write, atomic_write_bytes  # noqa: F401  (atomic_write re-exported)

# Containers that training scripts wrap their weights in, tried in this order.
_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "module", "net", "params")


class CheckpointError(RuntimeError):
    """The file cannot be read as a checkpoint (missing, truncated, unsafe or not weights)."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's keys or shapes do not fit the model; the message lists them all."""

    def __init__(self, missing, unexpected, mismatched, context: str = ""):
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)  # (key, checkpoint shape, model shape)
        super().__init__(self._format(context))

    def _format(self, context: str, limit: int = 25) -> str:
        def block(title, items):
            if not items:
                return ""
            shown = "\n".join(f"    {i}" for i in items[:limit])
            more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
            return f"\n  {title} ({len(items)}):\n{shown}{more}"

        mism = [f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in self.mismatched]
        head = "checkpoint does not fit the model" + (f" ({context})" if context else "")
        return (
            head
            + block("missing keys (in the model, not in the checkpoint)", self.missing)
            + block("unexpected keys (in the checkpoint, not in the model)", self.unexpected)
            + block("mis-shaped keys", mism)
        )

    @property
    def size(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.mismatched)


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):  # nested wrappers, e.g. {"model": {"state_dict": ...}}
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            for k in _WRAPPER_KEYS:
                if k in obj and isinstance(obj[k], dict):
                    obj = obj[k]
                    break
            else:
                break
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(
            f"{path}: no tensors found (top-level keys: {sorted(map(str, obj))[:10]})"
        )
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def _safe_globals():
    """Allow-list the harmless non-tensor objects training scripts store beside weights.

    DeiT-style trainers (EfficientFormer's among them) save ``args`` as an
    argparse.Namespace; rebuilding one only sets attributes. Anything else stays refused.
    """
    import argparse
    import contextlib

    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    return allow([argparse.Namespace]) if allow else contextlib.nullcontext()


# torch words the refusal differently across releases: "Unsupported global: GLOBAL a.b"
# (2.4-2.5), "Trying to load unsupported GLOBAL a.b whose module a is blocked" (2.6+).
_REFUSED_GLOBAL = re.compile(r"unsupported global:?\s+(?:GLOBAL\s+)?([\w.]+)", re.IGNORECASE)


def _looks_like_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte little-endian header length, then a JSON object."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 0 < int.from_bytes(head[:8], "little") < path.stat().st_size


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e}); is it truncated?") from e


def _not_weights(path: Path) -> str | None:
    """What a file that is certainly not a PyTorch checkpoint is (a NumPy archive, another zip,
    a JSON/text/HTML file), from its first bytes; None when it may be one."""
    import zipfile

    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return None  # a truncated torch zip: torch's own error says so
        if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
            return None
        if names and all(n.endswith(".npy") for n in names):
            return ("a NumPy .npz archive, not PyTorch weights (load it with numpy and save the tensors "
                    "with safetensors.torch.save_file)")
        return f"a zip archive that is not a PyTorch checkpoint (holds {', '.join(names[:3]) or 'nothing'})"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not a character cut at the end of the 4 KB read
            return None
        text = head[:e.start].decode("utf-8")
    if text and all(c.isprintable() or c.isspace() for c in text):
        start = " ".join(text.split())[:40]
        first = start[:1]
        kind = "a JSON file" if first in ("{", "[") else "an HTML page" if first == "<" else "a text file"
        return f"{kind} (starts {start!r}), not a weights file"
    return None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read the tensors of a checkpoint file, safely, with clear errors.

    The format is recognised by content, not by suffix (safetensors saved as ``.pth`` loads);
    pickled files load with ``weights_only=True``, and a refused object is named.
    """
    from edgevision.io import as_path

    path = as_path(path, "checkpoint")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a regular file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty")
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        return _read_safetensors(path)
    other = _not_weights(path)
    if other:
        raise CheckpointError(f"{path}: {other}")
    try:
        with _safe_globals():
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt/unsafe files
        raise CheckpointError(describe_load_error(path, e, "PyTorch or safetensors weights file")) from e
    return _unwrap(obj, path)


def describe_load_error(path, e: BaseException, what: str) -> str:
    """One line for a failed ``torch.load(weights_only=True)``: the refused object by name, or
    the cause, without torch's advice to set weights_only=False (wrong for a corrupt file)."""
    text = str(e)
    unsafe = _REFUSED_GLOBAL.search(text)
    if unsafe:
        return (f"{path}: holds a non-tensor object ({unsafe[1]}) that edgevision refuses to "
                "unpickle (weights load with weights_only=True); save only the state dict")
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and "weights_only" not in ln and "Weights only load failed" not in ln]
    detail = lines[-1] if lines else type(e).__name__
    # torch's C++ messages: "[enforce fail at x.cc:N] . what", "what. This is an internal miniz error..."
    detail = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", detail).split(". ")[0]
    return f"{path}: not a readable {what} ({detail[:200]}); is it truncated, corrupt or a plain pickle?"


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Metadata stored in a safetensors header ({} for other formats)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:
        return {}


def _ignorable(key: str) -> bool:
    # BN's step counter is not a weight; the official fixtures store it, some ports omit it.
    return key.endswith("num_batches_tracked")


def state_dict_diff(model: nn.Module, sd: dict[str, torch.Tensor]):
    """(missing, unexpected, mismatched) of sd against model.state_dict()."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not _ignorable(k)]
    unexpected = [k for k in sd if k not in own and not _ignorable(k)]
    mismatched = [
        (k, tuple(sd[k].shape), tuple(own[k].shape))
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    return missing, unexpected, mismatched


def load_state_dict_strict(model: nn.Module, sd: dict[str, torch.Tensor], context: str = "") -> None:
    """Copy sd into model only if every key and shape fits; otherwise raise with the full diff."""
    missing, unexpected, mismatched = state_dict_diff(model, sd)
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(missing, unexpected, mismatched, context)
    own = model.state_dict()
    sd = {k: v for k, v in sd.items() if k in own}
    model.load_state_dict(sd, strict=False)


def convert_to_model(model: nn.Module, sd: dict[str, torch.Tensor], converters: dict, context: str = ""):
    """Return (format_name, converted sd) for the format whose keys fit the model.

    Tries our own layout first, then each converter; a converter that raises or leaves
    a diff is skipped. When none fits, raises the diff of the closest candidate.
    """
    best = None
    candidates = [("edgevision", lambda d: d), *converters.items()]
    for fmt, fn in candidates:
        try:
            converted = fn(dict(sd))
        except CheckpointMismatchError as e:  # the format, but not this model: its diff competes
            if best is None or e.size < best[0]:
                best = (e.size, fmt, (e.missing, e.unexpected, e.mismatched))
            continue
        except Exception:  # a converter for another format fails on these keys
            continue
        diff = state_dict_diff(model, converted)
        size = sum(len(x) for x in diff)
        if size == 0:
            return fmt, converted
        if best is None or size < best[0]:
            best = (size, fmt, diff)
    missing, unexpected, mismatched = best[2] if best else ([], list(sd), [])
    tried = ", ".join(name for name, _ in candidates)
    ctx = f"{context}; tried formats: {tried}; closest: {best[1] if best else 'none'}"
    raise CheckpointMismatchError(missing, unexpected, mismatched, ctx)


_MASK = ".weight_mask"  # edgevision.sparse keeps a pruned layer's mask beside its weight


def bake_pruning_masks(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """A pruned checkpoint (``edgevision train --sparsity``) stores a boolean ``<layer>.weight_mask``
    beside each pruned weight. For a model without masks (inference: bench, predict, export,
    a fine-tune) the masks are multiplied into the weights (which already hold zeros there) and
    dropped; (the new dict, how many). A mask whose weight is missing or of another shape stays,
    so the strict load names it."""
    out, n = dict(sd), 0
    for key in [k for k in sd if k.endswith(_MASK)]:
        wkey = key[: -len("_mask")]
        mask, w = sd[key], sd.get(wkey)
        if w is not None and mask.dtype == torch.bool and mask.shape == w.shape:
            out[wkey] = w * mask.to(w.dtype)
            del out[key]
            n += 1
    return out, n


def load_checkpoint(model: nn.Module, path, converters: dict | None = None, model_name: str = "") -> str:
    """Read path, convert to the model's layout, load strictly. Returns the detected format.
    Pruning masks in the checkpoint are baked into the weights unless the model has masks."""
    sd = read_state_dict(path)
    if not any(k.endswith(_MASK) for k in model.state_dict()):
        sd, _ = bake_pruning_masks(sd)
    meta = read_metadata(path)
    context = f"{path}"
    saved_for = meta.get("model_name")
    if saved_for and model_name and saved_for != model_name:
        context += f", saved from model {saved_for!r}, loading into {model_name!r}"
    fmt, converted = convert_to_model(model, sd, converters or {}, context)
    load_state_dict_strict(model, converted, context)
    return fmt


def save_model(model: nn.Module, path, model_name: str = "", extra: dict | None = None) -> None:
    """Save the model's weights as safetensors with metadata (model name, edgevision version)."""
    from safetensors.torch import save

    from edgevision import __version__

    meta = {"format": "edgevision", "edgevision_version": __version__, "model_name": model_name}
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (extra or {}).items()})
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    # Serialized in memory, written by Python: a full disk is a clear OSError (see edgevision.io).
    atomic_write_bytes(path, save(sd, metadata=meta))
