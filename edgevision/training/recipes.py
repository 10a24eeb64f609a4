"""Named training recipes, as data: each is a set of TrainConfig field overrides.

A recipe fills in defaults; options given explicitly on the command line (or in the
config passed to :func:`edgevision.training.train`) win over it.

``lr`` is derived from ``lr_base`` at ``lr_base_batch`` and scaled linearly with the
global batch (per-process batch x world size), as the EMO recipe states it.
"""

from __future__ import annotations

RECIPES: dict[str, dict] = {
    # EMO ImageNet-1k recipe (Zhang et al., ICCV 2023; zhangzjn/EMO configs/mobile/cls_emo.py):
    # AdamW, lr 6e-3 at batch 2048 (the repo writes 1.5e-3 per 512), wd 0.05, 300 epochs,
    # cosine with 20 warm-up epochs from/to 2.5e-7, label smoothing 0.1, RandAugment
    # rand-m9-mstd0.5-inc1, colour jitter 0.4, EMA 0.9998, grad clip 5.0, no Mixup/CutMix,
    # test resize 1/0.875 then centre crop, bicubic.
    "emo_imagenet": dict(
        opt="adamw", lr_base=6e-3, lr_base_batch=2048, weight_decay=0.05, epochs=300,
        warmup_epochs=20, warmup_lr=2.5e-7, min_lr=2.5e-7, label_smoothing=0.1,
        auto_augment="rand-m9-mstd0.5-inc1", color_jitter=0.4, crop_scale=(0.08, 1.0),
        ema=True, ema_decay=0.9998, clip_grad=5.0, mixup=0.0, cutmix=0.0,
        img_size=224, crop_pct=0.875, interpolation="bicubic",
    ),
    # Fine-tuning a pretrained backbone on a small folder of images (pass --checkpoint):
    # lower lr, short warm-up, light augmentation, new head for the data set's classes.
    "finetune": dict(
        opt="adamw", lr_base=1e-3, lr_base_batch=256, weight_decay=0.05, epochs=10,
        warmup_epochs=1, warmup_lr=1e-5, min_lr=1e-6, label_smoothing=0.1,
        crop_scale=(0.5, 1.0), color_jitter=0.0, ema=False, clip_grad=5.0,
        img_size=224, crop_pct=0.875,
    ),
    # The demo: under a minute on 2 CPU cores on the bundled Fashion-MNIST sample, from scratch
    # or, as `edgevision demo` runs it, fine-tuning the offline EfficientNet-Lite0 weights with
    # --checkpoint --freeze-backbone. Small images and a high lr learn fast. One torch thread:
    # the DataLoader worker takes the other core, and two OpenMP threads sharing one core spin
    # (measured on a busy 2-core machine: 48 s with 1 thread, 467 s with 2, same accuracy).
    "demo": dict(
        opt="adamw", lr_base=4e-3, lr_base_batch=64, batch_size=64, weight_decay=0.02, epochs=6,
        warmup_epochs=1, warmup_lr=1e-4, min_lr=1e-5, label_smoothing=0.0,
        crop_scale=(0.7, 1.0), color_jitter=0.0, hflip=0.5, ema=False, clip_grad=5.0,
        img_size=48, crop_pct=1.0, workers=1, threads=1, sample_data=True,
    ),
}


def list_recipes() -> list[str]:
    return sorted(RECIPES)


def get_recipe(name: str | None) -> dict:
    if not name:
        return {}
    try:
        return dict(RECIPES[name])
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; choose from {', '.join(list_recipes())}") from None
