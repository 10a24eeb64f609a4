"""The attacker's laboratory: random compact CNNs, their traces, and the latency model fitted on them.

Honest evaluation (DESIGN.md): the attack is calibrated only on networks drawn here, never on
a registry model. The generator knows the *design space* of compact CNNs (block types ds, dsa,
ir, cn; kernels 3/5/7; expansions 1-6; SE; relu/relu6/hard_swish/swish; widths rounded to 8;
five stride-2 steps), which the attacker would know from the literature, not any network's
actual choices.
"""

from __future__ import annotations

import random
from pathlib import Path

ACTS = ("relu", "relu6", "hard_swish", "swish")
_ACT_CODE = {"relu": "re", "relu6": "r6", "hard_swish": "hs", "swish": "sw"}


def random_config(seed: int) -> dict:
    """A random net config (edgevision-net/1) in the compact-CNN design space."""
    rng = random.Random(seed)
    family = rng.choice(["mobilenetv3", "efficientnet"])
    act = rng.choice(ACTS)
    stem = rng.choice([8, 16, 24, 32, 40])
    n_stages = rng.randint(5, 8)
    strided = set(rng.sample(range(n_stages), min(4, n_stages)))
    c = stem
    arch = []
    for s in range(n_stages):
        stride = 2 if s in strided else 1
        c = min(640, max(8, int(round(c * rng.uniform(1.0, 2.2) / 8)) * 8))
        kind = rng.choices(["ir", "ds", "dsa", "cn"], weights=[0.65, 0.12, 0.13, 0.1])[0]
        if s == 0 and rng.random() < 0.5:
            kind = rng.choice(["ds", "dsa"])
        repeats = rng.randint(1, 4)
        k = rng.choice([3, 3, 5, 5, 7])
        stage = []
        for r in range(repeats):
            kk = k if rng.random() < 0.7 else rng.choice([3, 5, 7])
            ss = stride if r == 0 else 1
            parts = [kind, "r1", f"k{kk if kind != 'cn' else rng.choice([1, 1, 3, 5])}", f"s{ss}"]
            if kind == "ir":
                parts.append(f"e{rng.choice([1, 2, 2.5, 3, 3, 4, 4.5, 6, 6])}")
            parts.append(f"c{c}")
            if kind in ("ir", "ds") and rng.random() < 0.35:
                parts.append("se0.25")
            if rng.random() < 0.2:
                parts.append("n" + _ACT_CODE[rng.choice(ACTS)])
            stage.append("_".join(parts))
        arch.append(stage)
    return {"format": "edgevision-net/1", "name": f"random_{seed}", "family": family, "arch": arch,
            "stem_size": stem, "num_features": rng.choice([512, 768, 1024, 1280]), "act": act,
            "se_gate": rng.choice(["sigmoid", "hard_sigmoid"])}


def lab_traces(n_nets: int, size: int = 224, runtime: str = "eager", seed: int = 1000, repeats: int = 7,
               threads: int | None = 1, progress=None) -> list[dict]:
    """Traces (with the attacker-known shapes under ``lab``) of ``n_nets`` random networks."""
    from edgevision.leak.trace import record_trace
    from edgevision.models.netconfig import build_from_config

    out = []
    for i in range(n_nets):
        cfg = random_config(seed + i)
        model = build_from_config(cfg).eval()
        out.append({"config": cfg, "trace": record_trace(model, size=size, runtime=runtime, repeats=repeats,
                                                         threads=threads, lab=True)})
        if progress:
            progress(i + 1, n_nets)
    return out


def default_model_path(runtime: str = "eager", size: int = 224) -> Path:
    from edgevision.hub import cache_root

    return Path(cache_root()) / "leak" / f"latency_{runtime}_{size}.json"


def shipped_model_name(runtime: str) -> str:
    """File name of the latency model benchmarks/bench_leakage.py writes for ``runtime``."""
    return "leakage_latency_model.json" if runtime == "eager" else f"leakage_latency_model_{runtime}.json"


def fit_or_load(runtime: str = "eager", size: int = 224, n_nets: int = 40, path=None, refit: bool = False,
                progress=None):
    """The machine's latency model for ``runtime`` at ``size``: loaded from the cache, else fitted
    on ``n_nets`` random networks (a few minutes) and cached."""
    from edgevision.leak.infer import LatencyModel, fit_latency_model
    from edgevision.leak.trace import TORCH_RUNTIMES
    from edgevision.profiling.timing import machine_info

    if runtime not in TORCH_RUNTIMES:
        raise ValueError(f"the attack is implemented for PyTorch traces ({', '.join(TORCH_RUNTIMES)}) only, not "
                         f"{runtime!r}: ONNX Runtime's tuned session folds BN and fuses activations/adds into "
                         "Conv nodes, so the element-count channel it reads is gone (`leak trace --runtime "
                         "onnxruntime` still records what is visible)")
    path = Path(path) if path else default_model_path(runtime, size)
    if path.exists() and not refit:
        return LatencyModel.load(path)
    # In a checkout: the model benchmarks/bench_leakage.py fitted, when it was fitted on this CPU.
    shipped = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / shipped_model_name(runtime)
    if not refit and shipped.exists():
        try:
            lm = LatencyModel.load(shipped)
            if lm.meta.get("size") == size and lm.meta.get("cpu") == machine_info()["cpu"] and lm.runtime == runtime:
                return lm
        except ValueError:
            pass
    samples = lab_traces(n_nets, size=size, runtime=runtime, progress=progress)
    lm = fit_latency_model(samples, runtime, meta={"size": size, "cpu": machine_info()["cpu"]})
    path.parent.mkdir(parents=True, exist_ok=True)
    lm.save(path)
    return lm
