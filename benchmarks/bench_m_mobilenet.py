"""M-MobileNet on the bundled Fashion-MNIST sample with a "footwear or not" attribute (issue 17).

Trains ``m_mobilenetv1_100`` (species + attribute, jointly) and, with the same settings, the
plain ``mobilenetv1_100`` with its standard Linear head (the class-only baseline), through
the training engine, then reports: the parameters of each top (against MobileNet's standard
head, Linear(1024 -> 1000) = 1,025,000), the class top-1 of both models, the attribute
accuracy (M-MobileNet's attribute output, and the table read at the predicted class), and the
ONNX export parity of both M-MobileNet outputs (edgevision.export.onnx.export_onnx, ONNX Runtime).
No fish set can be shipped; no ImageNet weights are reachable offline, so both train from
scratch (the backbone loads ImageNet MobileNet weights with ``--checkpoint`` when you have them).

    nice -n 10 .venv/bin/python benchmarks/bench_m_mobilenet.py   # -> benchmarks/results/m_mobilenet.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def train_one(model: str, data: Path, out: Path, args) -> dict:
    from edgevision.training import make_config, train

    cfg = make_config(model, recipe="demo", data=str(data), output=str(out), epochs=args.epochs, seed=args.seed,
                      img_size=args.img_size, threads=args.threads, workers=1, progress=False, resume="none",
                      sample_data=False)
    t0 = time.perf_counter()
    s = train(cfg)
    if s.get("interrupted"):
        raise SystemExit(f"{model}: training interrupted; rerun the benchmark")
    s["seconds"] = time.perf_counter() - t0
    return s


def onnx_parity(model, img_size: int, tmp: Path) -> dict:
    """Export both outputs (species logits, attribute probability) and compare with eager."""
    from edgevision.export.onnx import export_onnx, ort_session

    wrapper = model.eval().export_module()
    path = export_onnx(wrapper, tmp / "m_mobilenet.onnx", (1, 3, img_size, img_size))
    sess = ort_session(path)
    x = torch.randn(1, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    outs = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.inference_mode():
        ref = wrapper(x)
    return {"outputs": [o.name for o in sess.get_outputs()],
            "species_max_abs_diff": float(np.abs(outs[0] - ref[0].numpy()).max()),
            "attribute_max_abs_diff": float(np.abs(outs[1].reshape(-1) - ref[1].numpy().reshape(-1)).max())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--img-size", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "m_mobilenet.md"))
    args = p.parse_args()
    command = "nice -n 10 python benchmarks/bench_m_mobilenet.py " + " ".join(sys.argv[1:])
    torch.set_num_threads(args.threads)

    import edgevision as ev
    from edgevision.checkpoints import load_checkpoint
    from edgevision.tasks.attributes.table import write_attribute_table
    from edgevision.tasks.attributes.task import FASHION_FOOTWEAR
    from edgevision.training.data import FASHION_MNIST_CLASSES, prepare_sample_dataset

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = prepare_sample_dataset(tmp / "data")
        table = write_attribute_table(data / "attributes.csv",
                                      {c: int(c in FASHION_FOOTWEAR) for c in FASHION_MNIST_CLASSES})
        m_sum = train_one("m_mobilenetv1_100", data, tmp / "m", args)
        b_sum = train_one("mobilenetv1_100", data, tmp / "b", args)
        model = ev.create_model("m_mobilenetv1_100", num_classes=10)
        load_checkpoint(model, tmp / "m" / "model.safetensors")
        parity = onnx_parity(model, args.img_size, tmp)
        base = ev.create_model("mobilenetv1_100", num_classes=10)
        head = model.head_param_counts()
        base_head = sum(p.numel() for p in base.get_classifier().parameters())
        table_text = table.read_text()
    footwear_share = 3 / 10
    lines = [
        "# M-MobileNet: slim two-output top on MobileNetV1 (issue 17)", "", f"Command: `{command}`", "",
        f"Data: the bundled Fashion-MNIST sample (MIT licence), 200 train / 100 val images per class, {args.img_size} px; "
        f"attribute table (`class,attribute`, written as below): footwear = sandal, sneaker, ankle_boot "
        f"(always answering 'no' scores {100 * (1 - footwear_share):.0f}%). Both models: the `demo` recipe "
        f"(AdamW, lr 4e-3 at batch 64, {args.epochs} epochs, from scratch, seed {args.seed}), {args.threads} thread(s), "
        "CPU, through `edgevision.training.train`. Shared machine (accuracy does not depend on it).", "",
        "## Top-layer parameters", "",
        "| top | parameters | share of the standard head |", "|---|---|---|",
        f"| standard head: {head['standard_head']} | {head['standard_head_params']:,} | 100% |",
        f"| M-MobileNet top: Linear(1024 -> {head['hidden']}, no bias) + BatchNorm1d + Swish + Dropout + "
        f"Linear({head['hidden']} -> 10) + Linear({head['hidden']} -> 1) | {head['head_params']:,} | "
        f"{100 * head['ratio']:.1f}% |",
        f"| (for scale) a plain 10-class Linear(1024 -> 10), the baseline's head here | {base_head:,} | "
        f"{100 * base_head / head['standard_head_params']:.1f}% |", "",
        "The paper's own figure is ~531k against ~1,025k (Dense(1024 -> 512) + BatchNorm + Dense(512 -> 8) "
        "as Keras counts it: 51.8%); our hidden width is the widest multiple of 8 that keeps both outputs "
        "within 50%. Against a 10-way Linear head a hidden layer is larger, not smaller: the saving is "
        "against MobileNet's standard top, as the paper counts it.", "",
        "## Accuracy (val split, last epoch)", "",
        "| model | class top-1 % | attribute output % | attribute from table at predicted class % | train s |",
        "|---|---|---|---|---|",
        f"| m_mobilenetv1_100 (joint) | {m_sum['final_val_top1']:.2f} | {m_sum['final_val_attr_acc']:.2f} | "
        f"{m_sum['final_val_attr_table_acc']:.2f} | {m_sum['seconds']:.0f} |",
        f"| mobilenetv1_100 (standard head, classes only) | {b_sum['final_val_top1']:.2f} | - | - | "
        f"{b_sum['seconds']:.0f} |", "",
        "## ONNX export (edgevision.export.onnx.export_onnx, dynamo) of both outputs", "",
        f"Outputs {parity['outputs']} (species logits, attribute probability); ONNX Runtime vs eager on a "
        f"[1, 3, {args.img_size}, {args.img_size}] input: max abs diff species {parity['species_max_abs_diff']:.1e}, "
        f"attribute {parity['attribute_max_abs_diff']:.1e}.", "",
        "## Attribute table used", "", "```", table_text.strip(), "```", ""]
    out = Path(args.out)
    out.write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps({"head": head, "standard_linear_10": base_head, "onnx": parity,
                                                    "m_mobilenet": {k: m_sum.get(k) for k in (
                                                        "final_val_top1", "final_val_attr_acc",
                                                        "final_val_attr_table_acc", "seconds")},
                                                    "baseline": {k: b_sum.get(k) for k in ("final_val_top1", "seconds")}},
                                                   indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("EDGEVISION_KEEP_HEAP", "0")
    sys.exit(main())
