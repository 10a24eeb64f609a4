"""The sequence task for the training engine: sensor windows [B, C, T] -> activity classes.

``edgevision train fusionactnet --data basicmotions --batch-size 8`` (or --data a UCI HAR /
MotionSense / BasicMotions .ts folder) runs through the same engine as image classification:
resume, DDP, per-epoch logs, curves, summary.json; the confusion matrix of the last epoch is
written as ``confusion_matrix.png`` beside them. The validation split is the data set's own
test split (subjects held out for UCI HAR and MotionSense): no model is selected on it here,
read the final epoch (``final_val_acc``) as the test accuracy.

FusionActNet's staged training (two experts, then the guidance module) runs as its three
decoupled losses in one loop (see :mod:`edgevision.tasks.sequence.fusion`: each part gets
exactly the gradient of its own stage); the log shows each part's loss and the guidance
module's static/dynamic routing accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgevision.io import atomic_write_text
from edgevision.jsonout import to_json
from edgevision.tasks.base import EvalRun, Task
from edgevision.tasks.sequence.data import (
    SequenceData,
    SequenceSplit,
    WindowDataset,
    load_sequence_data,
)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def is_fusion(model: nn.Module) -> bool:
    from edgevision.tasks.sequence.fusion import FusionActNet

    return isinstance(unwrap(model), FusionActNet)


def build_sequence_model(name: str, num_classes: int, in_chans: int, window: int | None,
                         static_classes=None, **kwargs) -> nn.Module:
    """create_model for a sequence model built for (in_chans, window) and, for FusionActNet,
    the static classes; the pretrained_cfg's input_size becomes (in_chans, window)."""
    from edgevision.factory import create_model
    from edgevision.registry import model_info

    info = model_info(name)
    if info.task != "sequence":
        raise ValueError(f"{name} is a {info.task} model; the sequence task needs one of the sequence models "
                         f"(edgevision list --task sequence)")
    if info.family == "fusionactnet":
        kwargs["static_classes"] = static_classes
    model = create_model(name, num_classes=num_classes, in_chans=in_chans, window=window, **kwargs)
    if window is not None:
        model.pretrained_cfg["input_size"] = (in_chans, window)
    return model


class AugmentedWindows(WindowDataset):
    """Training windows with light, reproducible augmentation: a random gain per channel
    (N(1, 0.1)) and Gaussian jitter (0.01 x the channel's std), drawn from (seed, epoch, index)
    so a resumed run sees the same samples."""

    def __init__(self, split: SequenceSplit, seed: int = 0, augment: bool = True):
        super().__init__(split)
        self.seed, self.epoch, self.augment = seed, 0, augment
        self.std = self.x.std(dim=(0, 2)).clamp_min(1e-6) if len(self.x) else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        if not self.augment:
            return x, y
        g = torch.Generator().manual_seed(hash((self.seed, self.epoch, int(i))) % 2**63)
        gain = 1.0 + 0.1 * torch.randn(x.shape[0], 1, generator=g)
        noise = 0.01 * self.std[:, None] * torch.randn(x.shape, generator=g)
        return x * gain + noise, y


@torch.inference_mode()
def evaluate_windows(model: nn.Module, loader, device, num_classes: int, amp_dtype=None, dist_info=None) -> dict:
    """Loss, accuracy (%), per-class accuracy and confusion matrix; for FusionActNet also the
    guidance module's routing accuracy (static vs dynamic) and each expert's accuracy on its
    own superclass."""
    from edgevision.training.distributed import all_reduce_sum

    model.eval()
    fusion = is_fusion(model)
    cm = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device)
    loss_sum, route_ok, expert_ok = 0.0, 0.0, 0.0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            if fusion:
                m = unwrap(model)
                parts = model(x, parts=True)
                logits = m.fuse(*(p.float() for p in parts))
                sup = m.is_static[y]
                route_ok += ((parts[2] > 0) == sup).sum().item()
                local = m.local_index[y]
                hit = torch.where(sup, parts[0].argmax(1) == local, parts[1].argmax(1) == local)
                expert_ok += hit.sum().item()
            else:
                logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        cm += torch.bincount(y * num_classes + logits.argmax(1), minlength=num_classes**2
                             ).reshape(num_classes, num_classes).double()
    if dist_info is not None and dist_info.enabled:
        import torch.distributed as dist

        dist.all_reduce(cm)
        loss_sum, route_ok, expert_ok = all_reduce_sum([loss_sum, route_ok, expert_ok], device, dist_info)
    cm = cm.cpu().numpy().astype(np.int64)
    n = max(int(cm.sum()), 1)
    acc = float(np.trace(cm) / n * 100)
    res = {"loss": loss_sum / n, "acc": acc, "score": acc, "count": int(cm.sum()),
           "per_class_acc": (np.diag(cm) / np.maximum(cm.sum(1), 1) * 100).tolist(), "confusion": cm}
    if fusion:
        res.update(route_acc=route_ok / n * 100, expert_acc=expert_ok / n * 100)
    return res


class SequenceTask(Task):
    name = "sequence"
    score_key = "val_acc"
    bar_stats = ("acc",)

    # ---- data and model
    def prepare(self, run) -> None:
        cfg = run.cfg
        data = load_sequence_data(cfg.data)
        self._check_model_task(cfg.model)
        self.data = data
        run.classes, run.num_classes = list(data.classes), len(data.classes)
        run.data_dir = data.source
        run.data_report = [{"dataset": data.name, "train_windows": len(data.train), "test_windows": len(data.test),
                            "skipped_nan_windows": data.skipped_nan, "window": data.window,
                            "channels": list(data.channels), **{k: v for k, v in data.notes.items()}}]
        static = [data.classes[i] for i in data.static_classes]
        run.log(f"data: {data.name} from {data.source}: {len(data.train)} train / {len(data.test)} test windows of "
                f"{len(data.channels)} channels x {data.window} steps, {len(data.classes)} classes "
                f"(static: {', '.join(static)})" + (f"; skipped {data.skipped_nan} windows with NaNs"
                                                    if data.skipped_nan else ""))

    @staticmethod
    def _check_model_task(name: str) -> None:
        from edgevision.registry import model_info

        if model_info(name).task != "sequence":
            raise ValueError(f"{name} is not a sequence model (edgevision list --task sequence)")

    def build_model(self, run) -> nn.Module:
        d = self.data
        model = build_sequence_model(run.cfg.model, len(d.classes), len(d.channels), d.window, d.static_classes,
                                     drop_path_rate=run.cfg.drop_path)
        if run.cfg.checkpoint:
            from edgevision.checkpoints import load_checkpoint

            load_checkpoint(model, run.cfg.checkpoint, model_name=run.cfg.model)
            run.log(f"fine-tune: loaded {run.cfg.checkpoint}")
        return model

    def build_datasets(self, run, model):
        return AugmentedWindows(self.data.train, run.cfg.seed), WindowDataset(self.data.test)

    def to_device(self, run, batch, train: bool):
        x, y = batch
        return x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)

    # ---- training
    def loss(self, run, model, x, y):
        n = torch.tensor(float(len(y)), device=y.device)
        ls = run.cfg.label_smoothing if run.cfg is not None else 0.0
        if is_fusion(model):
            m = unwrap(model)
            parts = model(x, parts=True)
            losses = m.losses(parts, y, label_smoothing=ls)
            with torch.no_grad():
                fused = m.fuse(*(p.detach().float() for p in parts))
                stats = {"n": n, "acc": 100.0 * (fused.argmax(1) == y).sum().double(),
                         "route_acc": 100.0 * ((parts[2].detach() > 0) == m.is_static[y]).sum().double()}
                stats.update({k: v.detach().double() * n for k, v in losses.items() if k != "loss"})
            return losses["loss"], stats
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=ls)
        return loss, {"n": n, "acc": 100.0 * (logits.detach().argmax(1) == y).sum().double()}

    # ---- evaluation
    def evaluate(self, run, model, loader) -> dict:
        return evaluate_windows(model, loader, run.device, run.num_classes, run.amp_dtype, run.dist)

    def val_row(self, metrics):
        row = {"val_loss": metrics["loss"], "val_acc": metrics["acc"]}
        if "route_acc" in metrics:
            row.update(val_route_acc=metrics["route_acc"], val_expert_acc=metrics["expert_acc"])
        return row

    def summary(self, metrics) -> str:
        extra = (f" routing {metrics['route_acc']:.1f}% experts {metrics['expert_acc']:.1f}%"
                 if "route_acc" in metrics else "")
        return f"val loss {metrics['loss']:.4f} acc {metrics['acc']:.2f}%{extra}"

    def report(self, run, metrics, out_dir):
        from edgevision.training.plots import plot_confusion

        png = plot_confusion(metrics["confusion"], list(run.classes), Path(out_dir) / "confusion_matrix.png",
                             f"{getattr(run, 'model_name', '') or ''} acc {metrics['acc']:.1f}%".strip())
        return {"confusion_png": str(png)}

    def weights_meta(self, run) -> dict:
        d = self.data
        return {"num_classes": len(d.classes), "classes": list(d.classes), "task": self.name, "dataset": d.name,
                "channels": list(d.channels), "in_chans": len(d.channels), "window": d.window,
                "static_classes": list(d.static_classes)}

    def summary_fields(self, run, last, best) -> dict:
        out = {"final_val_acc": last.get("val_acc"), "chance_acc": 100.0 / max(run.num_classes, 1),
               "test_split": "the data set's own test split (read final_val_acc as test accuracy)"}
        metrics = getattr(run, "last_metrics", None)
        if metrics is not None and run.main:
            run.model_name = run.cfg.model
            out.update(self.report(run, metrics, run.out))
            out["per_class_acc"] = dict(zip(run.classes, metrics["per_class_acc"]))
            out["confusion_matrix"] = metrics["confusion"].tolist()
        return out

    def done_line(self, run, summary) -> str:
        return (f"test acc {summary['final_val_acc']:.2f}% (chance {summary['chance_acc']:.0f}%)"
                + (f"; confusion matrix {summary['confusion_png']}" if summary.get("confusion_png") else ""))

    # ---- edgevision eval
    def evaluate_checkpoint(self, model_name, data, checkpoint, output=None, img_size=None, batch_size=64,
                            workers=0, device="auto") -> dict:
        """Accuracy, per-class accuracy and confusion PNG of trained weights on the data's test split."""
        from edgevision.checkpoints import load_checkpoint, read_metadata
        from edgevision.training.distributed import pick_device

        self._check_model_task(model_name)
        if not checkpoint:
            raise ValueError("--checkpoint is required (model.safetensors from `edgevision train`)")
        meta = {k: json.loads(v) for k, v in read_metadata(checkpoint).items()
                if k in ("classes", "window", "in_chans", "static_classes")}
        d: SequenceData = load_sequence_data(data)
        if "classes" in meta and list(meta["classes"]) != list(d.classes):
            raise ValueError(f"{checkpoint} was trained on classes {meta['classes']}; {data} has {list(d.classes)}")
        dev = pick_device(device)
        model = build_sequence_model(model_name, len(d.classes), len(d.channels), d.window, d.static_classes)
        load_checkpoint(model, checkpoint, model_name=model_name)
        model.to(dev)
        loader = torch.utils.data.DataLoader(WindowDataset(d.test), batch_size=batch_size, num_workers=workers)
        out = Path(output) if output else Path(checkpoint).resolve().parent / "eval"
        run = EvalRun(device=dev, classes=list(d.classes), num_classes=len(d.classes), out=out)
        run.model_name = model_name
        res = self.evaluate(run, model, loader)
        out.mkdir(parents=True, exist_ok=True)
        files = self.report(run, res, out)
        result = {"model": model_name, "task": self.name, "checkpoint": str(checkpoint), "data": d.source,
                  "num_windows": res["count"], "acc": res["acc"], "loss": res["loss"],
                  # the names `edgevision eval` prints for classifiers (top-5: not meaningful here)
                  "num_images": res["count"], "top1": res["acc"], "top5": float("nan"),
                  "per_class_acc": dict(zip(d.classes, res["per_class_acc"])), "classes": list(d.classes),
                  "confusion_matrix": res["confusion"].tolist(), "skipped_nan_windows": d.skipped_nan, **files}
        for k in ("route_acc", "expert_acc"):
            if k in res:
                result[k] = res[k]
        atomic_write_text(out / "eval.json", to_json(result, indent=1))
        result["json"] = str(out / "eval.json")
        result["per_class"] = result["per_class_acc"]
        result["summary"] = self.summary(res)
        return result
