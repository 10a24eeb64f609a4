"""`edgevision search`: latency-constrained architecture search on the user's machine and runtime."""

from __future__ import annotations

from edgevision.cli._args import float_range, int_range, non_negative_int, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser(
        "search", help="search a network under a latency target (MnasNet reward, aging evolution)",
        description="Aging evolution over a factorized space (mnasnet: MobileNetV3/MnasNet blocks; emo: iRMB "
        "with window attention) under MnasNet's reward ACC*(LAT/T)^w. Accuracy: a short training on the data "
        "(default: the bundled Fashion-MNIST subset, 80/20 train/val split of its training images). Latency: "
        "the predictor over --table, else measured per candidate; finalists are always measured. Writes "
        "OUT/best.json (a net config create_model builds), OUT/search_log.jsonl (resumes when rerun with the "
        "same settings), OUT/summary.json and OUT/pareto.png.")
    p.add_argument("--space", required=True, choices=["mnasnet", "emo"], help="search space")
    p.add_argument("--latency-ms", required=True, type=float_range(0, None, lo_open=True),
                   help="latency target T in ms (batch 1, --latency-size px, --threads threads)")
    p.add_argument("--runtime", default="onnxruntime", help="runtime latency is measured on (default onnxruntime)")
    p.add_argument("--table", default=None, help="latency table (edgevision latency build) for the predictor")
    p.add_argument("--data", default=None, help="ImageFolder data (DIR/train[, DIR/val]); default: bundled "
                   "Fashion-MNIST subset")
    p.add_argument("--budget", type=int_range(1, 100000), default=20, help="trained candidates (default 20)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    p.add_argument("--reward", choices=["soft", "hard"], default="soft",
                   help="MnasNet soft (w=-0.07 both sides) or hard (0 below T, -1 above) constraint")
    p.add_argument("--population", type=int_range(2, 10000), default=10, help="population size (default 10)")
    p.add_argument("--sample-size", type=positive_int, default=3, help="tournament size (default 3)")
    p.add_argument("--batch", type=positive_int, default=1,
                   help="candidates drawn per generation, their latencies timed together (default 1)")
    p.add_argument("--oversample", type=positive_int, default=1,
                   help="draw the initial population this many times over (tight targets; default 1)")
    p.add_argument("--finalists", type=positive_int, default=3, help="top candidates re-measured (default 3)")
    p.add_argument("--epochs", type=int_range(1, 1000), default=5, help="proxy training epochs (default 5)")
    p.add_argument("--img-size", type=int_range(16, 512), default=32, help="proxy training input side (default 32)")
    p.add_argument("--latency-size", type=int_range(16, 4096), default=224,
                   help="input side latency is measured at (default 224)")
    p.add_argument("--threads", type=positive_int, default=1, help="threads for timing and training (default 1)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgevision.search.proxy import ProxyConfig
    from edgevision.search.run import search

    cfg = ProxyConfig(img_size=args.img_size, epochs=args.epochs, threads=args.threads, seed=args.seed)
    s = search(args.space, args.latency_ms, args.output, runtime=args.runtime, table=args.table, data=args.data,
               budget=args.budget, seed=args.seed, reward=args.reward, population=args.population,
               sample_size=args.sample_size, batch=args.batch, oversample=args.oversample,
               n_finalists=args.finalists, latency_size=args.latency_size,
               threads=args.threads, proxy_config=cfg)
    w = s["winner"]
    print(f"best: top-1 {100 * w['acc']:.1f}% (search val split), {w['measured_ms']:.2f} ms measured "
          f"({s['runtime']}, {s['latency_size']} px, {s['threads']} thread(s)), target {s['target_ms']:g} ms")
    print(f"wrote {args.output}/best.json, search_log.jsonl, summary.json, pareto.png")
    return 0
