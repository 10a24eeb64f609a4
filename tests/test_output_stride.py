"""Output-stride control: stride turned into dilation in the last stages.

EMO (ours) and timm's mobile CNNs (through the segmentation backbone adapter) run at output
stride 8, 16 or 32: the deepest map is input/stride, the earlier levels keep their resolution,
and the network at 32 is the unchanged classifier backbone. Families that cannot dilate refuse
another stride with one line; a stride outside {8, 16, 32} is refused everywhere.
"""

import pytest
import torch

import edgevision as ev
from edgevision.tasks.segmentation.backbones import build_backbone


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_emo_output_stride(output_stride):
    torch.manual_seed(0)
    net = ev.create_model("emo_1m", features_only=True, output_stride=output_stride).eval()
    maps = net(torch.randn(1, 3, 96, 128))
    native = [4, 8, 16, 32]
    for m, r, info_r in zip(maps, native, net.feature_info.reduction()):
        s = min(r, output_stride)
        assert info_r == s
        assert tuple(m.shape[-2:]) == (96 // s, 128 // s)


def test_emo_output_stride_same_weights_as_classifier():
    """Dilation changes no parameter: the classifier's state dict loads into the dilated network, and
    the levels before the first dilated stage are identical."""
    torch.manual_seed(0)
    ref = ev.create_model("emo_1m", features_only=True).eval()
    dil = ev.create_model("emo_1m", features_only=True, output_stride=8).eval()
    dil.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = ref(x), dil(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.allclose(a[3].mean((2, 3)), b[3].mean((2, 3)))  # dilated stages differ


@pytest.mark.parametrize("backbone", ["mobilenetv3_large_100", "mobilenetv2_100", "emo_1m"])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_adapter_output_stride(backbone, output_stride):
    bb = build_backbone(backbone, {"low": "r8", "high": -1}, output_stride).eval()
    with torch.no_grad():
        out = bb(torch.randn(1, 3, 64, 96))
    assert tuple(out["high"].shape[-2:]) == (64 // output_stride, 96 // output_stride)
    assert tuple(out["low"].shape[-2:]) == (8, 12)
    assert bb.channels["high"] == out["high"].shape[1] and bb.channels["low"] == out["low"].shape[1]
    assert bb.reductions["high"] == output_stride


@pytest.mark.parametrize("name", ["edgevit_xxs", "efficientformer_l1", "tiny_moat_0", "nasnet_a_mobile"])
def test_fixed_stride_families_refuse_with_one_line(name):
    with pytest.raises(ValueError, match="output_stride") as e:
        ev.create_model(name, output_stride=16)
    assert "\n" not in str(e.value)
    ev.create_model(name, features_only=True, output_stride=32)  # the native stride is accepted
    head = ev.create_model(f"lraspp_{name}", num_classes=3)  # heads fall back to the native stride
    assert head.output_stride == 32
    with pytest.raises(ValueError, match="output_stride=16 is not available"):
        ev.create_model(f"deeplabv3_{name}", num_classes=3, output_stride=16)


@pytest.mark.parametrize("bad", [4, 12, 64, True, "16"])
def test_bad_output_stride(bad):
    with pytest.raises(ValueError, match="output_stride"):
        ev.create_model("emo_1m", output_stride=bad)
    with pytest.raises(ValueError, match="output_stride must be one of"):
        ev.create_model("lraspp_mobilenetv3_large_100", num_classes=3, output_stride=bad)
