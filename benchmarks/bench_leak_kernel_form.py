"""Which kernel-size classifier the leakage attack uses, chosen in the open (issue 16).

    flock /tmp/timing.lock .venv/bin/python benchmarks/bench_leak_kernel_form.py [--runtime channels_last]

Records traces of --nets random networks (edgevision.leak.randnets, seeds from 100000, the ones
bench_leakage.py fits on) and of the registry CNNs, once. For each classifier form in
edgevision.leak.infer.KERNEL_FORMS the latency model is fitted on the first --fit random nets,
then the attack's kernel-size accuracy is scored on (a) the remaining random nets, held out from
the fit, and (b) the registry CNNs. Both come from the same recorded traces, so the forms are
compared on equal inputs. Writes benchmarks/results/leak_kernel_form_<runtime>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgevision.leak.trace import TORCH_RUNTIMES  # noqa: E402
OUT = ROOT / "benchmarks" / "results"
CNNS = ["mobilenetv1_100", "mobilenetv2_100", "mobilenetv3_large_100", "mobilenetv3_small_100",
        "semnasnet_100", "mnasnet_100", "efficientnet_lite0"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runtime", choices=TORCH_RUNTIMES, default="channels_last")
    p.add_argument("--nets", type=int, default=40, help="random networks recorded")
    p.add_argument("--fit", type=int, default=30, help="of which the first --fit are fitted on")
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--size", type=int, default=224)
    args = p.parse_args(argv)
    if not 1 <= args.fit < args.nets:
        p.error("need 1 <= --fit < --nets (the rest are the held-out random nets)")

    import edgevision as ev
    from edgevision.leak.infer import KERNEL_FORMS, fit_latency_model, infer_architecture
    from edgevision.leak.randnets import lab_traces
    from edgevision.leak.score import score
    from edgevision.leak.trace import record_trace
    from edgevision.models.netconfig import build_from_config
    from edgevision.profiling.timing import machine_info

    t0 = time.time()
    load_before = machine_info()["load_average_1_5_15"]
    torch.set_num_threads(1)
    lab = lab_traces(args.nets, size=args.size, runtime=args.runtime, repeats=args.repeats, threads=1,
                     seed=100_000, progress=lambda i, n: print(f"lab {i}/{n}", flush=True))
    models = {n: ev.create_model(n).eval() for n in CNNS}  # traced and scored: built once
    reg = {n: record_trace(m, size=args.size, runtime=args.runtime, repeats=args.repeats, threads=1)
           for n, m in models.items()}
    held = [(build_from_config(s["config"]).eval(), s["trace"]) for s in lab[args.fit:]]
    rows = []
    for form in KERNEL_FORMS:
        lm = fit_latency_model(lab[:args.fit], args.runtime, meta={"size": args.size}, kernel_form=form)
        rand = [score(m, infer_architecture(tr, lm))["kernel_acc"] for m, tr in held]
        per = {n: score(models[n], infer_architecture(tr, lm))["kernel_acc"] for n, tr in reg.items()}
        rows.append({"form": form, "random_heldout": float(np.mean(rand)), "random_each": rand,
                     "registry": float(np.mean(list(per.values()))), "registry_each": per})
        print(json.dumps({k: v for k, v in rows[-1].items() if not k.endswith("each")}), flush=True)
    command = ("flock /tmp/timing.lock .venv/bin/python benchmarks/bench_leak_kernel_form.py "
               + " ".join(argv if argv is not None else sys.argv[1:]))
    info = machine_info()
    report = {"command": command, "settings": vars(args), "machine": info, "load_before": load_before,
              "seconds": round(time.time() - t0), "rows": rows}
    OUT.mkdir(exist_ok=True)
    stem = OUT / f"leak_kernel_form_{args.runtime}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    lines = [f"Command: `{command}`", "",
             "# Kernel-size classifier of the leakage attack: the forms side by side", "",
             f"Machine: {info['cpu']}, 1 thread, load average before/after {load_before} / "
             f"{info['load_average_1_5_15']}. Runtime {args.runtime}, {args.size} px, {args.repeats} profiled runs "
             f"per trace; took {report['seconds']} s. Latency model fitted on random nets 0-{args.fit - 1} "
             f"(seeds from 100000); held out: random nets {args.fit}-{args.nets - 1}; the registry CNNs are "
             "never fitted on. Kernel accuracy over the true blocks after alignment (edgevision.leak.score).", "",
             "| form | held-out random nets | registry CNNs (mean) | " + " | ".join(CNNS) + " |",
             "|---|---|---|" + "---|" * len(CNNS)]
    for r in rows:
        lines.append(f"| {r['form']} | {100 * r['random_heldout']:.0f}% | {100 * r['registry']:.0f}% | "
                     + " | ".join(f"{100 * r['registry_each'][n]:.0f}%" for n in CNNS) + " |")
    lines += ["", "knn: the distance-weighted 5-nearest-neighbour classifier on duration features (the "
              "attack's default); quadratic: per-kernel-size least squares of log duration on log elements, its "
              "square, the resolution change and their product; linear: on log elements and the "
              "resolution change only. Random nets draw a kernel size per block (30% of blocks differ from their "
              "stage), while the attack assumes one kernel size per residual chain, as designed networks have."]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
