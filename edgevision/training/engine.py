"""Train and evaluate: one loop from a laptop CPU to many GPUs under torchrun, crash-safe.

The pieces are timm's (optimizer and scheduler factories, transforms, Mixup/CutMix,
ModelEmaV3) and torch's (autocast, GradScaler, DistributedDataParallel, DistributedSampler);
this module wires them together and adds what a long run needs:

- exact continuation: the sampler order, the augmentation of each sample and the global RNG
  streams are all functions of (seed, epoch[, step]), and every checkpoint stores the RNG
  states, so a run resumed from its last checkpoint ends with the same weights as one that
  never stopped (with ``deterministic=True``);
- checkpoints every epoch and on SIGINT/SIGTERM (mid-epoch, at a step boundary), atomically;
- per-epoch CSV/JSON logs, a curves PNG, a summary, final weights as safetensors.

Test hook: ``EDGEVISION_KILL_AFTER_STEPS=N`` sends SIGKILL (or the signal named by
``EDGEVISION_KILL_SIGNAL``, e.g. TERM) to the process after N optimizer steps, to test crash
recovery at a known point; with ``EDGEVISION_KILL_GROUP=1`` to its whole process group, as a
terminal's Ctrl-C does (DataLoader workers included).
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN  # noqa: E402
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD  # noqa: E402

from edgevision.checkpoints import (
    CheckpointError,
    CheckpointMismatchError,
    read_metadata,
    read_state_dict,
    save_model,
)
from edgevision.io import atomic_write_text
from edgevision.jsonout import to_json
from edgevision.training import checkpointing as ckpt
from edgevision.training import data as D
from edgevision.training.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    cleanup,
    init_distributed,
    pick_device,
)
from edgevision.training.recipes import get_recipe

KILL_ENV = "EDGEVISION_KILL_AFTER_STEPS"
KILL_SIGNAL_ENV = "EDGEVISION_KILL_SIGNAL"  # KILL (default) or TERM/INT
KILL_GROUP_ENV = "EDGEVISION_KILL_GROUP"  # set: signal the whole process group, not just this process


@dataclass
class TrainConfig:
    """Every option of a training run; a recipe fills defaults, explicit values win."""

    model: str
    data: str | None = None
    output: str = "runs/train"
    recipe: str | None = None
    epochs: int = 10
    batch_size: int = 64  # per process; global batch = batch_size x world size
    lr: float | None = None  # absolute; None -> lr_base x global batch / lr_base_batch
    lr_base: float = 1e-3
    lr_base_batch: int = 256
    opt: str = "adamw"
    sched: str = "cosine"
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    min_lr: float = 1e-6
    label_smoothing: float = 0.1
    drop_path: float = 0.0
    clip_grad: float | None = None
    ema: bool = False
    ema_decay: float = 0.9998
    amp: str = "none"  # none | auto | bf16 | fp16
    channels_last: bool = False
    seed: int = 42
    deterministic: bool = False
    resume: str | None = "auto"  # auto: continue from output/last.pth when present
    checkpoint: str | None = None  # pretrained weights to fine-tune from (new head)
    freeze_backbone: bool = False
    head_width_scale: float = 1.0  # e.g. 0.5: a slimmer pre-logits layer (MobileNetV3's conv_head)
    workers: int = 2
    img_size: int = 224
    crop_pct: float = 1.0
    crop_scale: tuple = (0.08, 1.0)
    hflip: float = 0.5
    color_jitter: float = 0.4
    auto_augment: str | None = None
    interpolation: str = "bilinear"
    mixup: float = 0.0
    cutmix: float = 0.0
    val_fraction: float = 0.2  # used when the data folder has no val/ split
    scan: str = "auto"  # image check at start: full decode, header only, or auto (by count)
    sync_bn: bool = False
    device: str = "auto"
    threads: int = 0  # torch threads per process; 0 = torch's default
    sample_data: bool = False  # no --data: write and use the bundled Fashion-MNIST sample
    tensorboard: bool = False
    progress: bool = True
    max_steps_per_epoch: int = 0  # 0 = full epochs (a cap for smoke runs)


def make_config(model: str, recipe: str | None = None, **overrides) -> TrainConfig:
    """Defaults, then the recipe, then overrides that are not None."""
    known = {f.name for f in fields(TrainConfig)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"unknown training option(s): {', '.join(bad)}")
    values = get_recipe(recipe)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(model=model, recipe=recipe, **values)


# --------------------------------------------------------------------------- helpers
def scaled_lr(cfg: TrainConfig, world_size: int = 1) -> float:
    """--lr when given, else lr_base scaled linearly from lr_base_batch to the global batch."""
    if cfg.lr is not None:
        return cfg.lr
    return cfg.lr_base * cfg.batch_size * world_size / cfg.lr_base_batch


def check_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard "
                         "(or edgevision[tensorboard]); CSV/JSON logs and curves.png are written "
                         "without it") from None


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return D.sample_seed(seed, 1_000_003 * (epoch + 1), rank) % 2**32


def set_deterministic(on: bool) -> None:
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def resolve_amp(amp: str | None, device: torch.device) -> torch.dtype | None:
    """None (fp32), or the autocast dtype: bf16 on CPU, bf16/fp16 on CUDA."""
    amp = (amp or "none").lower()
    if amp in ("none", "no", "off", "fp32"):
        return None
    if amp == "auto":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    if amp in ("bf16", "bfloat16"):
        return torch.bfloat16
    if amp in ("fp16", "float16"):
        if device.type != "cuda":
            raise ValueError("--amp fp16 needs CUDA; on CPU use --amp bf16")
        return torch.float16
    raise ValueError(f"--amp must be none, auto, bf16 or fp16; got {amp!r}")


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def model_norm(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))


def classifier_keys(model_name: str, model: nn.Module) -> set[str]:
    """State-dict keys of the classifier: those a num_classes=0 build of the model lacks."""
    from edgevision.factory import create_model

    with torch.device("meta"):
        headless = create_model(model_name, num_classes=0)
    return set(model.state_dict()) - set(headless.state_dict())


def load_backbone(model: nn.Module, model_name: str, path: str, head: set[str] | None = None):
    """Load every pretrained key but the classifier (its class count differs); strict otherwise.

    Returns (detected format, classifier keys left at their fresh initialisation).
    """
    from edgevision.registry import model_info

    sd = read_state_dict(path)
    head = head if head is not None else classifier_keys(model_name, model)
    own = {k: v for k, v in model.state_dict().items() if k not in head}
    candidates = [("edgevision", lambda d: d), *model_info(model_name).converters.items()]
    best = None
    for fmt, fn in candidates:
        try:
            conv = {k: v for k, v in fn(dict(sd)).items() if k not in head}
        except Exception:  # a converter for another layout rejects these keys
            continue
        ign = lambda k: k.endswith("num_batches_tracked")  # noqa: E731
        missing = [k for k in own if k not in conv and not ign(k)]
        unexpected = [k for k in conv if k not in own and not ign(k)]
        mism = [(k, tuple(conv[k].shape), tuple(own[k].shape)) for k in own
                if k in conv and conv[k].shape != own[k].shape]
        if not (missing or unexpected or mism):
            model.load_state_dict({k: v for k, v in conv.items() if k in own}, strict=False)
            return fmt, head
        size = len(missing) + len(unexpected) + len(mism)
        if best is None or size < best[0]:
            best = (size, fmt, missing, unexpected, mism)
    if best is None:
        raise CheckpointError(f"{path}: no checkpoint format of {model_name} could read it")
    raise CheckpointMismatchError(best[2], best[3], best[4],
                                  f"{path} -> {model_name} backbone; closest format: {best[1]}")


def prelogits_layer(model: nn.Module) -> nn.Conv2d | None:
    """MobileNetV3's pre-logits layer, timm's ``conv_head``: a 1x1 conv with bias on the pooled
    features (a Linear in effect) before the activation and classifier; None for other models
    (in MobileNetV2/EfficientNet ``conv_head`` is the conv-BN-act before pooling)."""
    from timm.models.mobilenetv3 import MobileNetV3

    conv = getattr(model, "conv_head", None)
    if isinstance(model, MobileNetV3) and isinstance(conv, nn.Conv2d) and isinstance(model.norm_head, nn.Identity):
        return conv
    return None


def resize_head(model: nn.Module, scale: float | None, num_classes: int, width: int | None = None) -> set[str]:
    """Rebuild the pre-logits layer (MobileNetV3's ``conv_head``) at ``scale`` x its width (or
    at ``width``), new classifier. Returns the re-initialised keys. Only MobileNetV3 qualifies.
    """
    conv = prelogits_layer(model)
    if conv is None:
        raise ValueError(f"--head-width-scale needs a model with a pre-logits head after pooling (conv_head, "
                         f"as in MobileNetV3); {type(model).__name__} has none")
    if width is None:
        if not 0 < scale <= 4:
            raise ValueError(f"--head-width-scale must be in (0, 4]; got {scale}")
        width = max(8, round(conv.out_channels * scale))
    model.conv_head = nn.Conv2d(conv.in_channels, width, 1, bias=conv.bias is not None)
    model.head_hidden_size = width  # timm: the pre-logits width the classifier is built on
    model.reset_classifier(num_classes)
    return {f"conv_head.{k}" for k in model.conv_head.state_dict()}


def freeze_backbone(model: nn.Module, head_keys: set[str]) -> int:
    """Only classifier parameters train; frozen BatchNorms also keep their running statistics."""
    trainable = 0
    for name, p in model.named_parameters():
        p.requires_grad = name in head_keys
        trainable += p.numel() if p.requires_grad else 0
    return trainable


def _freeze_bn_stats(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            ps = list(m.parameters(recurse=False))
            if ps and not any(p.requires_grad for p in ps):
                m.eval()


def train_step(model, images, targets, optimizer, loss_fn, amp_dtype=None, scaler=None,
               clip_grad: float | None = None):
    """One optimizer step; returns the detached loss and logits. Shared with the benchmark."""
    ctx = torch.autocast(images.device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    with ctx:
        logits = model(images)
        loss = loss_fn(logits, targets)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        if clip_grad:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if clip_grad:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
    return loss.detach(), logits.detach()


@torch.inference_mode()
def evaluate_model(model, loader, device, num_classes: int, amp_dtype=None, channels_last=False,
                   dist_info: DistInfo | None = None) -> dict:
    """Loss, top-1/top-5 (%) and the confusion matrix over the loader (summed over processes)."""
    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device)
    loss_sum = top5 = 0.0
    k = min(5, num_classes)
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        top5 += (logits.topk(k, 1).indices == targets[:, None]).any(1).sum().item()
        idx = targets * num_classes + logits.argmax(1)
        cm += torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes).double()
    if dist_info is not None and dist_info.enabled:
        import torch.distributed as dist

        dist.all_reduce(cm)
        loss_sum, top5 = all_reduce_sum([loss_sum, top5], device, dist_info)
    cm = cm.cpu().numpy().astype(np.int64)
    n = max(int(cm.sum()), 1)
    per_class = (np.diag(cm) / np.maximum(cm.sum(1), 1) * 100).tolist()
    return {"loss": loss_sum / n, "top1": float(np.trace(cm) / n * 100), "top5": top5 / n * 100,
            "count": int(cm.sum()), "per_class_acc": per_class, "confusion": cm}


# --------------------------------------------------------------------------- the run
class _Stop:
    """SIGINT/SIGTERM -> finish the current step, checkpoint, exit.

    Repeats are ignored on purpose: under torchrun a Ctrl-C reaches each rank twice (from the
    terminal, then forwarded by the launcher), and a scheduler's SIGTERM often does too.
    """

    def __init__(self, verbose: bool = True):
        self.signum = 0
        self._old = {}
        self._pid = os.getpid()
        self.verbose = verbose

    def install(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (e.g. called from a worker thread)
                pass

    def _handle(self, signum, frame):
        if os.getpid() != self._pid or self.signum:  # a forked DataLoader worker, or a repeat
            return
        self.signum = signum
        if self.verbose:
            print(f"\n{signal.Signals(signum).name}: finishing this step, then saving a checkpoint",
                  file=sys.stderr, flush=True)

    def restore(self):
        for s, h in self._old.items():
            signal.signal(s, h)


class Run:
    """State of one training run; :func:`train` drives it."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.out = Path(cfg.output)
        self.device = pick_device(cfg.device)
        self.dist = init_distributed(self.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.main = self.dist.is_main

    def log(self, msg: str) -> None:
        if self.main:
            print(msg, flush=True)

    # ---- data
    def build_data(self):
        cfg = self.cfg
        data_dir = cfg.data
        if not data_dir:
            if not cfg.sample_data:
                raise ValueError("--data DIR is required (an ImageFolder: DIR/<class>/<images> or "
                                 "DIR/train + DIR/val); or use --recipe demo for the bundled sample")
            data_dir = self.out / "data"
            if self.main:
                D.prepare_sample_dataset(data_dir)
            barrier(self.dist)
            src = ("the full set in " + str(D.SYSTEM_FASHION_MNIST) if D.sample_source(data_dir) == "full"
                   else "the subset bundled with edgevision")
            self.log(f"data: Fashion-MNIST sample (MIT licence; read from {src}) written as an ImageFolder "
                     f"to {data_dir}")
        train_root, val_root = D.find_splits(data_dir)
        threads = max(1, cfg.workers)
        train_samples, classes, train_rep = D.scan_folder(train_root, None, cfg.scan, threads)
        if val_root is not None:
            val_samples, _, val_rep = D.scan_folder(val_root, classes, cfg.scan, threads)
        else:
            train_samples, val_samples = D.split_samples(train_samples, cfg.val_fraction, cfg.seed)
            val_rep = None
            self.log(f"data: no val/ folder; held out {len(val_samples)} images "
                     f"({cfg.val_fraction:.0%} per class, seed {cfg.seed})")
        for rep in (train_rep, val_rep):
            if rep is not None:
                self.log("data: " + rep.summary())
        self.scan_reports = [r.as_dict() for r in (train_rep, val_rep) if r is not None]
        if len(classes) < 2:
            raise ValueError(f"{train_root}: found 1 class folder ({classes[0]}); a classifier needs at "
                             f"least 2: DIR/<class>/<images> with one folder per class")
        if not val_samples:
            raise ValueError(f"{val_root or train_root}: no validation images; add a val/ folder or more "
                             "images per class")
        self.classes = classes
        self.data_dir = str(data_dir)
        return train_samples, val_samples

    def build_loaders(self, train_samples, val_samples, mean, std):
        cfg = self.cfg
        aa = D.check_auto_augment(cfg.auto_augment)
        t_train = D.build_transforms(cfg.img_size, mean, std, True, aa, cfg.crop_scale, cfg.hflip,
                                     cfg.color_jitter, interpolation=cfg.interpolation)
        self.val_interpolation = "bicubic" if cfg.interpolation == "random" else cfg.interpolation
        t_val = D.build_transforms(cfg.img_size, mean, std, False, crop_pct=cfg.crop_pct,
                                   interpolation=self.val_interpolation)
        self.train_set = D.ImageFolderDataset(train_samples, self.classes, t_train, seed=cfg.seed)
        val_set = D.ImageFolderDataset(val_samples, self.classes, t_val, seed=cfg.seed)
        w, r = self.dist.world_size, self.dist.rank
        self.sampler = torch.utils.data.DistributedSampler(
            self.train_set, num_replicas=w, rank=r, shuffle=True, seed=cfg.seed, drop_last=True)
        self.steps_per_epoch = len(self.sampler) // cfg.batch_size
        if cfg.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.max_steps_per_epoch)
        if self.steps_per_epoch == 0:
            raise ValueError(f"batch size {cfg.batch_size} x {w} process(es) exceeds the "
                             f"{len(self.train_set)} training images; lower --batch-size")
        # Each process evaluates every world-th validation image (no padding: exact counts).
        val_idx = list(range(r, len(val_set), w))
        self.val_loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(val_set, val_idx), batch_size=cfg.batch_size * 2, shuffle=False,
            num_workers=cfg.workers, pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(0), worker_init_fn=_worker_init if cfg.workers else None)

    def train_loader(self, epoch: int, start_step: int):
        cfg = self.cfg
        self.train_set.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        order = list(self.sampler)[: self.steps_per_epoch * cfg.batch_size]
        order = order[start_step * cfg.batch_size:]  # mid-epoch resume skips the steps done
        return torch.utils.data.DataLoader(
            self.train_set, batch_size=cfg.batch_size, sampler=order, drop_last=True,
            num_workers=cfg.workers, pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(epoch), worker_init_fn=_worker_init if cfg.workers else None)

    # ---- model and optimisation
    def build_model(self):
        from edgevision.factory import create_model

        cfg = self.cfg
        model = create_model(cfg.model, num_classes=len(self.classes), drop_path_rate=cfg.drop_path)
        self.head_keys = classifier_keys(cfg.model, model)
        if cfg.head_width_scale != 1.0:
            self.head_keys |= resize_head(model, cfg.head_width_scale, len(self.classes))
            self.head_keys |= classifier_keys(cfg.model, model)
            self.log(f"head: pre-logits width {model.head_hidden_size} ({cfg.head_width_scale:g}x)")
        if cfg.checkpoint:
            fmt, _ = load_backbone(model, cfg.model, cfg.checkpoint, self.head_keys)
            self.log(f"fine-tune: loaded {cfg.checkpoint} ({fmt} format) except the classifier "
                     f"({', '.join(sorted(self.head_keys))}), new head for {len(self.classes)} classes")
        if cfg.freeze_backbone:
            n = freeze_backbone(model, self.head_keys)
            self.log(f"fine-tune: backbone frozen, {n:,} trainable parameters")
        if cfg.sync_bn and self.dist.enabled:
            if self.device.type == "cpu":  # torch's SyncBatchNorm kernels are GPU-only
                self.log("--sync-bn: SyncBatchNorm runs on GPUs only; per-process BatchNorm on CPU")
            else:
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(self.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        return model

    def build_optim(self):
        from timm.optim import create_optimizer_v2
        from timm.scheduler import create_scheduler_v2

        cfg = self.cfg
        self.global_batch = cfg.batch_size * self.dist.world_size
        self.lr = scaled_lr(cfg, self.dist.world_size)
        self.optimizer = create_optimizer_v2(self.model, cfg.opt, lr=self.lr, weight_decay=cfg.weight_decay)
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, cfg.sched, num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs,
            warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr, step_on_epochs=False,
            updates_per_epoch=self.steps_per_epoch)
        self.amp_dtype = resolve_amp(cfg.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.ema = None
        if cfg.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=cfg.ema_decay)
        self.mixup = None
        if cfg.mixup > 0 or cfg.cutmix > 0:
            from timm.data import Mixup
            from timm.loss import SoftTargetCrossEntropy

            if cfg.batch_size % 2:
                raise ValueError(f"Mixup/CutMix needs an even --batch-size; got {cfg.batch_size}")
            self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix,
                               label_smoothing=cfg.label_smoothing, num_classes=len(self.classes))
            self.loss_fn = SoftTargetCrossEntropy()
        else:
            self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.net = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    # ---- checkpoints
    def state(self, epoch: int, step_in_epoch: int, sums) -> dict:
        cfg = self.cfg
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": ckpt.rng_state(),
            "epoch": epoch, "step_in_epoch": step_in_epoch,
            "global_step": epoch * self.steps_per_epoch + step_in_epoch,
            "epoch_sums": [float(s) for s in sums],
            "model_name": cfg.model, "num_classes": len(self.classes), "classes": list(self.classes),
            "world_size": self.dist.world_size, "config": ckpt.plain(asdict(cfg)),
            "history": self.history,
        }

    def save(self, epoch: int, step_in_epoch: int, sums=(0.0, 0.0, 0.0)) -> None:
        """Rank 0 writes; mid-epoch, every rank's RNG streams and running sums go in too (a
        collective: all ranks call this), so each rank resumes its own streams exactly."""
        state = self.state(epoch, step_in_epoch, sums) if self.main else None
        if self.dist.enabled and step_in_epoch:
            import torch.distributed as dist

            mine = {"rng": ckpt.rng_state(), "epoch_sums": [float(v) for v in sums]}
            gathered = [None] * self.dist.world_size
            dist.all_gather_object(gathered, mine)
            if self.main:
                state["rank_states"] = gathered
        if self.main:
            ckpt.save_checkpoint(self.out / ckpt.LAST, state)

    def maybe_resume(self):
        """(start epoch, start step, epoch sums, rng state or None) from a checkpoint, if any."""
        path = ckpt.find_resume(self.out, self.cfg.resume)
        if path is None:
            return 0, 0, [0.0, 0.0, 0.0], None
        st = ckpt.load_checkpoint(path)
        ckpt.check_resumable(st, self.cfg.model, len(self.classes), path, self.classes)
        self._warn_changed(st.get("config") or {}, path)
        if int(st.get("world_size", 1)) != self.dist.world_size:
            raise CheckpointError(f"{path}: saved with {st['world_size']} process(es), now "
                                  f"{self.dist.world_size}; resume with the same world size")
        self.model.load_state_dict(st["model"])
        self.optimizer.load_state_dict(st["optimizer"])
        saved_cfg = st.get("config") or {}
        now_cfg = ckpt.plain(asdict(self.cfg))
        if all(saved_cfg.get(k) == now_cfg.get(k) for k in self._SCHEDULE_KEYS):
            self.scheduler.load_state_dict(st["scheduler"])
        # else: timm's scheduler state holds its length and lrs; the one just built for the new
        # options (e.g. a raised --epochs) is right, and it is a function of the step count.
        if self.ema is not None and st.get("ema") is not None:
            self.ema.module.load_state_dict(st["ema"])
        if self.scaler is not None and st.get("scaler"):
            self.scaler.load_state_dict(st["scaler"])
        self.history = list(st.get("history", []))
        self.log(f"resume: {path} at epoch {st['epoch']} step {st['step_in_epoch']}")
        sums, rng = list(st["epoch_sums"]), st["rng"]
        if st.get("rank_states"):
            mine = st["rank_states"][self.dist.rank]
            sums, rng = list(mine["epoch_sums"]), mine["rng"]
        rng = rng if st["step_in_epoch"] else None  # epoch starts reseed anyway
        return int(st["epoch"]), int(st["step_in_epoch"]), sums, rng

    _SCHEDULE_KEYS = ("epochs", "sched", "lr", "lr_base", "lr_base_batch", "batch_size", "warmup_epochs",
                      "warmup_lr", "min_lr", "max_steps_per_epoch")

    # Options whose change makes a resumed run differ from an uninterrupted one.
    _RESUME_KEYS = ("data", "recipe", "batch_size", "lr", "lr_base", "lr_base_batch", "opt", "sched",
                    "weight_decay", "warmup_epochs", "warmup_lr", "min_lr", "label_smoothing", "drop_path",
                    "clip_grad", "ema", "ema_decay", "amp", "seed", "checkpoint", "freeze_backbone",
                    "head_width_scale", "img_size", "crop_scale", "hflip", "color_jitter", "auto_augment",
                    "interpolation", "mixup", "cutmix", "val_fraction", "max_steps_per_epoch")

    def _warn_changed(self, saved: dict, path) -> None:
        now = ckpt.plain(asdict(self.cfg))
        changed = [f"{k} {saved[k]!r} -> {now[k]!r}" for k in self._RESUME_KEYS
                   if k in saved and saved[k] != now.get(k)]
        if changed:
            self.log(f"resume: warning: options differ from the run in {path}: {'; '.join(changed)} "
                     "(continuing with the new values; use --no-resume or another --output to start afresh)")

    # ---- outputs
    def write_logs(self) -> None:
        if not self.main or not self.history:
            return
        keys = list(self.history[0])
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(self.history)
        atomic_write_text(self.out / "log.csv", buf.getvalue())
        atomic_write_text(self.out / "log.json", to_json(self.history, indent=1))
        from edgevision.training.plots import plot_curves

        plot_curves(self.history, self.out / "curves.png")


def _worker_init(worker_id: int) -> None:
    """DataLoader workers ignore Ctrl-C/SIGTERM sent to the whole process group (a terminal,
    a job scheduler): the main process checkpoints and shuts them down; a worker that died on
    the signal would crash the run instead."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)


def _progress(total: int, initial: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, leave=True,
                dynamic_ncols=True, mininterval=1.0, file=sys.stderr)


def _tensorboard(run: Run):
    if not (run.cfg.tensorboard and run.main):
        return None
    from torch.utils.tensorboard import (
        SummaryWriter,  # checked by train() before any work
    )

    return SummaryWriter(str(run.out / "tensorboard"))


def train(config: TrainConfig | dict) -> dict:
    """Run a training job; returns the summary dict (also written to output/summary.json)."""
    cfg = make_config(**config) if isinstance(config, dict) else config
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError(f"--epochs and --batch-size must be >= 1; got {cfg.epochs} and {cfg.batch_size}")
    if cfg.freeze_backbone and not cfg.checkpoint:
        raise ValueError("--freeze-backbone needs --checkpoint (pretrained weights): a randomly "
                         "initialised backbone would stay random")
    if cfg.tensorboard:
        check_tensorboard()
    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    set_deterministic(cfg.deterministic)
    run = None
    try:
        run = Run(cfg)
        return _train(run)
    finally:
        if run is not None:
            cleanup(run.dist)
        torch.set_num_threads(threads_before)
        if cfg.deterministic and not was_deterministic:  # leave a library caller's process as found
            torch.use_deterministic_algorithms(False)


def _train(run: Run) -> dict:
    cfg = run.cfg
    if run.out.exists() and not run.out.is_dir():
        raise NotADirectoryError(f"--output must be a folder; {run.out} is a file")
    run.out.mkdir(parents=True, exist_ok=True)
    if run.main:  # temp files of checkpoint writes cut short by a crash (SIGKILL, power loss)
        for tmp in run.out.glob(".*.tmp"):
            if tmp.name.startswith((f".{ckpt.LAST}.", ".model.safetensors.", ".model_ema.safetensors.")):
                tmp.unlink(missing_ok=True)
    _seed_everything(cfg.seed)
    train_samples, val_samples = run.build_data()
    _seed_everything(cfg.seed)  # model init does not depend on the data scan
    model = run.build_model()
    mean, std = model_norm(model)
    run.build_loaders(train_samples, val_samples, mean, std)
    run.build_optim()
    run.history = []
    start_epoch, start_step, sums, rng = run.maybe_resume()
    run.log(f"train: {cfg.model} on {len(run.train_set)} images, {len(run.classes)} classes, "
            f"{run.dist.world_size} process(es) x batch {cfg.batch_size} = {run.global_batch}, "
            f"lr {run.lr:.3g}, {cfg.epochs} epochs of {run.steps_per_epoch} steps, device {run.device}"
            + (f", amp {run.amp_dtype}" if run.amp_dtype else ""))
    if cfg.recipe == "finetune" and not cfg.checkpoint:
        run.log("warning: --recipe finetune without --checkpoint trains from scratch with fine-tuning "
                "settings; pass --checkpoint WEIGHTS to start from pretrained weights")
    if start_epoch >= cfg.epochs:
        run.log(f"resume: the run in {run.out} already finished {start_epoch} epochs; nothing to train "
                "(use --no-resume or another --output to start afresh, or raise --epochs)")
    tb = _tensorboard(run)
    stop = _Stop(verbose=run.main)
    stop.install()
    kill_after = int(os.environ.get(KILL_ENV, "0") or 0)
    t_start = time.perf_counter()
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if rng is not None:
                ckpt.set_rng_state(rng)  # mid-epoch resume: continue the saved streams
                rng = None
            else:
                _seed_everything(_epoch_seed(cfg.seed, epoch, run.dist.rank))
                sums = [0.0, 0.0, 0.0]
            stopped = _train_epoch(run, epoch, start_step, sums, stop, kill_after)
            if stopped:
                return {"interrupted": True, "epoch": epoch}
            start_step = 0
            _end_epoch(run, epoch, sums, tb)
    finally:
        stop.restore()
        if tb is not None:
            tb.close()
    return _finish(run, time.perf_counter() - t_start)


def _train_epoch(run: Run, epoch: int, start_step: int, sums: list, stop: _Stop, kill_after: int) -> bool:
    """Train one epoch (from start_step); True when stopped by a signal (checkpoint written)."""
    cfg = run.cfg
    run.net.train()
    if cfg.freeze_backbone:
        _freeze_bn_stats(run.model)
    loader = run.train_loader(epoch, start_step)
    bar = _progress(run.steps_per_epoch, start_step, f"epoch {epoch + 1}/{cfg.epochs}",
                    run.main and cfg.progress)
    t0, seen = time.perf_counter(), 0
    acc_t = torch.zeros(2, dtype=torch.float64, device=run.device)  # loss sum, correct
    step = start_step
    for images, targets in loader:
        images = images.to(run.device, non_blocking=True)
        targets = targets.to(run.device, non_blocking=True)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        run.scheduler.step_update(num_updates=epoch * run.steps_per_epoch + step)
        hard = targets
        if run.mixup is not None:
            images, targets = run.mixup(images, targets)
        loss, logits = train_step(run.net, images, targets, run.optimizer, run.loss_fn, run.amp_dtype,
                                  run.scaler, cfg.clip_grad)
        step += 1
        if run.ema is not None:
            run.ema.update(run.model, step=epoch * run.steps_per_epoch + step)
        n = hard.numel()
        # Running sums stay on the device: no host sync per step (it stalls GPUs).
        acc_t += torch.stack([loss.double() * n, (logits.argmax(1) == hard).sum().double()])
        seen += n
        bar.update(1)
        if run.main and cfg.progress and (step % 20 == 0 or step == run.steps_per_epoch):
            ls, cs = acc_t.tolist()
            done = sums[2] + seen
            ips = seen * run.dist.world_size / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{(sums[0] + ls) / done:.3f}", acc=f"{100 * (sums[1] + cs) / done:.1f}",
                            ips=f"{ips:.0f} img/s", refresh=False)
        if kill_after and epoch * run.steps_per_epoch + step >= kill_after:
            # Test hook: a crash (SIGKILL) or a polite stop (SIGTERM) at a known step.
            sig = getattr(signal, "SIG" + os.environ.get(KILL_SIGNAL_ENV, "KILL"))
            if os.environ.get(KILL_GROUP_ENV):  # as a terminal's Ctrl-C: DataLoader workers get it too
                os.killpg(os.getpgid(0), sig)
            else:
                os.kill(os.getpid(), sig)
            kill_after = 0
        flag = float(stop.signum != 0)
        if run.dist.enabled:  # every process must stop at the same step
            flag = all_reduce_sum([flag], run.device, run.dist)[0]
        if flag:
            _fold(sums, acc_t, seen)
            run.save(epoch, step, sums)
            barrier(run.dist)
            bar.close()
            run.log(f"stopped by signal at epoch {epoch + 1} step {step}; checkpoint "
                    f"{run.out / ckpt.LAST}; rerun the same command to continue")
            return True
    bar.close()
    _fold(sums, acc_t, seen)
    run.epoch_time = time.perf_counter() - t0
    run.epoch_ips = seen * run.dist.world_size / max(run.epoch_time, 1e-9)
    return False


def _fold(sums: list, acc_t: torch.Tensor, seen: int) -> None:
    """Add the device-side running sums of this stretch of steps into the epoch's sums."""
    ls, cs = acc_t.tolist()
    sums[0] += ls
    sums[1] += cs
    sums[2] += seen


def _end_epoch(run: Run, epoch: int, sums: list, tb) -> None:
    cfg = run.cfg
    loss_sum, correct, count = all_reduce_sum(sums, run.device, run.dist)
    eval_model = run.ema.module if run.ema is not None else run.model
    val = evaluate_model(eval_model, run.val_loader, run.device, len(run.classes), run.amp_dtype,
                         cfg.channels_last, run.dist)
    row = {"epoch": epoch + 1, "lr": run.optimizer.param_groups[0]["lr"],
           "train_loss": loss_sum / max(count, 1), "train_acc": 100 * correct / max(count, 1),
           "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"],
           "img_per_s": getattr(run, "epoch_ips", 0.0), "epoch_s": getattr(run, "epoch_time", 0.0)}
    run.history.append(row)
    run.scheduler.step(epoch + 1)
    run.save(epoch + 1, 0)
    run.write_logs()
    if tb is not None:
        for k, v in row.items():
            if k != "epoch":
                tb.add_scalar(k, v, epoch + 1)
    run.log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.1f}% "
            f"| val loss {row['val_loss']:.4f} top-1 {row['val_top1']:.2f}% top-5 {row['val_top5']:.2f}% "
            f"| {row['img_per_s']:.0f} img/s")
    barrier(run.dist)


def _finish(run: Run, seconds: float) -> dict:
    cfg = run.cfg
    meta = {"num_classes": len(run.classes), "classes": run.classes, "img_size": cfg.img_size,
            "crop_pct": cfg.crop_pct, "interpolation": run.val_interpolation,
            "mean": list(model_norm(run.model)[0]),
            "std": list(model_norm(run.model)[1])}
    if cfg.head_width_scale != 1.0:
        meta["head_width"] = prelogits_layer(unwrap(run.model)).out_channels
    weights = run.out / "model.safetensors"
    if run.main:
        save_model(run.model, weights, cfg.model, extra=meta)
        if run.ema is not None:
            save_model(run.ema.module, run.out / "model_ema.safetensors", cfg.model, extra=meta)
    last = run.history[-1] if run.history else {}
    best = max(run.history, key=lambda h: h["val_top1"]) if run.history else {}
    summary = {
        "model": cfg.model, "recipe": cfg.recipe, "data": run.data_dir, "classes": run.classes,
        "num_classes": len(run.classes), "train_images": len(run.train_set), "epochs": cfg.epochs,
        "world_size": run.dist.world_size, "global_batch": run.global_batch, "lr": run.lr,
        "final_val_top1": last.get("val_top1"), "final_val_top5": last.get("val_top5"),
        "final_train_loss": last.get("train_loss"), "first_train_loss": run.history[0]["train_loss"]
        if run.history else None, "best_val_top1": best.get("val_top1"), "best_epoch": best.get("epoch"),
        "chance_top1": 100.0 / len(run.classes), "seconds": seconds,
        "weights": str(weights), "ema_weights": str(run.out / "model_ema.safetensors") if run.ema else None,
        "checkpoint": str(run.out / ckpt.LAST), "scan": run.scan_reports, "output": str(run.out),
    }
    skipped = sum(r["skipped_corrupt"] + r["skipped_not_image"] for r in run.scan_reports)
    if run.main:
        atomic_write_text(run.out / "summary.json", to_json(summary, indent=1))
        run.log(f"done: {cfg.model} val top-1 {summary['final_val_top1']:.2f}% (chance "
                f"{summary['chance_top1']:.0f}%; best {summary['best_val_top1']:.2f}% at epoch "
                f"{summary['best_epoch']}) in {seconds:.0f} s; weights {weights}; logs, curves.png, "
                f"summary.json in {run.out}"
                + (f"; skipped {skipped} unreadable or non-image files (listed in summary.json)" if skipped else ""))
    return summary


# --------------------------------------------------------------------------- evaluate
def evaluate(model_name: str, data: str, checkpoint: str, output: str | None = None,
             img_size: int | None = None, batch_size: int = 64, workers: int = 2,
             device: str = "auto") -> dict:
    """Top-1/top-5, per-class accuracy and a confusion-matrix PNG for a trained model."""
    from edgevision.factory import create_model
    from edgevision.training.plots import plot_confusion

    if not checkpoint:
        raise ValueError("--checkpoint is required (model.safetensors from `edgevision train`)")
    out = Path(output) if output else Path(checkpoint).resolve().parent / "eval"
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--output must be a folder; {out} is a file")
    train_state = None
    if Path(checkpoint).suffix != ".safetensors" and Path(checkpoint).is_file():
        try:  # a training checkpoint (last.pth) carries the classes and settings of its run
            train_state = ckpt.load_checkpoint(checkpoint)
        except CheckpointError:
            train_state = None  # plain weights: read below, with their own clear errors
    if train_state is not None:
        run_cfg = train_state.get("config") or {}
        if train_state["model_name"] != model_name:
            raise CheckpointError(f"{checkpoint}: training checkpoint of model {train_state['model_name']!r}, "
                                  f"not {model_name!r}")
        meta = {"classes": json.dumps(train_state["classes"])}
        for k in ("img_size", "crop_pct"):
            if k in run_cfg:
                meta[k] = json.dumps(run_cfg[k])
        if run_cfg.get("interpolation"):
            meta["interpolation"] = "bicubic" if run_cfg["interpolation"] == "random" else run_cfg["interpolation"]
    else:
        meta = read_metadata(checkpoint)
    classes = json.loads(meta["classes"]) if "classes" in meta else None
    root, val = D.find_splits(data)
    root = val or root
    samples, classes, rep = D.scan_folder(root, classes)
    dev = pick_device(device)
    model = create_model(model_name, num_classes=len(classes))
    if train_state is not None:
        sd = train_state["model"]
        head_w, head = sd.get("conv_head.weight"), prelogits_layer(model)
        if head_w is not None and head is not None and head_w.shape[0] != head.out_channels:
            resize_head(model, None, len(classes), width=head_w.shape[0])
        from edgevision.checkpoints import load_state_dict_strict

        load_state_dict_strict(model, sd, f"{checkpoint} -> {model_name}")
    else:
        from edgevision.checkpoints import load_checkpoint
        from edgevision.registry import model_info

        if "head_width" in meta:  # trained with --head-width-scale: rebuild that head, then load
            resize_head(model, None, len(classes), width=int(json.loads(meta["head_width"])))
        load_checkpoint(model, checkpoint, model_info(model_name).converters, model_name)
    model = model.to(dev)
    size = img_size or int(json.loads(meta.get("img_size", "224")))
    mean, std = (tuple(json.loads(meta[k])) if k in meta else d
                 for k, d in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)))
    if "mean" not in meta:
        mean, std = model_norm(model)
    crop_pct = float(json.loads(meta.get("crop_pct", "1.0")))
    interp = meta.get("interpolation", "bilinear")
    ds = D.ImageFolderDataset(samples, classes, D.build_transforms(size, mean, std, False, crop_pct=crop_pct,
                                                                   interpolation=interp))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers)
    res = evaluate_model(model, loader, dev, len(classes))
    out.mkdir(parents=True, exist_ok=True)
    png = plot_confusion(res["confusion"], classes, out / "confusion_matrix.png",
                         f"{model_name}: top-1 {res['top1']:.1f}%")
    result = {"model": model_name, "checkpoint": str(checkpoint), "data": str(root),
              "num_images": res["count"], "top1": res["top1"], "top5": res["top5"], "loss": res["loss"],
              "per_class_acc": dict(zip(classes, res["per_class_acc"])),
              "confusion_matrix": res["confusion"].tolist(), "classes": classes,
              "confusion_png": str(png), "scan": rep.as_dict(), "img_size": size}
    atomic_write_text(out / "eval.json", to_json(result, indent=1))
    result["json"] = str(out / "eval.json")
    return result
