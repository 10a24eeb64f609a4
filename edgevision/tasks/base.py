"""What the task-agnostic training engine asks of a task, and the task registry.

The engine (:mod:`edgevision.training`) owns the loop, checkpoint/resume, DDP, signals,
progress bars, logs and curves. A :class:`Task` owns everything that depends on what the
model predicts: reading the data (and reporting bad samples), building the model, batching,
moving a batch to the device, the loss, the metrics, and the plots/JSON of an evaluation.

The engine calls, in this order::

    task.prepare(run)                         # scan data; sets run.classes, run.num_classes, ...
    model = task.build_model(run)             # engine moves it to the device, wraps DDP
    train_set, val_set = task.build_datasets(run, model)
    loader(collate_fn=task.collate_fn(train))
    for batch in loader:                      # each step
        inputs, targets = task.to_device(run, batch, train=True)
        loss, stats = task.loss(run, net, inputs, targets)       # under autocast
    metrics = task.evaluate(run, model, val_loader)              # each epoch
    row = task.val_row(metrics); line = task.summary(metrics)

``run`` is the engine's :class:`~edgevision.training.loop.Run` (or, for ``edgevision eval``,
an :class:`EvalRun`): it has ``cfg`` (the TrainConfig; None under eval), ``device``,
``dist`` (DistInfo), ``amp_dtype``, ``channels_last``, ``out``, ``log(msg)``, ``main`` and,
after :meth:`Task.prepare`, ``classes``, ``num_classes``, ``data_dir``, ``data_report``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn


class Task:
    """Base class: override what your task needs; the defaults fit simple tensor batches."""

    name = "base"
    #: column of the epoch log (a key of :meth:`val_row`) that is maximised: best epoch
    score_key = "val_score"
    #: training statistics the progress bar shows (keys of the stats dict of :meth:`loss`)
    bar_stats: tuple[str, ...] = ()

    # ---- data and model
    def prepare(self, run) -> None:
        """Read and check the data (``run.cfg.data``). Set ``run.classes`` (names of what is
        predicted, background excluded), ``run.num_classes`` (the model's ``num_classes``),
        ``run.data_dir`` (str) and ``run.data_report`` (list of JSON-able dicts: counts of
        skipped/bad samples). Bad input: one clear ValueError."""
        raise NotImplementedError

    def build_model(self, run) -> nn.Module:
        """The model for ``run.cfg.model`` with ``run.num_classes`` outputs (on the CPU)."""
        from edgevision.factory import create_model

        return create_model(run.cfg.model, num_classes=run.num_classes)

    def build_datasets(self, run, model: nn.Module) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]:
        """(train_set, val_set). A train set with ``set_epoch(epoch)`` gets it called each
        epoch: seed augmentation from (seed, epoch, index) so a resumed run sees the same data."""
        raise NotImplementedError

    def collate_fn(self, train: bool):
        """The DataLoader's collate_fn (None: torch's default stacking)."""
        return None

    def to_device(self, run, batch, train: bool) -> tuple[Any, Any]:
        """(inputs, targets) on ``run.device`` (channels_last when ``run.channels_last``)."""
        inputs, targets = batch
        inputs = inputs.to(run.device, non_blocking=True)
        if run.channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return inputs, targets.to(run.device, non_blocking=True)

    # ---- training
    def train_mode(self, run, net: nn.Module) -> None:
        """Put the model in training mode at each epoch start (e.g. keep frozen BatchNorms in eval)."""
        net.train()

    def loss(self, run, model: nn.Module, inputs, targets) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss to backpropagate, stats). ``stats`` are detached batch *sums* as 0-d device
        tensors and must include ``"n"`` (samples in the batch); the engine adds them up over the
        epoch (no host sync per step) and logs ``train_<key> = sum / n`` (and ``train_loss``)."""
        raise NotImplementedError

    # ---- evaluation
    def evaluate(self, run, model: nn.Module, loader) -> dict:
        """Metrics over ``loader`` (each DDP rank sees its share; reduce over ``run.dist``).
        Must hold ``"score"`` (higher is better) and ``"count"``; per-class results JSON-able."""
        raise NotImplementedError

    def val_row(self, metrics: dict) -> dict[str, float]:
        """Scalar ``val_*`` columns of the epoch log (one of them is :attr:`score_key`)."""
        return {"val_loss": float(metrics.get("loss", float("nan"))), "val_score": float(metrics["score"])}

    def summary(self, metrics: dict) -> str:
        """One log line, e.g. ``val mAP@.5 0.612 mAP 0.35``."""
        return f"val score {metrics['score']:.4f}"

    def epoch_line(self, row: dict) -> str | None:
        """The epoch's log line from its log row (None: the engine's generic line)."""
        return None

    def done_line(self, run, summary: dict) -> str | None:
        """What the final "done:" line says about the result (None: score and best epoch)."""
        return None

    def report(self, run, metrics: dict, out_dir: Path) -> dict[str, str]:
        """Write plots/JSON of an evaluation into ``out_dir``; returns {what: path}."""
        return {}

    def weights_meta(self, run) -> dict:
        """Metadata stored beside the final weights (read back by ``edgevision eval/predict``)."""
        return {"num_classes": run.num_classes, "classes": list(run.classes), "task": self.name}

    def summary_fields(self, run, last: dict, best: dict) -> dict:
        """Task-specific keys of summary.json (``last``/``best``: epoch log rows)."""
        return {}

    def evaluate_checkpoint(self, model_name: str, data: str, checkpoint: str, output: str | None,
                            **options) -> dict:
        """``edgevision eval``: metrics of trained weights on DIR's val split, report files,
        eval.json; returns the result dict (``summary`` line, ``per_class`` dict, ``json`` path)."""
        raise NotImplementedError(f"edgevision eval does not support the {self.name} task yet")


@dataclass
class EvalRun:
    """The run-like object tasks receive outside training (``edgevision eval``)."""

    device: torch.device
    classes: list[str]
    num_classes: int
    out: Path | None = None
    cfg: Any = None
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    main: bool = True
    data_dir: str = ""
    data_report: list = field(default_factory=list)
    dist: Any = None

    def __post_init__(self):
        if self.dist is None:
            from edgevision.training.distributed import DistInfo

            self.dist = DistInfo()

    def log(self, msg: str) -> None:
        print(msg, flush=True)


_TASKS: dict[str, type[Task] | str] = {
    # Lazy: "module:Class", imported on first use (task modules import torchvision, pycocotools).
    "classification": "edgevision.tasks.classification:ClassificationTask",
    "detection": "edgevision.tasks.detection.task:DetectionTask",
    "segmentation": "edgevision.tasks.segmentation.task:SegmentationTask",
    "sequence": "edgevision.tasks.sequence.task:SequenceTask",
}


def register_task(name: str, cls: type[Task] | str) -> None:
    """Register a Task subclass (or a lazy "module:Class" string) under ``name``."""
    _TASKS[name] = cls


def get_task(name: str) -> Task:
    """A fresh Task instance for ``name`` (e.g. ``model_info(model).task``)."""
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(sorted(_TASKS))}")
    cls = _TASKS[name]
    if isinstance(cls, str):
        import importlib

        mod, attr = cls.split(":")
        try:
            cls = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"the {name} task is not available yet ({mod}.{attr}: {e})") from e
        _TASKS[name] = cls
    return cls()


def task_of(model_name: str) -> Task:
    """The Task of a registered model."""
    from edgevision.registry import model_info

    return get_task(model_info(model_name).task)


# --------------------------------------------------------------------------- edgevision eval/predict
def open_eval_checkpoint(checkpoint: str, output: str | None, model_name: str):
    """(output folder, training-checkpoint state or None) for ``edgevision eval``; clear errors."""
    from edgevision.checkpoints import CheckpointError
    from edgevision.training import checkpointing as ckpt

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
    if train_state is not None and train_state["model_name"] != model_name:
        raise CheckpointError(f"{checkpoint}: training checkpoint of model {train_state['model_name']!r}, "
                              f"not {model_name!r}")
    return out, train_state


def _decode(v: str):
    import json

    try:
        return json.loads(v)
    except (TypeError, ValueError):
        return v


def load_trained(model_name: str, checkpoint: str, output: str | None = None, **build):
    """(model on CPU in eval mode, metadata dict, output folder) from weights written by
    ``edgevision train`` (model.safetensors with its metadata, or a last.pth checkpoint)."""
    from edgevision.checkpoints import (
        load_checkpoint,
        load_state_dict_strict,
        read_metadata,
    )
    from edgevision.factory import create_model
    from edgevision.registry import model_info

    out, st = open_eval_checkpoint(checkpoint, output, model_name)
    if st is not None:
        cfg = st.get("config") or {}
        meta = {"classes": list(st.get("classes") or []), "num_classes": int(st["num_classes"]),
                "img_size": cfg.get("img_size"), **(st.get("task_meta") or {})}
    else:
        meta = {k: _decode(v) for k, v in read_metadata(checkpoint).items()}
        if "num_classes" not in meta:
            raise ValueError(f"{checkpoint}: no num_classes in its metadata; pass the model.safetensors or "
                             "last.pth that `edgevision train` wrote")
    kw = dict(build)
    if meta.get("img_size"):
        kw.setdefault("img_size", meta["img_size"])
    if meta.get("output_stride"):  # trained with --output-stride: rebuild at the same stride
        kw.setdefault("output_stride", int(meta["output_stride"]))
    model = create_model(model_name, num_classes=int(meta["num_classes"]), **kw)
    if st is not None:
        load_state_dict_strict(model, st["model"], f"{checkpoint} -> {model_name}")
    else:
        load_checkpoint(model, checkpoint, model_info(model_name).converters, model_name)
    return model.eval(), meta, out


class DenseTask(Task):
    """Detection and segmentation: the model trains at ``--img-size``; ``--checkpoint`` initialises
    its *backbone* from a classifier checkpoint of that backbone (the heads start fresh), and
    ``--freeze-backbone`` is refused (a classifier option) with one line."""

    #: the end of the refusal line for --freeze-backbone
    from_scratch = "trains the whole model (--checkpoint initialises its backbone)"
    #: set by build_model when --checkpoint gave the backbone: what weights_meta records
    backbone_init: dict | None = None

    def build_model(self, run) -> nn.Module:
        from edgevision.factory import create_model

        cfg = run.cfg
        if cfg.freeze_backbone:
            raise ValueError(f"--freeze-backbone is for classifiers; {self.name} {self.from_scratch}")
        if cfg.mixup or cfg.cutmix:
            raise ValueError("--mixup/--cutmix apply to classification only")
        model = create_model(cfg.model, num_classes=run.num_classes, img_size=cfg.img_size, **self.build_kwargs(cfg))
        self.backbone_init = None
        if cfg.checkpoint:
            self.backbone_init = init_backbone(model, cfg.model, cfg.checkpoint)
            info = self.backbone_init
            run.log(f"backbone: {info['backbone']} initialised from {cfg.checkpoint} ({info['format']} format, "
                    f"{info['tensors']} tensors; classifier and unused keys left out: {info['unused']}); "
                    f"heads start fresh" + ("; backbone BatchNorm statistics frozen (norm_eval, as the "
                                            "official configs)" if info["norm_eval"] else ""))
        return model

    def train_mode(self, run, net: nn.Module) -> None:
        net.train()
        if (self.backbone_init and self.backbone_init["norm_eval"]) or run.cfg.freeze_bn:
            freeze_backbone_bn_stats(getattr(net, "module", net))  # DDP wraps the model

    def build_kwargs(self, cfg) -> dict:
        """Extra create_model arguments from the training options (e.g. segmentation's output stride)."""
        return {}

    def backbone_meta(self) -> dict:
        """What weights_meta records about the backbone initialisation (empty when from scratch)."""
        if not self.backbone_init:
            return {}
        return {"backbone": self.backbone_init["backbone"], "backbone_checkpoint": self.backbone_init["checkpoint"],
                "backbone_checkpoint_format": self.backbone_init["format"]}


# --------------------------------------------------------------------------- dense backbone init
#: children of a dense model's ``backbone`` that belong to the neck (SSDLite extra layers, the
#: RetinaNet FPN): they start fresh like the heads
NECK_PARTS = ("extra", "fpn")
#: families whose official downstream configs freeze the backbone's BN statistics when
#: fine-tuning (``norm_eval=True`` in zhangzjn/EMO down-stream-tasks/mmdetection configs
#: ssd_emo/ssdlite_emo_*_pretrain_coco.py and _base_/models/retinanet_emo_fpn.py)
NORM_EVAL_FAMILIES = ("emo",)


def backbone_name(model_name: str) -> str:
    """The registry backbone a dense model is built on (its registered cfg ``backbone``)."""
    from edgevision.registry import model_info

    bb = model_info(model_name).cfg.get("backbone")
    if not bb:
        raise ValueError(f"{model_name} does not record its backbone (registry cfg 'backbone'), so "
                         "--checkpoint cannot initialise it")
    return bb


def backbone_key_map(model: nn.Module) -> dict[str, str]:
    """{dense model key: key of the backbone's classifier} for every backbone tensor of a dense model.

    The wrappers differ per family but keep the classifier's names under a prefix: segmentation's
    TimmBackbone holds timm's ``conv_stem/bn1/blocks`` directly, EdgeBackbone a FeatureNet
    (``body.model.*``); detection's SSDLite/RetinaNet features hold the ``features_only`` net as
    ``body`` (timm's FeatureListNet flattens ``blocks.N`` to ``blocks_N``), torchvision's
    SSDLite320 layout holds ``conv_stem/bn1/blocks`` beside its ``extra`` layers.
    """
    import re

    body = getattr(model, "backbone", None)
    if not isinstance(body, nn.Module):
        raise ValueError(f"{type(model).__name__} has no backbone module to initialise")
    out = {}
    for k in body.state_dict():
        if k.split(".", 1)[0] in NECK_PARTS or k.endswith("num_batches_tracked"):
            continue
        ck = k
        for prefix in ("body.", "model."):
            ck = ck[len(prefix):] if ck.startswith(prefix) else ck
        out[f"backbone.{k}"] = re.sub(r"^blocks_(\d+)\.", r"blocks.\1.", ck)
    return out


def init_backbone(model: nn.Module, model_name: str, checkpoint: str) -> dict:
    """Load a classifier checkpoint of the dense model's backbone into its backbone, strictly.

    The checkpoint is first loaded into a full classifier build of the backbone (our safetensors
    or .pth, timm's, torchvision's or the family's official format, as ``--checkpoint`` of a
    classifier; its classifier is left out), then every backbone tensor of the dense model is
    copied from it; a missing or mis-shaped one raises CheckpointMismatchError listing them all.
    Returns what was done (backbone, checkpoint, format, tensors, unused keys, norm_eval).
    """
    from edgevision.checkpoints import CheckpointMismatchError
    from edgevision.factory import create_model
    from edgevision.registry import model_info
    from edgevision.tasks.classification import load_backbone

    bb = backbone_name(model_name)
    clf = create_model(bb)
    fmt, _ = load_backbone(clf, bb, str(checkpoint))
    src, own, pairs = clf.state_dict(), model.state_dict(), backbone_key_map(model)
    missing = [f"{dk} (classifier key {ck})" for dk, ck in pairs.items() if ck not in src]
    mism = [(dk, tuple(src[ck].shape), tuple(own[dk].shape)) for dk, ck in pairs.items()
            if ck in src and src[ck].shape != own[dk].shape]
    if missing or mism:
        raise CheckpointMismatchError(missing, [], mism, f"{checkpoint} ({bb} classifier) -> {model_name} backbone")
    model.load_state_dict({dk: src[ck] for dk, ck in pairs.items()}, strict=False)
    used = set(pairs.values())
    unused = sorted({k.rsplit(".", 1)[0] for k in src if k not in used and not k.endswith("num_batches_tracked")})
    shown = ", ".join(unused[:6]) + (f", ... {len(unused) - 6} more" if len(unused) > 6 else "")
    return {"backbone": bb, "checkpoint": str(checkpoint), "format": fmt, "tensors": len(pairs),
            "unused": shown or "none", "norm_eval": model_info(bb).family in NORM_EVAL_FAMILIES}


def freeze_backbone_bn_stats(model: nn.Module) -> None:
    """BatchNorms of the backbone (not the neck or heads) in eval mode: running statistics stay
    those of the checkpoint, affine parameters still train (mmdet/mmseg ``norm_eval=True``)."""
    for name, part in model.backbone.named_children():
        if name in NECK_PARTS:
            continue
        for m in part.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
