"""`edgevision train MODEL --data DIR ...` (also under torchrun) and `edgevision sample-data DIR`.

Every option defaults to None here, so only what the user types overrides the recipe.
"""

from __future__ import annotations

from edgevision.cli._args import (
    float_pair,
    float_range,
    int_range,
    non_negative_int,
    nonempty,
    positive_int,
)


def add_parser(sub) -> None:
    from edgevision.training.recipes import list_recipes

    p = sub.add_parser("train", help="train or fine-tune a model on an image folder (torchrun-ready)",
                       description="Train MODEL on an ImageFolder (DIR/<class>/<images>, or DIR/train "
                       "and DIR/val); a detector on COCO data (DIR/<split>/annotations.json + images/), a "
                       "segmenter on image/mask folders (DIR/<split>/images + masks/, VOC, ADE20K). Under `torchrun --nproc-per-node N -m edgevision train ...` it runs "
                       "DistributedDataParallel; --batch-size is per process. Reruns continue from "
                       "OUTPUT/last.pth.")
    p.add_argument("model", help="model name, e.g. mobilenetv3_small_075")
    p.add_argument("--data", help="data root: ImageFolder, COCO or image/mask folders by the model's task "
                   "(omit with --recipe demo: bundled Fashion-MNIST sample)")
    p.add_argument("--output", default=None, help="run folder (default runs/train/MODEL)")
    p.add_argument("--recipe", choices=list_recipes(), help="named defaults: " + ", ".join(list_recipes()))
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive_int)
    g.add_argument("--batch-size", type=positive_int, help="per process")
    g.add_argument("--lr", type=float_range(0.0, 10.0, lo_open=True), help="absolute lr (default: recipe lr scaled to the global batch)")
    g.add_argument("--weight-decay", type=float_range(0.0, 1.0))
    g.add_argument("--warmup-epochs", type=non_negative_int)
    g.add_argument("--min-lr", type=float_range(0.0, 10.0))
    g.add_argument("--opt", help="timm optimizer name (default adamw)")
    g.add_argument("--sched", help="timm scheduler name (default cosine)")
    g.add_argument("--label-smoothing", type=float_range(0.0, 1.0, hi_open=True))
    g.add_argument("--drop-path", type=float_range(0.0, 1.0, hi_open=True))
    g.add_argument("--clip-grad", type=float_range(0.0, 1e4, lo_open=True), help="max gradient norm")
    g.add_argument("--ema", action="store_true", default=None, help="keep a timm ModelEmaV3 and evaluate it")
    g.add_argument("--no-ema", dest="ema", action="store_false", help="no EMA even where the recipe keeps one")
    g.add_argument("--ema-decay", type=float_range(0.0, 1.0, hi_open=True))
    g.add_argument("--amp", nargs="?", const="auto", help="mixed precision: auto (bf16 on CPU), bf16 or fp16")
    g.add_argument("--channels-last", action="store_true", default=None)
    g.add_argument("--sync-bn", action="store_true", default=None, help="SyncBatchNorm under torchrun")
    g = p.add_argument_group("data")
    g.add_argument("--img-size", type=int_range(8, 4096))
    g.add_argument("--workers", type=non_negative_int, help="DataLoader workers per process")
    g.add_argument("--auto-augment", help="rand-m9-mstd0.5 (RandAugment), trivialaugment, ...")
    g.add_argument("--mixup", type=float_range(0.0, 10.0), help="Mixup alpha (0 = off)")
    g.add_argument("--cutmix", type=float_range(0.0, 10.0), help="CutMix alpha (0 = off)")
    g.add_argument("--crop-scale", type=float_pair(0.0, 1.0),
                   help="RandomResizedCrop scale LO,HI with 0 < LO <= HI <= 1")
    g.add_argument("--val-fraction", type=float_range(0.0, 1.0, hi_open=True), help="held-out share when there is no val/ folder")
    g.add_argument("--scan", choices=["auto", "full", "header"],
                   help="check images at start: full decode, headers only, auto (full up to 50k files)")
    g = p.add_argument_group("fine-tuning and runs")
    g.add_argument("--checkpoint", help="pretrained weights: all but the classifier are loaded, new head; for a detector/"
                   "segmenter, a classifier checkpoint of its backbone (heads start fresh)")
    g.add_argument("--freeze-backbone", action="store_true", default=None, help="train the classifier only")
    g.add_argument("--freeze-bn", action="store_true", default=None,
                   help="keep the checkpoint's BatchNorm running statistics (affine parameters still train); "
                        "for a detector/segmenter, those of the backbone")
    g.add_argument("--head-width-scale", type=float_range(0.0, 4.0, lo_open=True),
                   help="re-initialise a narrower pre-logits layer, e.g. 0.5 (MobileNetV3's conv_head)")
    g.add_argument("--resume", nargs="?", const="auto",
                   help="checkpoint file/folder to continue from (default: OUTPUT/last.pth when present)")
    g.add_argument("--no-resume", dest="resume", action="store_const", const="none",
                   help="start afresh even when OUTPUT/last.pth exists (it is overwritten)")
    g.add_argument("--seed", type=int_range(0, 2**32 - 1))
    g.add_argument("--deterministic", action="store_true", default=None)
    g.add_argument("--device", help="cpu, cuda (default: cuda when available)")
    g.add_argument("--threads", type=positive_int, help="torch threads per process")
    g.add_argument("--max-steps-per-epoch", type=positive_int, help="cap steps per epoch (smoke runs)")
    g.add_argument("--tensorboard", action="store_true", default=None,
                   help="also log to OUTPUT/tensorboard (needs: pip install tensorboard)")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    g = p.add_argument_group("pruning during training (edgevision.sparse)")
    g.add_argument("--sparsity", type=float_range(0.0, 1.0, hi_open=True), help="target fraction of zero weights in [0, 1) (default 0: dense)")
    g.add_argument("--prune-start", type=float_range(0.0, 1e6), help="epoch at which pruning starts (fractions allowed; default 0)")
    g.add_argument("--prune-end", type=float_range(0.0, 1e6), help="epoch at which the target sparsity is reached")
    g.add_argument("--prune-scope", choices=["layer", "global"], help="rank weights per layer or globally")
    g.add_argument("--teacher", help="distil from this classifier's weights (trained on the same classes), "
                   "e.g. the dense fine-tune's model.safetensors")
    g.add_argument("--teacher-model", help="the teacher's registry name (default: --model)")
    g.add_argument("--distill-alpha", type=float_range(0.0, 1.0, lo_open=True),
                   help="weight of the teacher's soft term (default 0.5; the label term gets the rest)")
    g.add_argument("--distill-temp", type=float_range(0.0, 100.0, lo_open=True), help="softmax temperature (default 4)")
    g.add_argument("--qat", choices=["int8", "uint8"], help="quantization-aware training: convs and linears "
                   "compute with their weights rounded as the int8 export will round them (per channel), "
                   "gradients pass straight through; use the weights with `export --int8`")
    g.add_argument("--prune-pattern", help="unstructured (default) or a group pattern of edgevision.sparse")
    g.add_argument("--attributes", type=nonempty, help="M-MobileNet (m_mobilenet*): CSV with columns class,attribute "
                   "(0/1) for every class (default: DATA/attributes.csv)")
    g = p.add_argument_group("segmentation")
    g.add_argument("--seg-loss", choices=["ce", "ce+dice"], help="segmentation loss: pixel cross-entropy "
                   "(default, the published recipes') or cross-entropy + soft Dice (every class counts the same; "
                   "higher mIoU on small objects)")
    g.add_argument("--output-stride", type=positive_int, choices=[8, 16, 32], help="segmentation: the backbone's output "
                   "stride (default: the head's recipe, 16 for LR-ASPP/DeepLabv3 where the family can dilate); "
                   "32 trains faster, 8 sees finer detail")
    p.set_defaults(func=run)

    s = sub.add_parser("sample-data", help="write Fashion-MNIST (or your own .npz arrays) as an ImageFolder tree, "
                       "or detection/segmentation scenes (--task)",
                       description="Write the bundled Fashion-MNIST sample (the full set when Debian's "
                       "dataset-fashion-mnist is installed) or the arrays of a .npz file as DIR/train/<class>/*.png "
                       "and DIR/val/<class>/*.png: the folder layout `edgevision train --data DIR` reads.")
    s.add_argument("output", help="folder to create (DIR/train/<class>/*.png, DIR/val/...)")
    s.add_argument("--task", choices=["classification", "detection", "segmentation"], default="classification",
                   help="detection/segmentation: deterministic scenes of Fashion-MNIST items on the bundled "
                   "photos, with COCO boxes/masks (DIR/<split>/annotations.json) and PNG label masks")
    s.add_argument("--num-train", type=positive_int, default=300, help="scenes: training images (default 300)")
    s.add_argument("--num-val", type=positive_int, default=100, help="scenes: validation images (default 100)")
    s.add_argument("--size", type=int_range(32, 1024), default=160, help="scenes: side in pixels (default 160)")
    s.add_argument("--seed", type=int_range(0, 2**32 - 1), default=0, help="scenes: random seed (default 0)")
    s.add_argument("--train-per-class", type=positive_int, default=200, help="first N training images per class")
    s.add_argument("--val-per-class", type=positive_int, default=100, help="first N test images per class (val/)")
    s.add_argument("--all", action="store_true", help="every image of the source (70,000 with the full set)")
    s.add_argument("--source", choices=["auto", "full", "vendored"], default="auto",
                   help="full Fashion-MNIST when installed (auto), or the bundled subset")
    s.add_argument("--npz", help="your arrays instead: x_train, y_train [, x_test, y_test, class_names] "
                   "(uint8 N,H,W or N,H,W,C; integer labels)")
    s.add_argument("--classes", help="comma-separated class names for --npz (default: class_names or class_<i>)")
    s.add_argument("--val-fraction", type=float_range(0.0, 1.0, hi_open=True), default=0.0,
                   help="with --npz and no x_test: hold out this share of each class as val/")
    s.set_defaults(func=run_sample_data)


_NOT_CONFIG = {"command", "func", "model", "recipe"}


def run(args) -> int:
    from edgevision.registry import model_info
    from edgevision.training import make_config, train

    model_info(args.model)  # unknown names fail before any data is read
    overrides = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}
    if overrides.get("output") is None:
        overrides["output"] = f"runs/train/{args.model}"
    cfg = make_config(args.model, args.recipe, **overrides)
    summary = train(cfg)
    if summary.get("interrupted"):
        return 130
    return 0


def run_sample_data(args) -> int:
    from pathlib import Path

    if args.task != "classification":
        from edgevision.training.scenes import write_scenes

        root = write_scenes(args.output, args.num_train, args.num_val, args.size, args.seed)
        print(f"wrote {args.num_train} train and {args.num_val} val scenes ({args.size}x{args.size}, Fashion-MNIST "
              f"items on the bundled photos) to {root}: <split>/images/*.jpg, <split>/masks/*.png (label maps), "
              f"<split>/annotations.json (COCO boxes and masks), classes.txt; train with "
              f"`edgevision train <{args.task} model> --data {root}`")
        return 0
    from edgevision.training.data import (
        export_npz,
        prepare_sample_dataset,
        sample_source,
    )

    if not args.npz:
        given = [opt for opt, v in (("--classes", args.classes), ("--val-fraction", args.val_fraction)) if v]
        if given:
            raise ValueError(f"{' and '.join(given)} appl{'y' if len(given) > 1 else 'ies'} to --npz only (the Fashion-MNIST sample has its "
                             "own classes and test split)")
    if args.npz:
        classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
        root = export_npz(args.npz, args.output, classes, args.val_fraction)
        counts = {split: sum(1 for p in (root / split).rglob("*.png")) for split in ("train", "val")
                  if (root / split).is_dir()}
        print(f"wrote {args.npz} as ImageFolder: " + ", ".join(f"{root / k} ({n} images)" for k, n in counts.items()))
        return 0
    n_tr, n_va = (None, None) if args.all else (args.train_per_class, args.val_per_class)
    root = prepare_sample_dataset(args.output, n_tr, n_va, args.source)
    source = sample_source(root)
    counts = {split: sum(1 for _ in (Path(root) / split).rglob("*.png")) for split in ("train", "val")}
    print(f"wrote Fashion-MNIST ({source} set, MIT licence) as ImageFolder: {root}/train "
          f"({counts['train']} images), {root}/val ({counts['val']} images)")
    return 0
