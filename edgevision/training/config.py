"""Training options: the TrainConfig dataclass, recipes merged with overrides, checks."""

from __future__ import annotations

from dataclasses import dataclass, fields

from edgevision.training.recipes import get_recipe


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
    freeze_bn: bool = False  # BatchNorm running statistics stay the checkpoint's (affine still trains)
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
    # Pruning during training (edgevision.sparse.training's hook; issue 14). Epochs may be fractional.
    sparsity: float = 0.0  # target fraction of zero weights; 0 = dense training
    prune_start: float = 0.0
    prune_end: float | None = None  # None: the hook's default (e.g. the last epoch)
    prune_scope: str = "layer"  # layer | global
    prune_pattern: str = "unstructured"
    # Knowledge distillation (classifiers; edgevision.training.distill): teacher weights, its
    # registry name (default: --model), the soft term's weight and temperature (Hinton et al.).
    teacher: str | None = None
    teacher_model: str | None = None
    distill_alpha: float = 0.5
    distill_temp: float = 4.0
    # Quantization-aware training of the weights (edgevision.training.qat): "int8" or "uint8".
    qat: str | None = None
    # Segmentation loss (edgevision.tasks.segmentation.losses): "ce" (the recipes') or "ce+dice".
    seg_loss: str = "ce"
    # Segmentation backbones' output stride (8, 16 or 32; None = the head's recipe, e.g. 16 for LR-ASPP).
    output_stride: int | None = None
    # The "attributes" task (M-MobileNet): a class,attribute CSV; None = DATA/attributes.csv.
    attributes: str | None = None


def make_config(model: str, recipe: str | None = None, **overrides) -> TrainConfig:
    """Defaults, then the recipe, then overrides that are not None."""
    known = {f.name for f in fields(TrainConfig)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"unknown training option(s): {', '.join(bad)}")
    values = get_recipe(recipe)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(model=model, recipe=recipe, **values)


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


def _check_segmentation_options(cfg: TrainConfig) -> None:
    from edgevision.registry import model_info
    from edgevision.tasks.segmentation.losses import check_seg_loss

    check_seg_loss(cfg.seg_loss)
    if cfg.output_stride is not None and cfg.output_stride not in (8, 16, 32):
        raise ValueError(f"--output-stride must be 8, 16 or 32; got {cfg.output_stride!r}")
    task = model_info(cfg.model).task
    if task != "segmentation":
        flag = "--seg-loss" if cfg.seg_loss != "ce" else "--output-stride"
        raise ValueError(f"{flag} applies to segmentation models; {cfg.model} is a {task} model")


def check_config(cfg: TrainConfig) -> None:
    """Options that contradict each other or are out of range: one clear line, before any work."""
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError(f"--epochs and --batch-size must be >= 1; got {cfg.epochs} and {cfg.batch_size}")
    if cfg.freeze_backbone and not cfg.checkpoint:
        raise ValueError("--freeze-backbone needs --checkpoint (pretrained weights): a randomly "
                         "initialised backbone would stay random")
    if cfg.freeze_bn and not cfg.checkpoint:
        raise ValueError("--freeze-bn needs --checkpoint (pretrained weights): a randomly initialised "
                         "network has no BatchNorm statistics worth keeping")
    if not 0.0 <= float(cfg.sparsity) < 1.0:
        raise ValueError(f"--sparsity must be in [0, 1) (the fraction of weights set to zero); got {cfg.sparsity}")
    if cfg.prune_start < 0:
        raise ValueError(f"--prune-start must be >= 0 (an epoch, fractions allowed); got {cfg.prune_start}")
    if cfg.prune_end is not None and cfg.prune_end < cfg.prune_start:
        raise ValueError(f"--prune-end ({cfg.prune_end}) must not be before --prune-start ({cfg.prune_start})")
    if cfg.prune_scope not in ("layer", "global"):
        raise ValueError(f"--prune-scope must be layer or global; got {cfg.prune_scope!r}")
    from edgevision.export.quantize import WEIGHT_TYPES

    if cfg.qat is not None and cfg.qat not in WEIGHT_TYPES:
        raise ValueError(f"--qat must be int8 or uint8 (the weight type the int8 export will use); got {cfg.qat!r}")
    if cfg.seg_loss != "ce" or cfg.output_stride is not None:
        _check_segmentation_options(cfg)
    if cfg.teacher:
        from edgevision.training.distill import check_distill_options

        check_distill_options(cfg)
    elif cfg.teacher_model:
        raise ValueError("--teacher-model names the teacher's architecture; give its weights with --teacher")
    if cfg.tensorboard:
        check_tensorboard()
