"""How useful is a stolen architecture? Fashion-MNIST top-1 of the networks the leakage attack
rebuilt, against the originals, under the same training budget (issue 16, evaluation item 3).

For each model, the net config the attack recovered (stored in benchmarks/results/leakage.json by
benchmarks/bench_leakage.py) and the original registry network are both trained from scratch
with `edgevision train --recipe demo` on the bundled Fashion-MNIST subset (2,000 train images;
the 1,000 test images as the held-out split), same seed, same epochs. The attacker gets the
architecture only, never weights, so both start from random initialisation. Latency of the
rebuilt networks is in leakage.md.

    nice -n 10 .venv/bin/python benchmarks/bench_leak_usefulness.py --models mobilenetv3_small_100,mobilenetv2_100

Writes benchmarks/results/leak_usefulness.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="mobilenetv3_small_100,mobilenetv2_100")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--img-size", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--leakage", default=str(OUT / "leakage.json"), help="the attack's results (recovered configs)")
    args = p.parse_args(argv)

    import torch

    from edgevision.io import atomic_write_text
    from edgevision.models.netconfig import register_config_dir, save_config
    from edgevision.profiling.timing import machine_info
    from edgevision.training import make_config, prepare_sample_dataset, train

    leak = json.loads(Path(args.leakage).read_text())
    configs = {r["model"]: r["config"] for r in leak["rows"] if r.get("config")}
    models = args.models.split(",")
    missing = [m for m in models if m not in configs]
    if missing:
        raise SystemExit(f"no recovered config for {missing} in {args.leakage}; run bench_leakage.py for them")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "cfg").mkdir()
        for m in models:
            save_config(dict(configs[m], name=f"rebuilt_{m}"), tmp / "cfg" / f"rebuilt_{m}.json")
        register_config_dir(tmp / "cfg")
        data = prepare_sample_dataset(tmp / "data", source="vendored")
        for m in models:
            for name in (m, f"rebuilt_{m}"):
                cfg = make_config(name, recipe="demo", data=str(data), output=str(tmp / name), epochs=args.epochs,
                                  seed=args.seed, img_size=args.img_size, threads=1, workers=1, progress=False,
                                  resume="none", sample_data=False)
                t0 = time.perf_counter()
                s = train(cfg)
                import edgevision

                params = sum(p.numel() for p in edgevision.create_model(name).parameters())
                rows.append(dict(model=m, network="rebuilt" if name != m else "original", params=params,
                                 top1=s["final_val_top1"], best_top1=s["best_val_top1"],
                                 train_s=round(time.perf_counter() - t0, 1)))
                print(rows[-1], flush=True)
    info = machine_info()
    command = "nice -n 10 .venv/bin/python benchmarks/bench_leak_usefulness.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    report = dict(command=command, settings=vars(args), machine=info, torch=torch.__version__, rows=rows,
                  leakage_command=leak.get("command"))
    atomic_write_text(OUT / "leak_usefulness.json", json.dumps(report, indent=1) + "\n")
    lines = [f"Command: `{command}`", "",
             "# Usefulness of the stolen architectures: Fashion-MNIST top-1, original vs rebuilt", "",
             f"Recovered configs from `{Path(args.leakage).name}` (attack command: `{leak.get('command')}`). "
             f"Both networks trained from scratch, recipe demo ({args.img_size} px, {args.epochs} epochs, seed "
             f"{args.seed}, 1 thread), on the bundled Fashion-MNIST subset: 2,000 training images, top-1 on its "
             f"1,000 held-out test images at the last epoch. Machine: {info['cpu']}, load "
             f"{info['load_average_1_5_15']}.", "",
             "| model | network | params M | top-1 % (last epoch) | best epoch's top-1 % | train s |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['network']} | {r['params'] / 1e6:.2f} | {r['top1']:.1f} | "
                     f"{r['best_top1']:.1f} | {r['train_s']:.0f} |")
    lines += ["", "One seed per network: differences of a point or two are within seed noise. Train seconds are "
              "wall time on a machine that may run other jobs: not a speed comparison (latency is in leakage.md)."]
    atomic_write_text(OUT / "leak_usefulness.md", "\n".join(lines) + "\n")
    print(f"wrote {OUT / 'leak_usefulness.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
