"""Segmentation task: image/mask folders with bad pairs, metrics on hand cases, the loss with aux,
a 2-step train + resume, eval and predict end to end on tiny generated scenes."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from edgevision.cli import main
from edgevision.tasks.segmentation import data as D
from edgevision.tasks.segmentation.metrics import confusion, scores
from edgevision.tasks.segmentation.losses import seg_loss, soft_dice_loss

MODEL = "lraspp_mobilenetv3_small_075"


def _pair(root, split, name, size=(20, 16), mask_size=None, value=1):
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    (root / split / "masks").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 200, 30)).save(root / split / "images" / f"{name}.jpg")
    if mask_size is not False:
        m = np.zeros((mask_size or size)[::-1], np.uint8)
        m[2:6, 3:9] = value
        m[0, 0] = 255  # ignore
        Image.fromarray(m).save(root / split / "masks" / f"{name}.png")


def test_bad_pairs_are_skipped_and_counted(tmp_path):
    (tmp_path / "classes.txt").write_text("background\nleaf\nstone\n")
    _pair(tmp_path, "train", "good")
    _pair(tmp_path, "train", "other_size", mask_size=(10, 10))
    _pair(tmp_path, "train", "label_9", value=9)
    _pair(tmp_path, "train", "no_mask", mask_size=False)
    classes = D.read_classes(tmp_path)
    pairs, where = D.find_pairs(tmp_path, "train")
    good, rep, top = D.check_pairs(pairs, "train", len(classes))
    assert classes == ["background", "leaf", "stone"] and [p[0].endswith("good.jpg") for p in good] == [True]
    assert (rep.size_mismatch, rep.labels_out_of_range, rep.missing_mask, rep.pairs) == (1, 1, 1, 1)
    assert D.find_pairs(tmp_path, "val") is None


def test_voc_layout_and_dataset_transforms(tmp_path):
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "SegmentationClass").mkdir()
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    Image.new("RGB", (30, 20), (1, 2, 3)).save(tmp_path / "JPEGImages" / "x.jpg")
    m = np.zeros((20, 30), np.uint8)
    m[:, 15:] = 15
    m[0] = 255
    Image.fromarray(m).save(tmp_path / "SegmentationClass" / "x.png")
    (tmp_path / "ImageSets" / "Segmentation" / "train.txt").write_text("x\n")
    pairs, _ = D.find_pairs(tmp_path, "train")
    good, rep, _ = D.check_pairs(pairs, "train", len(D.read_classes(tmp_path)))
    assert len(good) == 1 and D.read_classes(tmp_path)[15] == "person"
    ds = D.SegmentationDataset(good, 24, (0.5,) * 3, (0.5,) * 3, train=True, seed=1)
    x, y = ds[0]
    assert x.shape == (3, 24, 24) and y.shape == (24, 24) and y.dtype == torch.int64
    assert set(y.unique().tolist()) <= {0, 15, 255}
    ds.set_epoch(0)
    assert torch.equal(ds[0][1], y)  # seeded by (seed, epoch, index)
    xv, yv = D.SegmentationDataset(good, 24, (0.5,) * 3, (0.5,) * 3, train=False)[0]
    assert yv[0].eq(255).all() and yv[5, -1] == 15 and yv[5, 0] == 0


def test_metrics_on_a_hand_case():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 1]])
    cm = confusion(pred, target, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 3, 0], [1, 0, 1]]
    s = scores(cm.numpy(), ["bg", "a", "b"])
    # IoU: bg 1/(2+2-1)=1/3, a 3/(4+3-3)=3/4, b 1/(1+2-1)=1/2 ; pixel acc 5/7 (ignore excluded)
    assert s["per_class_iou"] == {"bg": pytest.approx(1 / 3), "a": pytest.approx(0.75), "b": pytest.approx(0.5)}
    assert s["miou"] == pytest.approx((1 / 3 + 0.75 + 0.5) / 3) and s["pixel_acc"] == pytest.approx(5 / 7)
    assert scores(np.zeros((2, 2)), ["x", "y"])["per_class_iou"] == {"x": None, "y": None}


def test_loss_ignores_255_and_adds_half_aux():
    torch.manual_seed(0)
    out, aux = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    y = torch.randint(0, 3, (2, 4, 4))
    y[0, 0] = 255
    ref = F.cross_entropy(out, y, ignore_index=255) + 0.5 * F.cross_entropy(aux, y, ignore_index=255)
    assert torch.allclose(seg_loss({"out": out, "aux": aux}, y), ref)
    assert torch.allclose(seg_loss({"out": out}, y), F.cross_entropy(out, y, ignore_index=255))


def test_soft_dice_by_hand_and_ignored_pixels():
    # two pixels, two classes; probabilities (after softmax) set by the logits
    logits = torch.tensor([[[[0.0, 0.0]], [[0.0, 0.0]]]])  # p = 0.5 everywhere
    y = torch.tensor([[[0, 1]]])
    # class 0: inter 0.5, |P| 1, |T| 1 -> (1 + 1) / (2 + 1); class 1 the same
    assert soft_dice_loss(logits, y).item() == pytest.approx(1 - 2 / 3)
    assert soft_dice_loss(logits, y, smooth=0.0).item() == pytest.approx(0.5)
    # a perfect, confident prediction scores ~0; an ignored pixel changes nothing
    sure = torch.tensor([[[[20.0, -20.0, 5.0]], [[-20.0, 20.0, -5.0]]]])
    y2 = torch.tensor([[[0, 1, 255]]])
    assert soft_dice_loss(sure, y2, smooth=0.0).item() == pytest.approx(0.0, abs=1e-6)
    # classes absent from the target are not scored (else an empty class would add a constant)
    three = torch.cat([sure, torch.zeros(1, 1, 1, 3)], 1)
    assert soft_dice_loss(three, y2, smooth=0.0).item() == pytest.approx(0.0, abs=1e-5)
    # every pixel ignored: zero, with a gradient path (no NaN)
    z = soft_dice_loss(logits.requires_grad_(), torch.full((1, 1, 2), 255))
    z.backward()
    assert z.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_ce_dice_loss_adds_dice_to_both_heads_and_is_rejected_elsewhere():
    torch.manual_seed(0)
    out, aux = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    y = torch.randint(0, 3, (2, 4, 4))
    ref = (F.cross_entropy(out, y) + soft_dice_loss(out, y)
           + 0.5 * (F.cross_entropy(aux, y) + soft_dice_loss(aux, y)))
    assert torch.allclose(seg_loss({"out": out, "aux": aux}, y, "ce+dice"), ref)
    from edgevision.training import make_config
    from edgevision.training.config import check_config

    with pytest.raises(ValueError, match="--seg-loss must be one of ce, ce\\+dice; got 'dice'"):
        check_config(make_config("lraspp_mobilenetv3_large_100", seg_loss="dice"))
    with pytest.raises(ValueError, match="applies to segmentation models; mobilenetv2_100 is a classification"):
        check_config(make_config("mobilenetv2_100", seg_loss="ce+dice"))
    check_config(make_config("lraspp_mobilenetv3_large_100", seg_loss="ce+dice"))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("seg") / "scenes"
    assert main(["sample-data", "--task", "segmentation", str(out), "--num-train", "4", "--num-val", "2",
                 "--size", "64"]) == 0
    return out


def test_train_resume_eval_predict_end_to_end(scenes, tmp_path, capsys):
    from edgevision.training import train

    out = tmp_path / "run"
    cfg = dict(model=MODEL, data=str(scenes), output=str(out), img_size=64, batch_size=2, epochs=1,
               max_steps_per_epoch=2, workers=0, threads=1, progress=False, warmup_epochs=0)
    s1 = train(cfg)
    assert s1["task"] == "segmentation" and s1["num_classes"] == 11 and s1["classes"][0] == "background"
    train(dict(cfg, epochs=2))
    hist = json.loads((out / "log.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2] and {"val_miou", "val_pixel_acc", "train_pixel_acc"} <= set(hist[0])
    assert "resume:" in capsys.readouterr().out
    assert main(["eval", MODEL, "--data", str(scenes), "--checkpoint", str(out / "last.pth"), "--workers", "0"]) == 0
    text = capsys.readouterr().out
    assert "mIoU" in text and "background" in text
    res = json.loads((out / "eval" / "eval.json").read_text())
    assert len(res["per_class_iou"]) == 11 and 0.0 <= res["miou"] <= 1.0
    pic = tmp_path / "overlay.png"
    assert main(["predict", MODEL, str(scenes / "val" / "images" / "00000.jpg"), "--checkpoint",
                 str(out / "model.safetensors"), "--output", str(pic)]) == 0
    assert Image.open(pic).size == (64, 64)


def test_output_stride_and_dice_train_and_come_back_with_the_weights(scenes, tmp_path, capsys):
    """--output-stride 32 --seg-loss ce+dice from the CLI: the stride is stored with the weights and
    eval/predict rebuild the model at it (a stride-16 rebuild would compute something else)."""
    from edgevision.tasks.base import load_trained

    out = tmp_path / "run"
    assert main(["train", MODEL, "--data", str(scenes), "--output", str(out), "--img-size", "64", "--batch-size", "2",
                 "--epochs", "1", "--max-steps-per-epoch", "1", "--workers", "0", "--threads", "1", "--no-progress",
                 "--output-stride", "32", "--seg-loss", "ce+dice"]) == 0
    for name in ("model.safetensors", "last.pth"):
        model, meta, _ = load_trained(MODEL, str(out / name))
        assert meta["output_stride"] == 32 and model.output_stride == 32
    assert main(["eval", MODEL, "--data", str(scenes), "--checkpoint", str(out / "model.safetensors"),
                 "--workers", "0"]) == 0
    assert "mIoU" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", MODEL, "--data", str(scenes), "--output-stride", "4"])
    assert "invalid choice: 4" in capsys.readouterr().err
    from edgevision.training import make_config
    from edgevision.training.config import check_config

    with pytest.raises(ValueError, match="--output-stride applies to segmentation models; ssdlite_mobilenetv2_100"):
        check_config(make_config("ssdlite_mobilenetv2_100", output_stride=16))
