"""CPU speed of EMO-1M vs timm edgenext_xx_small and EdgeViT-XXS vs timm mobilevit_xxs.

Batch-1 latency and batch-N throughput, side by side in one process, runs interleaved
(round-robin, one timed step per model per round) so that load drifts on a shared machine hit
every model alike. Protocol: eval + torch.inference_mode, fixed thread count, warm-up, then
median (and interquartile range) of per-step times. ``--channels-last`` runs every model
and input in NHWC (results then go to emo_edgevit_channels_last.*). Also a short torch.profiler table of the
top ops of emo_1m. Writes benchmarks/results/emo_edgevit.{json,md}.

    python benchmarks/bench_emo_edgevit.py --threads 1 --latency-steps 50 --throughput-steps 10

The EMO paper reports EMO-1M at +116% CPU throughput over EdgeNeXt-XXS (ratio 2.16).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import timm
import torch

import edgevision as ev
from edgevision.profiling import count_macs, count_params  # noqa: E402

PAIRS = [("emo_1m", "edgenext_xx_small"), ("edgevit_xxs", "mobilevit_xxs")]
PAPER_EMO_VS_EDGENEXT = 2.16  # +116% throughput, EMO paper
RESULTS = Path(__file__).resolve().parent / "results"


def build(name: str, ours: bool) -> torch.nn.Module:
    model = ev.create_model(name) if ours else timm.create_model(name, pretrained=False)
    return model.eval()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def summarize(times: list[float]) -> dict:
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"median_s": statistics.median(times), "q1_s": q[0], "q3_s": q[2], "n": len(times)}


@torch.inference_mode()
def interleaved(models: dict, x: torch.Tensor, warmup: int, steps: int) -> dict:
    """Per-model step times, one step per model per round, after `warmup` rounds."""
    times = {name: [] for name in models}
    for r in range(warmup + steps):
        for name, model in models.items():
            t0 = time.perf_counter()
            model(x)
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[name].append(dt)
    return {name: summarize(t) for name, t in times.items()}


@torch.inference_mode()
def profile_top_ops(model: torch.nn.Module, x: torch.Tensor, steps: int = 5, top: int = 12) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    model(x)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            model(x)
    events = [e for e in prof.key_averages() if not e.key.startswith("ProfilerStep")]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [{"op": e.key, "self_cpu_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
             "share": e.self_cpu_time_total / total, "calls_per_step": e.count // steps}
            for e in events[:top]]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32, help="throughput batch size")
    p.add_argument("--latency-warmup", type=int, default=5)
    p.add_argument("--latency-steps", type=int, default=50)
    p.add_argument("--throughput-warmup", type=int, default=2)
    p.add_argument("--throughput-steps", type=int, default=10)
    p.add_argument("--profile-steps", type=int, default=5)
    p.add_argument("--channels-last", action="store_true", help="models and inputs in NHWC memory format")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()
    names = [n for pair in PAIRS for n in pair]
    ours = {a for a, _ in PAIRS}
    models = {n: build(n, n in ours) for n in names}
    info = {n: {"params": count_params(m), "macs": count_macs(m, (1, 3, args.size, args.size)),
                "impl": "edgevision" if n in ours else f"timm {timm.__version__}"} for n, m in models.items()}

    x1 = torch.randn(1, 3, args.size, args.size)
    xb = torch.randn(args.batch, 3, args.size, args.size)
    if args.channels_last:
        models = {n: m.to(memory_format=torch.channels_last) for n, m in models.items()}
        x1, xb = (t.contiguous(memory_format=torch.channels_last) for t in (x1, xb))
    lat = interleaved(models, x1, args.latency_warmup, args.latency_steps)
    thr = interleaved(models, xb, args.throughput_warmup, args.throughput_steps)
    for n in names:
        info[n]["latency_ms"] = 1e3 * lat[n]["median_s"]
        info[n]["latency_iqr_ms"] = [1e3 * lat[n]["q1_s"], 1e3 * lat[n]["q3_s"]]
        info[n]["throughput_img_s"] = args.batch / thr[n]["median_s"]
        info[n]["throughput_iqr_img_s"] = [args.batch / thr[n]["q3_s"], args.batch / thr[n]["q1_s"]]
    ratios = {f"{a} vs {b}": {
        "latency_speedup": info[b]["latency_ms"] / info[a]["latency_ms"],
        "throughput_ratio": info[a]["throughput_img_s"] / info[b]["throughput_img_s"],
        "mac_ratio": info[a]["macs"] / info[b]["macs"]} for a, b in PAIRS}
    prof = profile_top_ops(models["emo_1m"], x1, args.profile_steps)
    prof_b = profile_top_ops(models["emo_1m"], xb, max(1, args.profile_steps // 2))

    result = {
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "machine": {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__},
        "settings": {"threads": args.threads, "size": args.size, "batch": args.batch,
                     "latency": [args.latency_warmup, args.latency_steps],
                     "throughput": [args.throughput_warmup, args.throughput_steps],
                     "mode": "eval + inference_mode, fp32, "
                     f"{'channels_last' if args.channels_last else 'NCHW'}, eager, interleaved round-robin"},
        "models": info, "ratios": ratios,
        "paper_emo_vs_edgenext_throughput_ratio": PAPER_EMO_VS_EDGENEXT,
        "profile_emo_1m_batch1": prof, f"profile_emo_1m_batch{args.batch}": prof_b,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "emo_edgevit" + ("_channels_last" if args.channels_last else "")
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(to_markdown(result, args.batch))
    print(to_markdown(result, args.batch))
    return result


def to_markdown(r: dict, batch: int) -> str:
    m, s = r["machine"], r["settings"]
    lines = [
        "# EMO-1M / EdgeViT-XXS CPU speed vs timm references", "",
        f"Command: `{r['command']}`", "",
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['platform']}; "
        f"load average before {tuple(round(v, 2) for v in m['loadavg_before'])}, "
        f"after {tuple(round(v, 2) for v in m['loadavg_after'])}.  ",
        f"Versions: python {r['versions']['python']}, torch {r['versions']['torch']}, timm {r['versions']['timm']}.  ",
        f"Settings: {s['threads']} thread(s), {s['size']}px, {s['mode']}; latency warm-up/steps "
        f"{s['latency'][0]}/{s['latency'][1]} at batch 1, throughput {s['throughput'][0]}/{s['throughput'][1]} "
        f"at batch {batch}; medians (IQR).", "",
        "| model | impl | params | MACs | latency b1 (ms) | throughput b%d (img/s) |" % batch,
        "|---|---|---:|---:|---:|---:|",
    ]
    for n, d in r["models"].items():
        lines.append(f"| {n} | {d['impl']} | {d['params'] / 1e6:.2f}M | {d['macs'] / 1e6:.0f}M | "
                     f"{d['latency_ms']:.2f} ({d['latency_iqr_ms'][0]:.2f}-{d['latency_iqr_ms'][1]:.2f}) | "
                     f"{d['throughput_img_s']:.1f} ({d['throughput_iqr_img_s'][0]:.1f}-"
                     f"{d['throughput_iqr_img_s'][1]:.1f}) |")
    lines += ["", "| pair | latency speed-up (ref/ours) | throughput ratio (ours/ref) | MAC ratio |", "|---|---:|---:|---:|"]
    for k, v in r["ratios"].items():
        lines.append(f"| {k} | {v['latency_speedup']:.2f} | {v['throughput_ratio']:.2f} | {v['mac_ratio']:.2f} |")
    lines += ["", f"EMO paper: EMO-1M throughput = {r['paper_emo_vs_edgenext_throughput_ratio']:.2f}x "
              "EdgeNeXt-XXS (+116%).", ""]
    for key in [k for k in r if k.startswith("profile_emo_1m")]:
        lines += [f"## Top ops, emo_1m ({key.rsplit('_', 1)[1]}; self CPU time per step)", "",
                  "| op | ms/step | share | calls/step |", "|---|---:|---:|---:|"]
        lines += [f"| {e['op']} | {e['self_cpu_ms_per_step']:.2f} | {100 * e['share']:.1f}% | {e['calls_per_step']} |"
                  for e in r[key]]
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
