"""Every registry backbone under SSDLite and RetinaNet: build, train step (losses, backward), eval.

Small and fast: 128 px images, num_classes=3 (2 classes + background). Backbones outside FAST
are marked slow (still run by `make test`), as tests/test_tracing.py does.
"""

import pytest
import torch

import edgevision as ev
from edgevision.registry import dense_backbones

FAST = {"emo_1m", "mobilenetv3_large_100", "efficientformer_l1"}
BACKBONES = dense_backbones()
HEADS = ("ssdlite", "retinanet")


def _params():
    for head in HEADS:
        for bb in BACKBONES:
            marks = () if bb in FAST else (pytest.mark.slow,)
            yield pytest.param(f"{head}_{bb}", id=f"{head}_{bb}", marks=marks)


def _batch(n=2, side=128):
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, side, side + 16 * i, generator=g) for i in range(n)]
    boxes = torch.tensor([[8.0, 10.0, 70.0, 90.0], [40.0, 30.0, 120.0, 100.0]]) * (side / 128)
    targets = [{"boxes": boxes, "labels": torch.tensor([1, 2])} for _ in range(n)]
    return images, targets


def test_every_backbone_has_both_detectors():
    names = set(ev.list_models(task="detection"))
    for bb in BACKBONES:
        assert {f"ssdlite_{bb}", f"retinanet_{bb}"} <= names
    assert "ssdlite320_mobilenetv3_large_100" in names
    assert not names & set(ev.list_models())  # classifiers listing unchanged


@pytest.mark.parametrize("name", list(_params()))
def test_train_and_eval(name):
    torch.manual_seed(0)
    side = 128 if name.split("_", 1)[1] in FAST else 64  # the same code paths; the zoo at a smaller size
    model = ev.create_model(name, num_classes=3, img_size=side)
    assert model.export_input_size == (side, side)
    images, targets = _batch(side=side)
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"classification", "bbox_regression"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads[-4:])  # the heads got gradients
    assert any(g is not None and g.abs().sum() > 0 for g in grads[:10])  # and the backbone's stem
    model.eval()
    with torch.no_grad():
        dets = model(images)
        cls, reg = model.export_forward(torch.randn(1, 3, side, side))
    assert len(dets) == 2
    for d, im in zip(dets, images):
        assert d["boxes"].shape[1] == 4 and d["labels"].dtype == torch.int64
        assert len(d["boxes"]) == len(d["scores"]) == len(d["labels"])
        if len(d["boxes"]):  # boxes in input-image pixels
            assert d["boxes"][:, 2].max() <= im.shape[2] + 1e-3
            assert d["boxes"][:, 3].max() <= im.shape[1] + 1e-3
    assert cls.shape[:2] == reg.shape[:2] and cls.shape[2] == 3 and reg.shape[2] == 4


def test_default_num_classes_is_coco():
    with torch.device("meta"):
        m = ev.create_model("ssdlite_emo_1m")
    assert m.num_classes == 91 and m.pretrained_cfg["num_classes"] == 91
    assert m.pretrained_cfg["input_size"] == (3, 320, 320)


@pytest.fixture(scope="module")
def small():
    return ev.create_model("ssdlite_mobilenetv3_large_100", num_classes=3, img_size=128)


@pytest.mark.parametrize("target, message", [
    ({"boxes": torch.tensor([[10.0, 10.0, 10.0, 50.0]]), "labels": torch.tensor([1])}, "zero or negative area"),
    ({"boxes": torch.tensor([[10.0, 10.0, 40.0, 50.0]]), "labels": torch.tensor([3])}, "label 3 out of range"),
    ({"boxes": torch.tensor([[10.0, 10.0, 40.0, 50.0]]), "labels": torch.tensor([0])}, "label 0 out of range"),
    ({"boxes": torch.tensor([[10.0, 10.0, 40.0, 50.0]])}, "must be a dict with 'boxes'"),
    ({"boxes": torch.tensor([10.0, 10.0, 40.0, 50.0]), "labels": torch.tensor([1])}, "float tensor \\[N,4\\]"),
    ({"boxes": torch.tensor([[10.0, 10.0, 40.0, float("nan")]]), "labels": torch.tensor([1])}, "NaN"),
])
def test_bad_targets_one_line(small, target, message):
    small.train()
    with pytest.raises(ValueError, match=message):
        small([torch.rand(3, 128, 128)], [target])


@pytest.mark.parametrize("images, exc, message", [
    ([torch.rand(1, 128, 128)], ValueError, "takes RGB images"),
    ([torch.rand(4, 128, 128)], ValueError, "takes RGB images"),
    (torch.rand(2, 128, 128), ValueError, "got a tensor of shape"),
    ([torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)], TypeError, "float images"),
    ([], TypeError, "non-empty list"),
    (["x.jpg"], TypeError, "not a torch.Tensor"),
])
def test_bad_images_one_line(small, images, exc, message):
    small.eval()
    with pytest.raises(exc, match=message):
        small(images)


def test_train_without_targets_and_bad_builds(small):
    small.train()
    with pytest.raises(ValueError, match="needs targets"):
        small([torch.rand(3, 128, 128)])
    with pytest.raises(ValueError, match="num_classes counts the background"):
        ev.create_model("ssdlite_emo_1m", num_classes=1)
    with pytest.raises(ValueError, match="in_chans=3"):
        ev.create_model("retinanet_emo_1m", in_chans=1)
    with pytest.raises(ValueError, match="features_only"):
        ev.create_model("retinanet_emo_1m", features_only=True)


def test_cli_list_task_detection(capsys):
    import json

    from edgevision.cli import main as cli_main

    assert cli_main(["list", "ssdlite*emo_1m", "--task", "detection", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["name"] == "ssdlite_emo_1m" and row["task"] == "detection" and row["input_size"] == [320, 320]
    assert row["published_params"] == 2.3e6 and row["params"] > 2e6 and row["macs"] > 5e8
    assert cli_main(["list", "ssdlite*", "--json"]) == 0  # default task: classifiers only
    assert json.loads(capsys.readouterr().out) == []
    assert cli_main(["list", "retinanet_emo_1m", "--task", "detection"]) == 0
    assert "800x1344" in capsys.readouterr().out
