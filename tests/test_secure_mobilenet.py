"""Secure MobileNet-V1 (DeepPeep's defence, edgevision's reading): counts, shapes, structure."""

import pytest
import timm
import torch
from timm.models._efficientnet_blocks import ConvBnAct, DepthwiseSeparableConv

import edgevision as ev
import edgevision.models.secure_mobilenet as sm
from edgevision.profiling import count_macs, count_params

# The design written out by hand, independently of the timm arch strings:
# (kind, in, out, stride) after the 3x3 stride-2 stem (3 -> 32).
LAYERS = [("conv", 32, 64, 1)] + [("ds", *t) for t in [
    (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2),
    *[(512, 512, 1)] * 5, (512, 1024, 2), (1024, 1024, 1)]]


def hand_counts(size: int, num_classes: int = 1000) -> tuple[int, int]:
    """(params, MACs) of the design above: convs without bias, BN = 2 params/channel, Linear."""
    side = size // 2  # after the stem
    params, macs = 3 * 32 * 9 + 2 * 32, side * side * 3 * 32 * 9
    for kind, cin, cout, stride in LAYERS:
        side_out = (side + stride - 1) // stride
        if kind == "conv":
            params += cin * cout * 9 + 2 * cout
            macs += side_out ** 2 * cin * cout * 9
        else:  # depthwise 3x3 + BN + pointwise 1x1 + BN
            params += cin * 9 + 2 * cin + cin * cout + 2 * cout
            macs += side_out ** 2 * (cin * 9 + cin * cout)
        side = side_out
    params += 1024 * num_classes + num_classes
    macs += 1024 * num_classes
    return params, macs


@pytest.fixture(scope="module")
def model():
    return ev.create_model("secure_mobilenetv1_100").eval()


def test_counts_match_the_design_by_hand(model):
    params, macs = hand_counts(224)
    assert count_params(model) == params
    assert count_macs(model, (1, 3, 224, 224)) == macs
    # the registry's figures are these counts (nothing was published)
    info = ev.model_info("secure_mobilenetv1_100")
    assert abs(info.published_params / params - 1) < 1e-3 and abs(info.published_macs / macs - 1) < 1e-3


def test_differs_from_vanilla_in_the_first_block_only(model):
    vanilla = timm.create_model("mobilenetv1_100")
    # by hand: DS(32->64) at 112x112 is 32*9 + 64 + 32*64 + 128 params, dense 3x3 is 32*64*9 + 128
    ds_params, conv_params = 32 * 9 + 2 * 32 + 32 * 64 + 2 * 64, 32 * 64 * 9 + 2 * 64
    assert count_params(model) - count_params(vanilla) == conv_params - ds_params
    assert count_macs(model, (1, 3, 224, 224)) - count_macs(vanilla, (1, 3, 224, 224)) == \
        112 * 112 * (32 * 64 * 9 - (32 * 9 + 32 * 64))
    blocks = [b for stage in model.blocks for b in stage]
    assert isinstance(blocks[0], ConvBnAct) and blocks[0].conv.kernel_size == (3, 3)
    assert all(isinstance(b, DepthwiseSeparableConv) for b in blocks[1:]) and len(blocks) == 13
    # the rest is vanilla's: same keys and shapes after the first block
    sd, vsd = model.state_dict(), vanilla.state_dict()
    rest = [k for k in vsd if not k.startswith("blocks.0.")]
    assert all(k in sd and sd[k].shape == vsd[k].shape for k in rest)


def test_vanilla_arch_is_timms_mobilenetv1():
    ours, theirs = sm.build_mobilenetv1_arch(sm.VANILLA_ARCH), timm.create_model("mobilenetv1_100")
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
        [(k, v.shape) for k, v in theirs.state_dict().items()]


def test_shapes():
    m = ev.create_model("secure_mobilenetv1_100", num_classes=10).eval()
    with torch.inference_mode():
        for size in (32, 64, 97):
            assert m(torch.randn(2, 3, size, size)).shape == (2, 10)
    feats = ev.create_model("secure_mobilenetv1_100", features_only=True)(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [64, 128, 256, 512, 1024]
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4, 2]


def test_timm_api_and_grayscale():
    m = timm.create_model("secure_mobilenetv1_100", num_classes=5, in_chans=1)
    assert m.get_classifier().out_features == 5 and m.num_features == 1024
    assert m(torch.randn(1, 1, 48, 48)).shape == (1, 5)


def test_bad_input_is_one_clear_error(model):
    with pytest.raises((ValueError, TypeError), match="channel"):
        model(torch.randn(1, 1, 64, 64))
