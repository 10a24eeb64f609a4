"""`edgevision demo`: the main job on built-in defaults, offline, as a tour of the CLI.

Each step is the very command a user would type, echoed before it runs, so the demo
exercises the same paths as real use: the zoo, one model's stages, a real prediction
with pretrained weights, a short benchmark, an ONNX export with its parity check, a short fine-tune of the real
pretrained EfficientNet-Lite0 on the bundled Fashion-MNIST sample, and its evaluation; then one
dense task: generated scenes (Fashion-MNIST items on the bundled photos), a short segmentation
training run, its mIoU, and a picture of its predictions.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

DEFAULT_BENCH_MODELS = ["mobilenetv3_large_100", "emo_1m", "edgevit_xxs", "efficientformer_l1"]
STEPS = ("list", "info", "predict", "bench", "export", "train", "eval",
         "scenes", "dense-train", "dense-eval", "dense-predict")
# The dense step: LR-ASPP (MobileNetV3's segmentation head) on the generated scenes, from scratch.
DENSE_MODEL = "lraspp_mobilenetv3_large_100"
DENSE_TRAIN, DENSE_EPOCHS = 160, 5


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run the built-in tour (offline, about 3 minutes on 2 cores)")
    p.add_argument("--output", default="demo-output", help="folder for the demo's files")
    p.add_argument("--skip", default="", help="comma-separated steps to skip: " + ",".join(STEPS))
    p.set_defaults(func=run)


def _sample_photo(out: Path) -> Path:
    """The bundled photo of a cat (CC0), copied as a JPEG file like a user's image."""
    from edgevision.images import PHOTO_DIR
    from edgevision.io import atomic_write_bytes

    path = out / "chelsea.jpg"
    atomic_write_bytes(path, (PHOTO_DIR / "chelsea.jpg").read_bytes())
    return path


def _steps(out: Path, skip: frozenset = frozenset()) -> list[tuple[str, list[str]]]:
    from edgevision.inference import lite0_weights_path

    photo = _sample_photo(out)
    weights = str(lite0_weights_path())
    run = out / "finetune"
    scenes, dense = out / "scenes", out / "segmentation"
    if "scenes" not in skip and (scenes / "train").exists():  # a rerun: written afresh (deterministic)
        import shutil

        shutil.rmtree(scenes)
    return [
        ("list", ["list"]),
        ("info", ["info", "mobilenetv3_large_100"]),
        ("predict", ["predict", "efficientnet_lite0", str(photo),
                     "--checkpoint", weights]),
        ("bench", ["bench", *DEFAULT_BENCH_MODELS, "--runtime", "eager,optimized,onnxruntime",
                   "--batch", "1", "--size", "224", "--warmup", "3", "--iters", "15",
                   "--output", str(out / "bench")]),
        ("export", ["export", "emo_1m", "--format", "onnx", "--output",
                    str(out / "emo_1m.onnx"), "--check"]),
        # Fine-tune as a user adopting a backbone would: ImageNet weights, new 10-class head,
        # frozen backbone, small images (28 px originals): about 30 s on 2 cores.
        ("train", ["train", "efficientnet_lite0", "--recipe", "demo", "--checkpoint", weights,
                   "--freeze-backbone", "--img-size", "64", "--epochs", "3", "--lr", "3e-3",
                   "--no-resume", "--output", str(run)]),
        ("eval", ["eval", "efficientnet_lite0", "--data", str(run / "data"),
                  "--checkpoint", str(run / "model.safetensors")]),
        # Dense prediction: scenes with COCO boxes and PNG masks, a short LR-ASPP run (about a
        # minute on 2 cores), per-class IoU, and the overlay of its predictions on a val scene.
        ("scenes", ["sample-data", "--task", "segmentation", str(scenes), "--num-train", str(DENSE_TRAIN),
                    "--num-val", "40", "--size", "96"]),
        ("dense-train", ["train", DENSE_MODEL, "--data", str(scenes), "--img-size", "96", "--epochs",
                         str(DENSE_EPOCHS), "--batch-size", "16", "--lr", "3e-3", "--weight-decay", "1e-4",
                         "--warmup-epochs", "0", "--workers", "0", "--no-resume", "--output", str(dense)]),
        ("dense-eval", ["eval", DENSE_MODEL, "--data", str(scenes), "--checkpoint", str(dense / "model.safetensors"),
                        "--workers", "0"]),
        ("dense-predict", ["predict", DENSE_MODEL, str(scenes / "val" / "images" / "00000.jpg"), "--checkpoint",
                           str(dense / "model.safetensors"), "--output", str(out / "segmentation_overlay.png")]),
    ]


def run(args) -> int:
    from edgevision.cli import main as cli_main

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = sorted(skip - set(STEPS))
    if unknown:
        raise ValueError(f"--skip: unknown step {', '.join(map(repr, unknown))}; choose from {','.join(STEPS)}")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder; choose another --output")
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    for step, argv in _steps(out, frozenset(skip)):
        if step in skip:
            continue
        print(f"\n$ edgevision {shlex.join(argv)}", flush=True)
        start = time.perf_counter()
        rc = cli_main(argv)
        print(f"[{step}: {'ok' if rc == 0 else f'exit {rc}'} in {time.perf_counter() - start:.1f} s]",
              flush=True)
        if rc != 0:
            failed.append(step)
    print(f"\nDemo files are in {out.resolve()}")
    if failed:
        print(f"Steps that failed: {', '.join(failed)}")
        return 1
    return 0
