"""ssdlite320_mobilenetv3_large_100 == torchvision's ssdlite320_mobilenet_v3_large on the same weights.

Random init with randomized BatchNorm statistics and affine terms (so an eps or a wrong BN
pairing shows), torchvision's state dict loaded through our converter (``checkpoint=PATH``),
then: every feature map, the head outputs (<= 1e-5) and the post-processed detections
(identical boxes, labels; scores within 1e-6). No downloads: weights=None, weights_backbone=None
(torchvision then builds the reduced tail, as its COCO weights are).
"""

import pytest
import torch
from torchvision.models.detection import ssdlite320_mobilenet_v3_large

import edgevision as ev
from edgevision.checkpoints import CheckpointMismatchError


def _randomize_bn(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    torch.manual_seed(0)
    tv = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=91)
    with torch.no_grad():
        _randomize_bn(tv)
        # a head whose scores pass the 0.001 threshold, so post-processing has work to do
        for conv in tv.head.classification_head.module_list:
            conv[1].bias.normal_(0, 2.0)
    path = tmp_path_factory.mktemp("tv") / "ssdlite_tv.pth"
    torch.save(tv.state_dict(), path)
    ours = ev.create_model("ssdlite320_mobilenetv3_large_100", checkpoint=str(path))
    return tv.eval(), ours.eval()


def test_loads_torchvision_format(pair):
    _, ours = pair
    assert ours.checkpoint_format == "torchvision"
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in pair[0].parameters())


@torch.no_grad()
def test_features_and_head_outputs(pair):
    tv, ours = pair
    x = torch.randn(2, 3, 320, 320)
    ft, fo = tv.backbone(x), ours.backbone(x)
    assert [tuple(v.shape) for v in ft.values()] == [tuple(v.shape) for v in fo.values()]
    for a, b in zip(ft.values(), fo.values()):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    head = tv.head(list(ft.values()))
    cls, reg = ours.export_forward(x)
    assert ours.export_output_names == ("cls_logits", "bbox_regression")
    torch.testing.assert_close(cls, head["cls_logits"], atol=1e-5, rtol=0)
    torch.testing.assert_close(reg, head["bbox_regression"], atol=1e-5, rtol=0)


@torch.no_grad()
def test_postprocessed_detections(pair):
    tv, ours = pair
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 300, 400, generator=g), torch.rand(3, 320, 320, generator=g)]
    for a, b in zip(tv(images), ours(images)):
        assert len(a["boxes"]) > 0
        assert torch.equal(a["labels"], b["labels"])
        torch.testing.assert_close(b["boxes"], a["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(b["scores"], a["scores"], atol=1e-6, rtol=0)


def test_train_losses_match(pair):
    tv, ours = pair
    images = [torch.rand(3, 320, 320), torch.rand(3, 320, 320)]  # BN on the 1x1 last map needs 2
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 200.0, 220.0]]), "labels": torch.tensor([5])},
               {"boxes": torch.tensor([[50.0, 60.0, 120.0, 90.0]]), "labels": torch.tensor([90])}]
    tv.train(), ours.train()
    try:
        torch.manual_seed(0)
        lt = tv(images, targets)
        torch.manual_seed(0)
        lo = ours(images, targets)
    finally:
        # train-mode BN updated running stats identically in both; restore eval for the others
        tv.eval(), ours.eval()
    assert lt.keys() == lo.keys()
    for k in lt:
        torch.testing.assert_close(lo[k], lt[k], atol=1e-5, rtol=1e-5)


def test_wrong_checkpoint_lists_the_diff(tmp_path):
    sd = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None).state_dict()
    sd.pop("backbone.features.0.3.block.1.0.weight")  # one tensor short
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointMismatchError):
        ev.create_model("ssdlite320_mobilenetv3_large_100", checkpoint=str(path))
