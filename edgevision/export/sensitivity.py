"""Per-layer int8 sensitivity, for mixed precision: which layers to keep in fp32.

Measured on calibration images only. The fast measure (used by default) rounds one layer's
weights at a time to int8 exactly as ONNX Runtime will (per-channel or per-tensor, 7-bit with
``reduce_range``) in the BN-folded torch model and records the output error against the float
model; one forward pass per layer, so seconds, where re-quantizing the ONNX file once per node
takes minutes (:func:`edgevision.export.int8.layer_sensitivity` does that, exact but slow).
On EfficientNet-Lite0 fine-tuned on grey Fashion-MNIST, weight rounding was the larger error
(ORT with 16-bit activations and int8 weights: relative logit error 0.13; int8 activations and
16-bit weights: 0.036), led by the stem conv, whose colour filters cancel on grey input.

The ONNX node of each torch layer is found by its weights (the export of the same folded
model carries them unchanged), so the names work with either ONNX exporter.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from edgevision.export._deps import require
from edgevision.export.bias_correction import fake_quantize_weight


def _error(ref: torch.Tensor, got: torch.Tensor) -> float:
    return float(((got - ref) ** 2).mean() / (ref ** 2).mean().clamp_min(1e-12))


@torch.no_grad()
def weight_sensitivity(model: nn.Module, images: torch.Tensor, per_channel: bool = True,
                       reduce_range: bool = False, batch: int = 64,
                       weight_type: str = "int8") -> list[tuple[str, float]]:
    """[(layer name, output error with only that layer's weights int8)], most sensitive first."""
    model = model.eval()

    def run():
        return torch.cat([model(images[i:i + batch]) for i in range(0, len(images), batch)])

    ref = run()
    scores = []
    for name, mod in model.named_modules():
        if type(mod) not in (nn.Conv2d, nn.Linear):
            continue
        w = mod.weight.detach().clone()
        mod.weight.copy_(fake_quantize_weight(w, per_channel, reduce_range, weight_type))
        try:
            scores.append((name, _error(ref, run())))
        finally:
            mod.weight.copy_(w)
    return sorted(scores, key=lambda s: -s[1])


def onnx_nodes_of_layers(model: nn.Module, onnx_path, names: list[str]) -> dict[str, str]:
    """{torch layer name: ONNX node name}, matching each layer's weight to a node's initializer."""
    onnx = require("onnx", "onnx", "mixed-precision int8")
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {i.name: i for i in graph.initializer}
    candidates = []
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            for inp in node.input[1:2]:
                if inp in inits:
                    candidates.append((node.name, numpy_helper.to_array(inits[inp])))
    found = {}
    for name in names:
        w = model.get_submodule(name).weight.detach().cpu().numpy()
        for node_name, arr in candidates:
            for a in (arr, arr.T if arr.ndim == 2 else None):
                if a is not None and a.shape == w.shape and np.allclose(a, w, rtol=1e-5, atol=1e-7):
                    found[name] = node_name
                    break
            if name in found:
                break
    return found
