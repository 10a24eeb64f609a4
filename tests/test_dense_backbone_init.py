"""`--checkpoint` of a detector/segmenter: its backbone starts from a classifier checkpoint of
that backbone (edgevision.tasks.base.init_backbone), strictly, recorded in the log and metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgevision.checkpoints import CheckpointMismatchError, read_metadata, save_model
from edgevision.cli import main
from edgevision.factory import create_model
from edgevision.tasks.base import (
    backbone_key_map,
    backbone_name,
    freeze_backbone_bn_stats,
    init_backbone,
)


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    """Every float tensor random (norm statistics included), so equality after load is not luck."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
    return model


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("bb")
    out = {}
    for bb in ("mobilenetv3_large_100", "emo_1m"):
        clf = _randomize(create_model(bb, num_classes=10), seed=len(bb))
        path = d / f"{bb}.safetensors"
        save_model(clf, path, bb, extra={"classes": [f"c{i}" for i in range(10)]})  # as `edgevision train` writes
        out[bb] = (path, clf.state_dict())
    return out


@pytest.mark.parametrize("name", ["ssdlite_mobilenetv3_large_100", "lraspp_mobilenetv3_large_100",
                                  "ssdlite_emo_1m", "lraspp_emo_1m"])
def test_classifier_checkpoint_loads_into_the_dense_backbone(ckpts, name):
    bb = backbone_name(name)
    path, sd = ckpts[bb]
    model = create_model(name, num_classes=5)
    head_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    info = init_backbone(model, name, str(path))
    own, pairs = model.state_dict(), backbone_key_map(model)
    assert len(pairs) == info["tensors"] > 50
    assert all(torch.equal(own[dk], sd[ck]) for dk, ck in pairs.items())
    # necks/heads untouched: they start fresh
    assert all(torch.equal(v, own[k]) for k, v in head_before.items())
    assert info["backbone"] == bb and info["format"] == "edgevision"
    assert info["norm_eval"] == bb.startswith("emo")
    assert ("classifier" in info["unused"]) if bb.startswith("mobilenet") else ("head" in info["unused"])
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model([x[0]]) if name.startswith("ssdlite") else model(x)


def test_mismatched_checkpoints_fail_with_the_key_list(ckpts):
    emo_path, _ = ckpts["emo_1m"]
    model = create_model("lraspp_mobilenetv3_large_100", num_classes=5)
    with pytest.raises(CheckpointMismatchError, match=r"missing keys.*\n\s+conv_stem\.weight"):
        init_backbone(model, "lraspp_mobilenetv3_large_100", str(emo_path))
    # the full MobileNetV3-Large does not fit torchvision SSDLite's reduced-tail backbone
    mnv3_path, _ = ckpts["mobilenetv3_large_100"]
    model = create_model("ssdlite320_mobilenetv3_large_100", num_classes=5)
    with pytest.raises(CheckpointMismatchError, match=r"mis-shaped keys.*\n\s+backbone\.blocks\.5\.0\.conv_pwl\.weight: "
                                                      r"checkpoint \(160, 672, 1, 1\) vs model \(80, 672, 1, 1\)"):
        init_backbone(model, "ssdlite320_mobilenetv3_large_100", str(mnv3_path))


def test_norm_eval_freezes_backbone_bn_only():
    model = create_model("ssdlite_emo_1m", num_classes=3).train()
    freeze_backbone_bn_stats(model)
    bns = [(n, m.training) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert any(n.startswith("backbone.body.") for n, _ in bns) and any(n.startswith("backbone.extra.") for n, _ in bns)
    assert all(not t for n, t in bns if n.startswith("backbone.body."))
    assert all(t for n, t in bns if not n.startswith("backbone.body."))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from edgevision.training.scenes import write_scenes

    rng = np.random.default_rng(0)
    return write_scenes(tmp_path_factory.mktemp("scenes") / "d", 4, 2, size=64,
                        backgrounds=[rng.integers(0, 255, (80, 80, 3), np.uint8)])


def test_cli_train_segmenter_from_backbone_checkpoint(ckpts, scenes, tmp_path, capsys):
    path, sd = ckpts["mobilenetv3_large_100"]
    out = tmp_path / "run"
    assert main(["train", "lraspp_mobilenetv3_large_100", "--data", str(scenes), "--checkpoint", str(path),
                 "--epochs", "1", "--img-size", "64", "--batch-size", "2", "--max-steps-per-epoch", "1",
                 "--workers", "0", "--threads", "1", "--lr", "1e-9", "--warmup-epochs", "0", "--no-progress",
                 "--no-resume", "--output", str(out)]) == 0
    log = capsys.readouterr().out
    assert f"backbone: mobilenetv3_large_100 initialised from {path}" in log
    meta = read_metadata(out / "model.safetensors")
    assert meta["backbone"] == "mobilenetv3_large_100" and meta["backbone_checkpoint"] == str(path)
    # lr 1e-9: the trained weights keep the checkpoint's backbone (BN statistics aside, they update in train mode)
    from safetensors.torch import load_file

    w = load_file(out / "model.safetensors")
    assert torch.allclose(w["backbone.blocks.3.0.conv_pw.weight"], sd["blocks.3.0.conv_pw.weight"], atol=1e-6)
    assert json.loads((out / "summary.json").read_text())["task"] == "segmentation"


def test_freeze_backbone_still_refused_for_dense_tasks(scenes, tmp_path):
    from edgevision.training import train

    with pytest.raises(ValueError, match="--freeze-backbone is for classifiers"):
        train(dict(model="lraspp_mobilenetv3_small_075", data=str(scenes), output=str(tmp_path / "r"),
                   img_size=64, checkpoint="x.safetensors", freeze_backbone=True, workers=0, progress=False))
