"""Architecture-leakage audit (DeepPeep): what a model's execution trace reveals about its blocks.

    import edgevision.leak as leak
    audit = leak.audit("mobilenetv3_large_100", size=224, runtime="eager")
    audit["scores"]["block_type_acc"], audit["result"]["config"]   # accuracy, recovered net config

Modules: trace (the observer's view, the observer model), segment (trace -> layers -> blocks),
infer (the attack and the machine's latency model), randnets (random networks the latency
model is fitted on), score (ground truth and accuracies), report (text and PNG).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["audit", "record_trace", "load_trace", "save_trace", "infer_architecture", "latency_model"]

from edgevision.leak.trace import load_trace, record_trace, save_trace  # noqa: E402


def latency_model(runtime: str = "eager", size: int = 224, path=None, n_nets: int = 40, refit: bool = False,
                  progress=None):
    """This machine's latency model for ``runtime``/``size``: from ``path`` or the cache, else fitted
    on ``n_nets`` random networks (minutes; cached in ~/.cache/edgevision/leak/)."""
    from edgevision.leak.infer import LatencyModel
    from edgevision.leak.randnets import fit_or_load

    if path is not None and Path(path).exists() and not refit:
        return LatencyModel.load(path)
    return fit_or_load(runtime, size, n_nets=n_nets, path=path, refit=refit, progress=progress)


def infer_architecture(trace: dict, lm=None) -> dict:
    from edgevision.leak.infer import infer_architecture as _infer
    from edgevision.leak.trace import validate_trace

    validate_trace(trace)
    lm = lm or latency_model(trace["runtime"], trace["size"])
    validate_trace(trace, runtime=lm.runtime)
    return _infer(trace, lm)


def audit(model_or_name, size: int = 224, runtime: str = "eager", lm=None, repeats: int = 7,
          threads: int | None = 1, n_nets: int = 40) -> dict:
    """Trace -> infer -> score in one call.

    Returns ``{"model", "trace", "result", "scores"}``: ``result`` is the recovered architecture
    (``blocks``, ``config``: a net config ``create_model`` builds); ``scores`` has block_type_acc,
    kernel_acc, stride_acc, expansion_acc, width_rel_err (timm-built CNNs; for other models,
    counts of attention blocks and convs). Timing: run it alone on the machine (flock).
    """
    from edgevision.leak.score import score
    from edgevision.leak.trace import _load_model

    model, name = _load_model(model_or_name)
    lm = lm if lm is not None else latency_model(runtime, size, n_nets=n_nets)
    if lm.runtime != runtime:
        raise ValueError(f"the latency model is for runtime {lm.runtime!r}, not {runtime!r}")
    trace = record_trace(model, size=size, runtime=runtime, repeats=repeats, threads=threads)
    result = infer_architecture(trace, lm)
    return {"model": name, "trace": trace, "result": result, "scores": score(model, result)}
