"""Int8 that keeps accuracy: the depthwise-network PTQ recipe, measured on held-out data.

One call, :func:`quantize_model`, takes a float model, calibration images and *separate*
evaluation images (overlap is refused, :mod:`edgevision.export.heldout`) and an
:class:`Int8Config` naming the techniques:

- per-channel weight scales (default) or per-tensor;
- activation ranges by minmax, percentile or entropy calibration (ONNX Runtime's calibrators);
- on the torch model before export: BatchNorm folding, cross-layer equalization
  (:mod:`edgevision.export.equalize`) and bias correction (:mod:`edgevision.export.bias_correction`);
- error-compensating weight rounding (GPTQ, :mod:`edgevision.export.gptq`): weights put on
  ORT's int8 grid so that each layer's output error on the calibration images is small, not
  each weight's;
- mixed precision: the ``exclude_top_k`` most sensitive conv/gemm nodes stay fp32. Sensitivity
  is measured on the calibration images only (:mod:`edgevision.export.sensitivity`: one layer's
  weights rounded at a time in torch; or, exact and slow, each ONNX node left fp32 in turn).

It returns the int8 ONNX file and the fp32 and int8 logits on the evaluation images, so the
caller measures top-1 agreement (and accuracy, with labels) on images calibration never saw.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from edgevision.export.heldout import check_disjoint


WEIGHT_ROUNDINGS = ("nearest", "gptq")


@dataclass(frozen=True)
class Int8Config:
    name: str = "per-channel minmax"
    per_channel: bool = True
    method: str = "minmax"  # minmax | percentile | entropy
    percentile: float = 99.999
    cle: bool = False
    relu6: str = "replace"  # CLE through ReLU6: replace it with ReLU (DFQ, AIMET) or skip those pairs
    bias_correction: bool = False
    exclude_top_k: int = 0  # mixed precision: this many most sensitive nodes stay fp32
    sensitivity: str = "weights"  # "weights" (torch, seconds) or "onnx" (re-quantize per node, minutes)
    reduce_range: bool | None = None  # None: on for x86 CPUs without VNNI (see quantize_onnx_static)
    weight_type: str = "int8"  # "uint8": asymmetric weights, u8u8 kernels (no AVX2 saturation)
    weight_rounding: str = "nearest"  # "gptq": error-compensating rounding on calibration images
    calib_batch: int = 32

    def __post_init__(self):
        from edgevision.export.quantize import CALIBRATION_METHODS, WEIGHT_TYPES

        if self.method not in CALIBRATION_METHODS:
            raise ValueError(f"method must be one of {', '.join(CALIBRATION_METHODS)}; got {self.method!r}")
        if self.sensitivity not in ("weights", "onnx"):
            raise ValueError(f"sensitivity must be 'weights' or 'onnx'; got {self.sensitivity!r}")
        if self.weight_type not in WEIGHT_TYPES:
            raise ValueError(f"weight_type must be one of {', '.join(WEIGHT_TYPES)}; got {self.weight_type!r}")
        if self.weight_rounding not in WEIGHT_ROUNDINGS:
            raise ValueError(f"weight_rounding must be one of {', '.join(WEIGHT_ROUNDINGS)}; got {self.weight_rounding!r}")
        if self.weight_rounding == "gptq" and self.weight_type != "int8":
            raise ValueError("weight_rounding='gptq' rounds onto the symmetric int8 grid; use weight_type='int8'")
        if self.exclude_top_k < 0:
            raise ValueError(f"exclude_top_k must be >= 0; got {self.exclude_top_k}")


def run_onnx(path: str | Path, images: torch.Tensor, batch: int = 100, threads: int | None = None) -> torch.Tensor:
    """Logits of an ONNX file (dynamic batch) over ``images``, in batches."""
    from edgevision.export.onnx import ort_session

    session = ort_session(path, threads)
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: images[i:i + batch].numpy()})[0] for i in range(0, len(images), batch)]
    return torch.from_numpy(np.concatenate(outs))


def output_error(ref: torch.Tensor, got: torch.Tensor) -> float:
    """Mean squared logit error relative to the mean squared fp32 logit (scale-free)."""
    return float(((got - ref) ** 2).mean() / (ref ** 2).mean().clamp_min(1e-12))


def prepare_float(model: nn.Module, calibration: torch.Tensor, config: Int8Config,
                  keep_fp32: set[str] | None = None) -> tuple[nn.Module, dict]:
    """The torch-side steps: BN folded, then CLE, then GPTQ rounding, then bias correction (on
    calibration images; not on the ``keep_fp32`` layers, whose weights will not be rounded)."""
    from edgevision.export.fuse import fuse_bn
    from edgevision.export.quantize import _cpu_has_vnni

    info: dict = {}
    m = fuse_bn(model, calibration[:1], inplace=False)
    if config.cle:
        from edgevision.export.equalize import equalize

        m, pairs = equalize(m, relu6=config.relu6, inplace=True)
        info["cle_pairs"] = len(pairs)
    rr = (not _cpu_has_vnni()) if config.reduce_range is None else config.reduce_range
    if config.weight_rounding == "gptq":
        from edgevision.export.gptq import gptq_round

        info["gptq_layers"] = len(gptq_round(m, calibration, per_channel=config.per_channel, reduce_range=rr,
                                             skip=keep_fp32, batch=config.calib_batch))
    if config.bias_correction:
        from edgevision.export.bias_correction import correct_bias

        m, done = correct_bias(m, calibration, per_channel=config.per_channel, reduce_range=rr, inplace=True,
                               skip=keep_fp32, weight_type=config.weight_type)
        info["bias_corrected_layers"] = len(done)
    return m.eval(), info


def layer_sensitivity(pre_path: Path, calibration: torch.Tensor, config: Int8Config, workdir: Path,
                      cache: Path, nodes: list[str] | None = None) -> list[tuple[str, float]]:
    """[(node, score)], most sensitive first: score = output error with every node int8 minus
    the error with only this node left fp32, on the calibration images (never evaluation ones)."""
    from edgevision.export.quantize import quantizable_nodes, quantize_onnx_static

    nodes = quantizable_nodes(pre_path) if nodes is None else nodes
    ref = run_onnx(pre_path, calibration)

    def error(exclude: list[str]) -> float:
        path = quantize_onnx_static(pre_path, workdir / "sens.onnx", calibration, batch=config.calib_batch,
                                    reduce_range=config.reduce_range, per_channel=config.per_channel,
                                    method=config.method, percentile=config.percentile,
                                    nodes_to_exclude=exclude, calibration_cache=cache, preprocess=False,
                                    weight_type=config.weight_type)
        return output_error(ref, run_onnx(path, calibration))

    base = error([])
    scores = [(n, base - error([n])) for n in nodes]
    return sorted(scores, key=lambda s: -s[1])


@dataclass
class Int8Result:
    config: Int8Config
    fp32_path: Path  # the original model, exported as is
    int8_path: Path
    fp32_logits: torch.Tensor  # on the evaluation images
    int8_logits: torch.Tensor
    prepared_logits: torch.Tensor  # the float model after folding/CLE/bias correction, before int8
    excluded: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    @property
    def agreement(self) -> float:
        from edgevision.export.quantize import top1_agreement

        return top1_agreement(self.fp32_logits, self.int8_logits)

    def summary(self) -> dict:
        return dict(config=asdict(self.config), agreement=self.agreement, excluded=self.excluded,
                    int8_path=str(self.int8_path), **self.info)


def _calibration_subset(calibration: torch.Tensor, batch: int) -> torch.Tensor:
    n = (len(calibration) // batch) * batch
    if n == 0:
        raise ValueError(f"need at least {batch} calibration images (calib_batch); got {len(calibration)}")
    return calibration[:n]


def quantize_model(model: nn.Module, calibration: torch.Tensor, evaluation: torch.Tensor,
                   config: Int8Config = Int8Config(), workdir: str | Path = ".",
                   fp32_path: str | Path | None = None, sensitivity_images: int = 128,
                   prepared_cache: dict | None = None) -> Int8Result:
    """Quantize ``model`` with ``config``; calibrate on ``calibration`` images, report on
    ``evaluation`` images (both (N, C, H, W), normalized as the model expects, never
    overlapping: ValueError otherwise). ``fp32_path``: an existing fp32 export of ``model``
    (dynamic batch) to reuse. Files go to ``workdir``. Mixed precision scores nodes on the
    first ``sensitivity_images`` calibration images (ranges always come from all of them).
    ``info["calibration_error"]``: int8 vs float output error on the calibration images, a
    figure to choose configurations by without looking at the evaluation set.
    ``prepared_cache``: a dict the caller keeps between calls on the *same* model, so configs
    that share the torch-side steps export and pre-process once.
    """
    from edgevision.export.onnx import export_onnx
    from edgevision.export.quantize import preprocess_onnx, quantize_onnx_static

    check_disjoint(calibration, evaluation)
    if calibration.shape[1:] != evaluation.shape[1:]:
        raise ValueError(f"calibration images {tuple(calibration.shape[1:])} and evaluation images "
                         f"{tuple(evaluation.shape[1:])} differ in shape")
    calibration = _calibration_subset(calibration, config.calib_batch)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "_" for c in config.name)
    shape = (1, *calibration.shape[1:])
    model = model.eval()
    if fp32_path is None:
        fp32_path = export_onnx(model, workdir / "fp32.onnx", shape, dynamic_batch=True)
    fp32_logits = run_onnx(fp32_path, evaluation)
    from edgevision.export.quantize import _cpu_has_vnni

    rr = (not _cpu_has_vnni()) if config.reduce_range is None else config.reduce_range
    sens = calibration[:sensitivity_images]
    keep: list[str] = []  # torch layers mixed precision keeps fp32 (weights sensitivity)
    if config.exclude_top_k and config.sensitivity == "weights":
        from edgevision.export.sensitivity import weight_sensitivity

        with torch.no_grad():
            # scored on the float weights: rounding already-rounded (GPTQ) weights would score 0
            folded, _ = prepare_float(model, calibration, replace(config, bias_correction=False,
                                                                  weight_rounding="nearest"))
        layer_scores = weight_sensitivity(folded, sens, config.per_channel, rr, weight_type=config.weight_type)
        keep = [n for n, s in layer_scores[:config.exclude_top_k] if s > 0]
    rounded = config.bias_correction or config.weight_rounding != "nearest"
    key = (config.cle, config.relu6 if config.cle else None, config.bias_correction, config.weight_rounding,
           (config.per_channel, rr, config.weight_type, tuple(keep)) if rounded else None)
    if prepared_cache is not None and key in prepared_cache:
        prepared, info, pre = prepared_cache[key]
        info = dict(info)
    else:
        with torch.no_grad():
            prepared, info = prepare_float(model, calibration, config, keep_fp32=set(keep))
        prep = export_onnx(prepared, workdir / f"{slug}.float.onnx", shape, dynamic_batch=True)
        pre = preprocess_onnx(prep, workdir / f"{slug}.pre.onnx")
        if prepared_cache is not None:
            prepared_cache[key] = (prepared, dict(info), pre)
    cache = workdir / f"{slug}.calib.json"
    cache.unlink(missing_ok=True)  # ranges of an earlier run may belong to other weights

    def quantize(exclude: list[str]) -> Path:  # the first call calibrates (all images) and fills the cache
        return quantize_onnx_static(pre, workdir / f"{slug}.int8.onnx", calibration, batch=config.calib_batch,
                                    reduce_range=config.reduce_range, per_channel=config.per_channel,
                                    method=config.method, percentile=config.percentile, nodes_to_exclude=exclude,
                                    calibration_cache=cache, preprocess=False, weight_type=config.weight_type)

    int8 = quantize([])
    excluded: list[str] = []
    if config.exclude_top_k:
        if config.sensitivity == "onnx":
            scores = layer_sensitivity(pre, sens, config, workdir, cache)
            excluded = [n for n, s in scores[:config.exclude_top_k] if s > 0]
            info["sensitivity_top"] = [(n, round(s, 6)) for n, s in scores[:max(5, config.exclude_top_k)]]
        else:
            from edgevision.export.sensitivity import onnx_nodes_of_layers

            names = onnx_nodes_of_layers(prepared, pre, keep)
            missing = [n for n in keep if n not in names]
            if missing:
                raise RuntimeError(f"no ONNX node found for layer(s) {', '.join(missing)} (weights not matched)")
            excluded = [names[n] for n in keep]
            info["sensitivity_top"] = [(n, round(s, 6)) for n, s in layer_scores[:max(5, config.exclude_top_k)]]
        info["fp32_layers"] = keep or excluded
        int8 = quantize(excluded)
    # against the model as given (bias correction and CLE change the float model itself)
    info["calibration_error"] = output_error(run_onnx(fp32_path, calibration), run_onnx(int8, calibration))
    return Int8Result(config, Path(fp32_path), int8, fp32_logits, run_onnx(int8, evaluation),
                      run_onnx(pre, evaluation), excluded, info)
