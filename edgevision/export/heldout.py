"""Held-out protocol for int8: calibration and evaluation data must never overlap.

An agreement or accuracy figure measured on the images the ranges were calibrated on is
in-sample and flatters the quantized model. :func:`check_disjoint` refuses such a pair of
sets with one line: file lists are compared by resolved path and by content (a copy of a
calibration image under another name is still the same image); image tensors by the bytes of
each image.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import torch


def _file_keys(files: Sequence) -> dict[str, str]:
    """{content hash: path} of a file list (missing files are an error, not silently skipped)."""
    keys = {}
    for f in files:
        p = Path(f)
        if not p.is_file():
            raise FileNotFoundError(f"image file not found: {p}")
        keys.setdefault(hashlib.blake2b(p.read_bytes(), digest_size=16).hexdigest(), str(p))
    return keys


def _tensor_keys(images: torch.Tensor) -> dict[str, str]:
    if images.dim() < 2:
        raise ValueError(f"images must be a batch (N, ...); got shape {tuple(images.shape)}")
    x = images.detach().cpu().contiguous().float().numpy()
    return {hashlib.blake2b(x[i].tobytes(), digest_size=16).hexdigest(): f"image {i}" for i in range(len(x))}


def _keys(items) -> dict[str, str]:
    if isinstance(items, torch.Tensor):
        return _tensor_keys(items)
    if isinstance(items, (str, Path)):
        raise TypeError("pass a list of image files (or an image tensor), not a single path")
    return _file_keys(list(items))


def check_disjoint(calibration, evaluation) -> int:
    """Raise ValueError (one line) when the calibration and evaluation sets share any image.

    Each is a list of image files or an (N, C, H, W) tensor (both the same kind). Returns the
    number of evaluation images. Empty sets are refused too: nothing would be measured.
    """
    if isinstance(calibration, torch.Tensor) != isinstance(evaluation, torch.Tensor):
        raise TypeError("calibration and evaluation must both be file lists or both image tensors")
    cal, ev = _keys(calibration), _keys(evaluation)
    if not cal or not ev:
        raise ValueError(f"need non-empty calibration and evaluation sets; got {len(cal)} and {len(ev)} images")
    if not isinstance(calibration, torch.Tensor):
        cal_paths = {Path(p).resolve() for p in calibration}
        same = [p for p in evaluation if Path(p).resolve() in cal_paths]
        if same:
            raise ValueError(f"calibration and evaluation sets overlap: {len(same)} of {len(list(evaluation))} "
                             f"evaluation files are calibration files (e.g. {same[0]}); use disjoint sets "
                             "(e.g. calibrate on the training split, evaluate on the test split)")
    shared = sorted(set(cal) & set(ev))
    if shared:
        what = "identical" if set(cal) == set(ev) else "overlapping"
        raise ValueError(f"calibration and evaluation sets are {what}: {len(shared)} evaluation image(s) also "
                         f"used for calibration (e.g. {ev[shared[0]]}); evaluate on images never used for "
                         "calibration")
    return len(ev)
