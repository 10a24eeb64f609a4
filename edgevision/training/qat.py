"""Quantization-aware training of the weights (``train --qat int8``), an engine hook.

Every plain ``nn.Conv2d``/``nn.Linear`` computes with its weights rounded to the grid ONNX
Runtime will use at export (per output channel, symmetric; :func:`fake_quantize_weight`),
and the gradient passes straight through the rounding to the float weights (STE), which the
optimizer keeps. Per-output-channel symmetric rounding commutes with BatchNorm folding (a
positive per-channel scale), so training on the unfolded weights trains the folded int8
model's weights. Activations stay float during training; their ranges are calibrated after
training as usual (:mod:`edgevision.export.int8`).

Why weights only: on the fine-tuned EfficientNet-Lite0 of ``benchmarks/bench_int8.py``,
rounding the weights alone moved 9.9% of the predictions, about as much as full int8.

The modules keep their parameters and state-dict keys (their class is swapped for a subclass
that rounds in ``forward``), so checkpoints, resume, EMA and the saved ``model.safetensors``
are unchanged: the saved weights are the float master weights, which the exporter rounds to
the same grid.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgevision.export.quantize import WEIGHT_TYPES


def _ste(w: torch.Tensor, spec: tuple) -> torch.Tensor:
    from edgevision.export.bias_correction import fake_quantize_weight

    per_channel, reduce_range, weight_type = spec
    q = fake_quantize_weight(w.detach(), per_channel, reduce_range, weight_type)
    return w + (q - w.detach())  # forward: q; backward: identity (straight-through)


class _QConv2d(nn.Conv2d):
    def _conv_forward(self, input, weight, bias):
        return super()._conv_forward(input, _ste(weight, self._qat_spec), bias)


class _QLinear(nn.Linear):
    def forward(self, input):
        return F.linear(input, _ste(self.weight, self._qat_spec), self.bias)


_SWAP = {nn.Conv2d: _QConv2d, nn.Linear: _QLinear}


def prepare_qat(model: nn.Module, weight_type: str = "int8", per_channel: bool = True,
                reduce_range: bool | None = None) -> list[str]:
    """Make every plain Conv2d/Linear of ``model`` train through its int8 weight rounding
    (in place). ``reduce_range=None``: 7-bit int8 on x86 CPUs without VNNI, as the exporter
    does. Returns the names of the layers changed; subclasses (e.g. timm's same-padding conv)
    are left alone and not listed."""
    if weight_type not in WEIGHT_TYPES:
        raise ValueError(f"--qat must be one of {', '.join(WEIGHT_TYPES)}; got {weight_type!r}")
    if reduce_range is None:
        from edgevision.export.quantize import _cpu_has_vnni

        reduce_range = weight_type == "int8" and not _cpu_has_vnni()
    spec = (per_channel, bool(reduce_range), weight_type)
    done = []
    for name, mod in model.named_modules():
        cls = _SWAP.get(type(mod))
        if cls is None and type(mod) in _SWAP.values():
            cls = type(mod)  # already prepared: only the spec changes
        if cls is not None:
            mod.__class__ = cls
            mod._qat_spec = spec
            done.append(name)
    return done


def strip_qat(model: nn.Module) -> nn.Module:
    """Back to plain Conv2d/Linear (float weights, as trained), in place."""
    back = {v: k for k, v in _SWAP.items()}
    for mod in model.modules():
        if type(mod) in back:
            mod.__class__ = back[type(mod)]
            del mod._qat_spec
    return model


class QATHook:
    def __init__(self, weight_type: str):
        self.weight_type = weight_type  # checked by check_config and prepare_qat

    def on_model_built(self, run, model: nn.Module) -> None:
        from edgevision.training.runtime import unwrap

        model = unwrap(model)
        layers = prepare_qat(model, self.weight_type)
        if not layers:
            raise ValueError(f"--qat: {type(model).__name__} has no Conv2d/Linear layers to train "
                             "through int8 rounding")
        run.log(f"qat: {len(layers)} conv/linear layers train through {self.weight_type} weight rounding "
                "(per channel, straight-through gradients; activations are calibrated after training)")
