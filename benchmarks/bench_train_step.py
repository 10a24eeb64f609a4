"""Training-step throughput: edgevision's training step vs a plain timm training loop.

Both train the same architecture (built by edgevision, same initial weights), on the same
synthetic batch, with the same threads, optimizer (timm AdamW) and loss; they alternate in
rounds so machine load hits both alike. "ours" is exactly the per-step work of
``edgevision.training.engine._train_epoch``: scheduler update, ``train_step`` (autocast
context, zero_grad, backward, optional clipping, step) and the loss/accuracy bookkeeping.
"plain" is the textbook loop: forward, loss, zero_grad, backward, step.
Optionally timm's own implementation of the model (``--timm-model``) runs the plain loop too.

    python benchmarks/bench_train_step.py --model mobilenetv3_small_075 --batch 32 --img-size 64
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

import torch
import torch.nn as nn

RESULTS = Path(__file__).resolve().parent / "results"


def _make(args, build):
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    torch.manual_seed(0)
    model = build()
    model.train()
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    # No warm-up: both variants then train at (nearly) the same lr, so their weights and any
    # value-dependent kernel speed stay comparable; the schedule is still evaluated every step.
    sched, _ = create_scheduler_v2(opt, "cosine", num_epochs=10, warmup_epochs=0,
                                   step_on_epochs=False, updates_per_epoch=100)
    return model, opt, sched


def ours_runner(args, x, y):
    from edgevision.factory import create_model
    from edgevision.training.engine import train_step

    model, opt, sched = _make(args, lambda: create_model(args.model, num_classes=args.num_classes))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    state = {"step": 0, "acc": torch.zeros(2, dtype=torch.float64)}

    def step():
        sched.step_update(num_updates=state["step"])
        loss, logits = train_step(model, x, y, opt, loss_fn, None, None, args.clip_grad)
        state["step"] += 1
        state["acc"] += torch.stack([loss.double() * len(y), (logits.argmax(1) == y).sum().double()])
        if state["step"] % 20 == 0:  # the progress bar's read-back
            state["acc"].tolist()

    return step


def plain_runner(args, x, y, timm_impl: bool = False):
    from edgevision.factory import create_model

    if timm_impl:
        import timm

        build = lambda: timm.create_model(args.model, num_classes=args.num_classes)  # noqa: E731
    else:
        build = lambda: create_model(args.model, num_classes=args.num_classes)  # noqa: E731
    model, opt, _ = _make(args, build)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)

    def step():
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        if args.clip_grad:
            nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
        opt.step()

    return step


def time_steps(step, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mobilenetv3_small_075")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per variant")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--clip-grad", type=float, default=None)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--timm-model", action="store_true", help="also time timm's own implementation")
    p.add_argument("--output", default=str(RESULTS), help="folder for train_step.json/.md")
    args = p.parse_args(argv)

    import edgevision  # noqa: F401  (registers the models)

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, generator=g)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, args.num_classes, (args.batch,), generator=g)
    runners = {"ours": ours_runner(args, x, y), "plain_loop": plain_runner(args, x, y)}
    if args.timm_model:
        runners["plain_loop_timm_impl"] = plain_runner(args, x, y, timm_impl=True)
    load_before = os.getloadavg()
    for step in runners.values():
        time_steps(step, args.warmup)
    ips = {k: [] for k in runners}
    order = list(runners)
    for r in range(args.rounds):  # interleaved; the order flips each round against drift
        for name in order if r % 2 == 0 else order[::-1]:
            step = runners[name]
            ips[name].append(args.batch * args.steps / time_steps(step, args.steps))
    load_after = os.getloadavg()
    med = {k: statistics.median(v) for k, v in ips.items()}
    result = {
        "command": "python benchmarks/bench_train_step.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "model": args.model, "batch": args.batch, "img_size": args.img_size, "threads": args.threads,
        "steps_per_round": args.steps, "rounds": args.rounds, "warmup": args.warmup,
        "clip_grad": args.clip_grad, "channels_last": args.channels_last,
        "img_per_s_median": med, "img_per_s_rounds": ips,
        "ratio_ours_vs_plain": med["ours"] / med["plain_loop"],
        "loadavg_1m_before_after": [load_before[0], load_after[0]],
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_step.json").write_text(json.dumps(result, indent=1))
    lines = [
        "# Training-step throughput: edgevision vs a plain timm loop", "",
        f"Command: `{result['command']}`", "",
        f"{args.model}, batch {args.batch}, {args.img_size}x{args.img_size}, {args.threads} thread(s), "
        f"timm AdamW, {args.rounds} interleaved rounds of {args.steps} steps (median); "
        f"load average {load_before[0]:.1f} -> {load_after[0]:.1f} (shared machine: compare ratios).", "",
        "| variant | img/s (median) | min | max |", "|---|---:|---:|---:|",
    ]
    for k, v in ips.items():
        lines.append(f"| {k} | {med[k]:.1f} | {min(v):.1f} | {max(v):.1f} |")
    lines += ["", f"Ratio ours / plain loop: **{result['ratio_ours_vs_plain']:.3f}x** (goal >= 1.0x)."]
    (out / "train_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
