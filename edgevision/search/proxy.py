"""Proxy accuracy: a short from-scratch training on small images, held in memory.

The default data is the Fashion-MNIST subset shipped with edgevision (200 train + 100 test
images per class, :func:`edgevision.training.data.load_fashion_mnist` "vendored"); a folder in
ImageFolder layout (``DIR/train/<class>/...`` and optionally ``DIR/val/...``) works too.

Splits, so that the final table never reports on images the search selected with:
- ``split="search"``: train on 80% of each class of the training images, score on the other
  20% (seeded, per class): what the search ranks candidates by;
- ``split="final"``: train on all training images, score on the held-out test split
  (``x_test``/``val/``): only for retraining winners and baselines from scratch.

The schedule is the demo recipe's (edgevision.training.recipes "demo": AdamW, lr 4e-3 at
batch 64, weight decay 0.02, warm-up then cosine, light crop/flip augmentation) made short:
small inputs (32 px by default) and a few epochs, so one candidate trains in seconds to tens
of seconds on one core. Training is a plain loop over in-memory tensors (no DataLoader, no
image decoding per step): the images are resized once. One seed fixes the weights, the order
and the augmentation, so the same config gets the same accuracy on the same machine.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgevision.search.build import build_network

SPLITS = ("search", "final")
VAL_FRACTION = 0.2


def _stratified(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train idx, val idx): ``fraction`` of each class held out, chosen by a seeded permutation."""
    tr, va = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[np.random.default_rng(seed + int(c)).permutation(len(idx))]
        n_val = max(1, int(round(len(idx) * fraction)))
        va.append(idx[:n_val])
        tr.append(idx[n_val:])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(va))


def _read_folder(root: Path, classes=None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from PIL import Image

    from edgevision.training.data import scan_folder

    samples, classes, _ = scan_folder(root, classes)
    images = []
    for path, _ in samples:
        with Image.open(path) as im:
            images.append(np.asarray(im.convert("RGB")))
    shapes = {im.shape for im in images}
    if len(shapes) > 1:  # resized to one size later; store them at the first image's size
        h, w = images[0].shape[:2]
        images = [np.asarray(Image.fromarray(im).resize((w, h))) for im in images]
    return np.stack(images), np.array([s[1] for s in samples]), classes


def load_arrays(data: str | Path | None = None) -> dict:
    """``{x_train, y_train, x_test, y_test, classes, source}``; uint8 images (N,H,W) or (N,H,W,3)."""
    if data is None:
        from edgevision.training.data import FASHION_MNIST_CLASSES, load_fashion_mnist

        arrays, source = load_fashion_mnist("vendored")
        return dict(arrays, classes=list(FASHION_MNIST_CLASSES), source=f"fashion-mnist ({source} subset)")
    from edgevision.training.data import find_splits

    train_dir, test_dir = find_splits(data)
    x_tr, y_tr, classes = _read_folder(train_dir)
    if test_dir is None:  # one folder: hold out a seeded 20% per class as the test split
        tr, te = _stratified(y_tr, VAL_FRACTION, seed=12345)
        x_te, y_te = x_tr[te], y_tr[te]
        x_tr, y_tr = x_tr[tr], y_tr[tr]
    else:
        x_te, y_te, _ = _read_folder(test_dir, classes)
    return dict(x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, classes=classes, source=str(data))


def _to_tensor(x: np.ndarray, size: int) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x)).float().div_(255)
    t = t.unsqueeze(1).expand(-1, 3, -1, -1) if t.dim() == 3 else t.permute(0, 3, 1, 2)
    return F.interpolate(t.contiguous(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)


@dataclass
class ProxyConfig:
    img_size: int = 32
    epochs: int = 5
    batch_size: int = 64
    lr: float = 4e-3
    weight_decay: float = 0.02
    warmup_frac: float = 0.1
    label_smoothing: float = 0.1
    pad: int = 3  # random-crop padding, in pixels of the resized image
    threads: int = 1
    seed: int = 0

    def check(self) -> None:
        if not isinstance(self.img_size, int) or not 16 <= self.img_size <= 512:
            raise ValueError(f"proxy img_size must be an integer in [16, 512]; got {self.img_size!r}")
        for k in ("epochs", "batch_size", "threads"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"proxy {k} must be a positive integer; got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"proxy lr must be > 0; got {self.lr!r}")


class Proxy:
    """``proxy(cfg) -> {"acc": top-1 in [0, 1], "seconds": training time}`` for a net config."""

    def __init__(self, data: str | Path | None = None, split: str = "search", config: ProxyConfig | None = None,
                 arrays: dict | None = None):
        if split not in SPLITS:
            raise ValueError(f"proxy split must be one of {SPLITS}; got {split!r}")
        self.config = config or ProxyConfig()
        self.config.check()
        a = arrays if arrays is not None else load_arrays(data)
        self.classes, self.source, self.split = a["classes"], a["source"], split
        x, y = a["x_train"], np.asarray(a["y_train"]).astype(np.int64)
        if split == "search":
            tr, va = _stratified(y, VAL_FRACTION, seed=0)
            x_fit, y_fit, x_eval, y_eval = x[tr], y[tr], x[va], y[va]
        else:
            x_fit, y_fit = x, y
            x_eval, y_eval = a["x_test"], np.asarray(a["y_test"]).astype(np.int64)
        size = self.config.img_size
        self.x_fit, self.y_fit = _to_tensor(x_fit, size), torch.from_numpy(y_fit)
        self.x_eval, self.y_eval = _to_tensor(x_eval, size), torch.from_numpy(y_eval)
        self.mean = self.x_fit.mean(dim=(0, 2, 3), keepdim=True)
        self.std = self.x_fit.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3)

    @property
    def sizes(self) -> dict:
        return {"fit": len(self.y_fit), "eval": len(self.y_eval)}

    def _augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Random crop from a zero-padded image and horizontal flip, per sample, seeded."""
        p = self.config.pad
        n, _, h, w = x.shape
        flip = torch.rand(n, generator=g) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        if p:
            xp = F.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (n,), generator=g).tolist()
            dx = torch.randint(0, 2 * p + 1, (n,), generator=g).tolist()
            x = torch.stack([xp[i, :, a:a + h, b:b + w] for i, (a, b) in enumerate(zip(dy, dx))])
        return x

    def train(self, net_config: dict, model: nn.Module | None = None) -> nn.Module:
        c = self.config
        torch.manual_seed(c.seed)
        g = torch.Generator().manual_seed(c.seed)
        if model is None:
            model = build_network(net_config, num_classes=len(self.classes), in_chans=3)
        n = len(self.y_fit)
        steps_per_epoch = math.ceil(n / c.batch_size)
        total = c.epochs * steps_per_epoch
        warm = max(1, int(total * c.warmup_frac))
        opt = torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        # Linear warm-up, then cosine to zero: step-wise, so short runs get the whole shape.
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))
        loss_fn = nn.CrossEntropyLoss(label_smoothing=c.label_smoothing)
        model.train()
        for _ in range(c.epochs):
            order = torch.randperm(n, generator=g)
            for s in range(steps_per_epoch):
                idx = order[s * c.batch_size:(s + 1) * c.batch_size]
                if len(idx) < 2:  # BatchNorm needs two samples
                    continue
                x = (self._augment(self.x_fit[idx], g) - self.mean) / self.std
                loss = loss_fn(model(x), self.y_fit[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                opt.step()
                sched.step()
        return model.eval()

    @torch.inference_mode()
    def score(self, model: nn.Module) -> float:
        model.eval()
        correct = 0
        for i in range(0, len(self.y_eval), 256):
            x = (self.x_eval[i:i + 256] - self.mean) / self.std
            correct += int((model(x).argmax(1) == self.y_eval[i:i + 256]).sum())
        return correct / len(self.y_eval)

    def __call__(self, net_config: dict, model: nn.Module | None = None) -> dict:
        from edgevision.profiling.timing import fixed_threads

        start = time.perf_counter()
        with fixed_threads(self.config.threads):
            model = self.train(net_config, model)
            acc = self.score(model)
        if not math.isfinite(acc):
            acc = 0.0
        return {"acc": acc, "seconds": round(time.perf_counter() - start, 2)}
