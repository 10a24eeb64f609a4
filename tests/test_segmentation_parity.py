"""Faithfulness: LR-ASPP and DeepLabv3 on MobileNetV3-Large equal torchvision's models.

torchvision's models are built without weights (weights=None, weights_backbone=None), given random
parameters and randomized BatchNorm statistics, saved as a torchvision state dict and loaded into
ours through ``create_model(name, checkpoint=...)`` (the registry's torchvision converter).
Outputs in eval mode must agree within 1e-5 relative to the logit scale.
"""

import pytest
import torch
from torchvision.models import segmentation as tvseg

import edgevision

CASES = [
    ("lraspp_mobilenetv3_large_100", tvseg.lraspp_mobilenet_v3_large, {}),
    ("deeplabv3_mobilenetv3_large_100", tvseg.deeplabv3_mobilenet_v3_large, {"aux_loss": True}),
]


def _randomize(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("running_mean") or name.endswith("bias"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif name.endswith("weight") and t.dim() == 1:  # BN gamma
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:  # conv weights: fan-in scaled so activations stay O(1) through the network
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / fan_in) ** 0.5)



@pytest.fixture(autouse=True)
def _one_thread():
    """Small convolutions are fastest on one thread, and far faster on a loaded machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

@pytest.mark.parametrize("name,tv_builder,kwargs", CASES, ids=[c[0] for c in CASES])
def test_matches_torchvision(tmp_path, name, tv_builder, kwargs):
    torch.manual_seed(0)
    ref = tv_builder(weights=None, weights_backbone=None, num_classes=21, **kwargs).eval()
    _randomize(ref, seed=1)
    path = tmp_path / "tv.pth"
    torch.save(ref.state_dict(), path)
    ours = edgevision.create_model(name, num_classes=21, checkpoint=str(path), **kwargs).eval()
    assert ours.checkpoint_format == "torchvision"
    x = torch.randn(2, 3, 128, 160, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, got = ref(x), ours(x)
    assert set(got) == set(want)
    for k in want:
        scale = want[k].abs().max().item()
        assert scale > 1e-3  # a non-trivial output (the test could fail)
        err = (got[k] - want[k]).abs().max().item()
        assert err <= 1e-5 * scale, f"{k}: max |d| {err:.3g} vs logit scale {scale:.3g}"
    exported = ours.export_forward(x)
    assert len(exported) == len(ours.export_output_names)
    assert torch.equal(exported[0], got["out"])


def test_converter_refuses_other_layouts(tmp_path):
    ref = tvseg.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21)
    path = tmp_path / "tv.pth"
    torch.save(ref.state_dict(), path)
    with pytest.raises(Exception, match="checkpoint does not fit"):
        edgevision.create_model("deeplabv3_mobilenetv3_large_100", num_classes=21, checkpoint=str(path))
