"""Image classification: ImageFolder data, cross-entropy (Mixup/CutMix), top-1/top-5 and the
confusion matrix, fine-tuning helpers (new head, frozen backbone, slimmer pre-logits layer)."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgevision.checkpoints import (
    CheckpointError,
    CheckpointMismatchError,
    read_metadata,
    read_state_dict,
)
from edgevision.io import atomic_write_text
from edgevision.jsonout import to_json
from edgevision.tasks.base import EvalRun, Task, open_eval_checkpoint


# --------------------------------------------------------------------------- fine-tuning helpers
def classifier_keys(model_name: str, model: nn.Module) -> set[str]:
    """State-dict keys of the classifier: those a num_classes=0 build of the model lacks."""
    from edgevision.factory import create_model

    with torch.device("meta"):
        headless = create_model(model_name, num_classes=0)
    return set(model.state_dict()) - set(headless.state_dict())


def load_backbone(model: nn.Module, model_name: str, path: str, head: set[str] | None = None,
                  keep_matching_head: bool = False):
    """Load every pretrained key but the classifier (its class count differs); strict otherwise.
    ``keep_matching_head``: load the classifier too when the checkpoint has one of exactly the
    model's shapes (a checkpoint fine-tuned for the same number of classes, e.g. to prune or
    distil it further), as timm's initial checkpoints do.

    Returns (detected format, classifier keys left at their fresh initialisation).
    """
    from edgevision.registry import model_info

    sd = read_state_dict(path)
    head = head if head is not None else classifier_keys(model_name, model)
    state = model.state_dict()
    own = {k: v for k, v in state.items() if k not in head}
    candidates = [("edgevision", lambda d: d), *model_info(model_name).converters.items()]
    best = None
    for fmt, fn in candidates:
        try:
            full = fn(dict(sd))
        except Exception:  # a converter for another layout rejects these keys
            continue
        conv = {k: v for k, v in full.items() if k not in head}
        ign = lambda k: k.endswith("num_batches_tracked")  # noqa: E731
        missing = [k for k in own if k not in conv and not ign(k)]
        unexpected = [k for k in conv if k not in own and not ign(k)]
        mism = [(k, tuple(conv[k].shape), tuple(own[k].shape)) for k in own
                if k in conv and conv[k].shape != own[k].shape]
        if not (missing or unexpected or mism):
            load = {k: v for k, v in conv.items() if k in own}
            fresh = head
            if keep_matching_head and head and all(k in full and full[k].shape == state[k].shape for k in head):
                load.update({k: full[k] for k in head})
                fresh = set()
            model.load_state_dict(load, strict=False)
            return fmt, fresh
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


def freeze_bn_stats(model: nn.Module, all_bn: bool = False) -> None:
    """BatchNorms in eval mode (running statistics kept): those with frozen parameters, or with
    ``all_bn`` every one. Fine-tuning on a narrow domain (e.g. grey images) otherwise re-estimates
    the statistics of channels that barely vary there and scales them up by 1/std, which makes
    the network sensitive to small perturbations such as int8 rounding."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            ps = list(m.parameters(recurse=False))
            if all_bn or (ps and not any(p.requires_grad for p in ps)):
                m.eval()


# --------------------------------------------------------------------------- step and metrics
def train_step(model, images, targets, optimizer, loss_fn, amp_dtype=None, scaler=None,
               clip_grad: float | None = None):
    """One optimizer step; returns the detached loss and logits. The engine's step for
    classification, kept as one function for benchmarks/bench_train_step.py."""
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
                   dist_info=None) -> dict:
    """Loss, top-1/top-5 (%) and the confusion matrix over the loader (summed over processes)."""
    from edgevision.training.distributed import all_reduce_sum

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


# --------------------------------------------------------------------------- the task
class ClassificationTask(Task):
    name = "classification"
    score_key = "val_top1"
    bar_stats = ("acc",)

    def prepare(self, run) -> None:
        from edgevision.training import data as D
        from edgevision.training.distributed import barrier

        cfg = run.cfg
        data_dir = cfg.data
        if not data_dir:
            if not cfg.sample_data:
                raise ValueError("--data DIR is required (an ImageFolder: DIR/<class>/<images> or "
                                 "DIR/train + DIR/val); or use --recipe demo for the bundled sample")
            data_dir = run.out / "data"
            if run.main:
                D.prepare_sample_dataset(data_dir)
            barrier(run.dist)
            src = ("the full set in " + str(D.SYSTEM_FASHION_MNIST) if D.sample_source(data_dir) == "full"
                   else "the subset bundled with edgevision")
            run.log(f"data: Fashion-MNIST sample (MIT licence; read from {src}) written as an ImageFolder "
                    f"to {data_dir}")
        train_root, val_root = D.find_splits(data_dir)
        threads = max(1, cfg.workers)
        train_samples, classes, train_rep = D.scan_folder(train_root, None, cfg.scan, threads)
        if val_root is not None:
            val_samples, _, val_rep = D.scan_folder(val_root, classes, cfg.scan, threads)
        else:
            train_samples, val_samples = D.split_samples(train_samples, cfg.val_fraction, cfg.seed)
            val_rep = None
            run.log(f"data: no val/ folder; held out {len(val_samples)} images "
                    f"({cfg.val_fraction:.0%} per class, seed {cfg.seed})")
        for rep in (train_rep, val_rep):
            if rep is not None:
                run.log("data: " + rep.summary())
        run.data_report = [r.as_dict() for r in (train_rep, val_rep) if r is not None]
        if len(classes) < 2:
            raise ValueError(f"{train_root}: found 1 class folder ({classes[0]}); a classifier needs at "
                             f"least 2: DIR/<class>/<images> with one folder per class")
        if not val_samples:
            raise ValueError(f"{val_root or train_root}: no validation images; add a val/ folder or more "
                             "images per class")
        run.classes, run.num_classes, run.data_dir = classes, len(classes), str(data_dir)
        self._samples = (train_samples, val_samples)

    def build_model(self, run) -> nn.Module:
        from edgevision.factory import create_model

        cfg = run.cfg
        model = create_model(cfg.model, num_classes=run.num_classes, drop_path_rate=cfg.drop_path)
        self.head_keys = classifier_keys(cfg.model, model)
        if cfg.head_width_scale != 1.0:
            self.head_keys |= resize_head(model, cfg.head_width_scale, run.num_classes)
            self.head_keys |= classifier_keys(cfg.model, model)
            run.log(f"head: pre-logits width {model.head_hidden_size} ({cfg.head_width_scale:g}x)")
        if cfg.checkpoint:
            fmt, fresh = load_backbone(model, cfg.model, cfg.checkpoint, self.head_keys, keep_matching_head=True)
            if fresh:
                run.log(f"fine-tune: loaded {cfg.checkpoint} ({fmt} format) except the classifier "
                        f"({', '.join(sorted(fresh))}), new head for {run.num_classes} classes")
            else:
                run.log(f"fine-tune: loaded {cfg.checkpoint} ({fmt} format) with its classifier: it has "
                        f"{run.num_classes} outputs like this data set (check that the class order matches)")
        if cfg.freeze_backbone:
            n = freeze_backbone(model, self.head_keys)
            run.log(f"fine-tune: backbone frozen, {n:,} trainable parameters")
        self.teacher = None
        if cfg.teacher:
            from edgevision.training.distill import build_teacher

            self.teacher = build_teacher(cfg, run.classes, run.device, cfg.channels_last)
            run.log(f"distill: teacher {cfg.teacher_model or cfg.model} from {cfg.teacher}, "
                    f"alpha {cfg.distill_alpha:g}, temperature {cfg.distill_temp:g}")
        return model

    def build_datasets(self, run, model):
        from edgevision.training import data as D
        from edgevision.training.runtime import model_norm

        cfg = run.cfg
        mean, std = model_norm(model)
        self.norm = (mean, std)
        aa = D.check_auto_augment(cfg.auto_augment)
        t_train = D.build_transforms(cfg.img_size, mean, std, True, aa, cfg.crop_scale, cfg.hflip,
                                     cfg.color_jitter, interpolation=cfg.interpolation)
        self.val_interpolation = "bicubic" if cfg.interpolation == "random" else cfg.interpolation
        t_val = D.build_transforms(cfg.img_size, mean, std, False, crop_pct=cfg.crop_pct,
                                   interpolation=self.val_interpolation)
        train_samples, val_samples = self._samples
        self.mixup = None
        if cfg.mixup > 0 or cfg.cutmix > 0:
            from timm.data import Mixup
            from timm.loss import SoftTargetCrossEntropy

            if cfg.batch_size % 2:
                raise ValueError(f"Mixup/CutMix needs an even --batch-size; got {cfg.batch_size}")
            self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix,
                               label_smoothing=cfg.label_smoothing, num_classes=run.num_classes)
            self.loss_fn = SoftTargetCrossEntropy()
        else:
            self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        return (D.ImageFolderDataset(train_samples, run.classes, t_train, seed=cfg.seed),
                D.ImageFolderDataset(val_samples, run.classes, t_val, seed=cfg.seed))

    def train_mode(self, run, net) -> None:
        net.train()
        if run.cfg.freeze_backbone or run.cfg.freeze_bn:
            freeze_bn_stats(net, all_bn=run.cfg.freeze_bn)

    def to_device(self, run, batch, train: bool):
        images, targets = super().to_device(run, batch, train)
        if train and self.mixup is not None:
            mixed_images, soft = self.mixup(images, targets)
            return mixed_images, (soft, targets)
        return images, (targets, targets)

    def loss(self, run, model, inputs, targets):
        soft, hard = targets
        logits = model(inputs)
        loss = self.loss_fn(logits, soft)
        if getattr(self, "teacher", None) is not None:
            from edgevision.training.distill import distill_loss

            with torch.no_grad():
                teacher_logits = self.teacher(inputs)
            a = run.cfg.distill_alpha
            loss = (1.0 - a) * loss + a * distill_loss(logits, teacher_logits, run.cfg.distill_temp)
        n = torch.tensor(float(hard.numel()), device=hard.device)
        return loss, {"n": n, "acc": 100.0 * (logits.detach().argmax(1) == hard).sum().double()}

    def evaluate(self, run, model, loader) -> dict:
        res = evaluate_model(model, loader, run.device, run.num_classes, run.amp_dtype,
                             run.channels_last, run.dist)
        res["score"] = res["top1"]
        return res

    def val_row(self, metrics):
        return {"val_loss": metrics["loss"], "val_top1": metrics["top1"], "val_top5": metrics["top5"]}

    def summary(self, metrics) -> str:
        return f"val loss {metrics['loss']:.4f} top-1 {metrics['top1']:.2f}% top-5 {metrics['top5']:.2f}%"

    def epoch_line(self, row) -> str:
        return (f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.1f}% "
                f"| val loss {row['val_loss']:.4f} top-1 {row['val_top1']:.2f}% top-5 {row['val_top5']:.2f}%")

    def report(self, run, metrics, out_dir):
        from edgevision.training.plots import plot_confusion

        png = plot_confusion(metrics["confusion"], run.classes, Path(out_dir) / "confusion_matrix.png",
                             f"{getattr(run, 'model_name', '')}: top-1 {metrics['top1']:.1f}%")
        return {"confusion_png": str(png)}

    def weights_meta(self, run) -> dict:
        from edgevision.training.runtime import model_norm, unwrap

        cfg = run.cfg
        mean, std = model_norm(run.model)
        meta = {"num_classes": run.num_classes, "classes": run.classes, "img_size": cfg.img_size,
                "crop_pct": cfg.crop_pct, "interpolation": self.val_interpolation,
                "mean": list(mean), "std": list(std)}
        if cfg.head_width_scale != 1.0:
            meta["head_width"] = prelogits_layer(unwrap(run.model)).out_channels
        return meta

    def summary_fields(self, run, last, best) -> dict:
        return {"final_val_top1": last.get("val_top1"), "final_val_top5": last.get("val_top5"),
                "best_val_top1": best.get("val_top1"), "chance_top1": 100.0 / run.num_classes,
                "scan": run.data_report}

    def done_line(self, run, summary) -> str:
        skipped = sum(r["skipped_corrupt"] + r["skipped_not_image"] for r in run.data_report)
        return (f"val top-1 {summary['final_val_top1']:.2f}% (chance {summary['chance_top1']:.0f}%; best "
                f"{summary['best_val_top1']:.2f}% at epoch {summary['best_epoch']})"
                + (f"; skipped {skipped} unreadable or non-image files (listed in summary.json)" if skipped else ""))

    # ---- edgevision eval
    def evaluate_checkpoint(self, model_name, data, checkpoint, output=None, img_size=None, batch_size=64,
                            workers=2, device="auto") -> dict:
        """Top-1/top-5, per-class accuracy and a confusion-matrix PNG for a trained model."""
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        from edgevision.factory import create_model
        from edgevision.training import data as D
        from edgevision.training.distributed import pick_device
        from edgevision.training.runtime import model_norm

        out, train_state = open_eval_checkpoint(checkpoint, output, model_name)
        if train_state is not None:
            run_cfg = train_state.get("config") or {}
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
                     for k, d in (("mean", IMAGENET_DEFAULT_MEAN), ("std", IMAGENET_DEFAULT_STD)))
        if "mean" not in meta:
            mean, std = model_norm(model)
        crop_pct = float(json.loads(meta.get("crop_pct", "1.0")))
        interp = meta.get("interpolation", "bilinear")
        ds = D.ImageFolderDataset(samples, classes, D.build_transforms(size, mean, std, False, crop_pct=crop_pct,
                                                                       interpolation=interp))
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers)
        run = EvalRun(device=dev, classes=classes, num_classes=len(classes), out=out)
        run.model_name = model_name
        res = self.evaluate(run, model, loader)
        out.mkdir(parents=True, exist_ok=True)
        files = self.report(run, res, out)
        result = {"model": model_name, "task": self.name, "checkpoint": str(checkpoint), "data": str(root),
                  "num_images": res["count"], "top1": res["top1"], "top5": res["top5"], "loss": res["loss"],
                  "per_class_acc": dict(zip(classes, res["per_class_acc"])),
                  "confusion_matrix": res["confusion"].tolist(), "classes": classes,
                  **files, "scan": rep.as_dict(), "img_size": size}
        atomic_write_text(out / "eval.json", to_json(result, indent=1))
        result["json"] = str(out / "eval.json")
        result["summary"] = (f"{model_name} on {root}: {res['count']} images, top-1 {res['top1']:.2f}%, "
                             f"top-5 {res['top5']:.2f}%")
        result["per_class"] = {c: f"{a:6.2f}%" for c, a in result["per_class_acc"].items()}
        return result

