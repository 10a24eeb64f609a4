"""Detection task: COCO reading with bad annotations, collate/flip, COCO mAP on hand cases,
a 2-step train + resume, eval and predict end to end on tiny generated scenes."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from edgevision.cli import main
from edgevision.tasks.detection import data as D
from edgevision.tasks.detection.metrics import coco_map

MODEL = "ssdlite_mobilenetv3_small_075"


def _img(path, w=40, h=30):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (90, 20, 200)).save(path)


def _coco(tmp_path, anns, images=None, cats=None):
    d = tmp_path / "train"
    images = images or [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                        {"id": 2, "file_name": "b.png", "width": 40, "height": 30}]
    for im in images:
        if im["file_name"] != "missing.png":
            _img(d / "images" / im["file_name"])
    cats = cats or [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    (d / "annotations.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return d


def _ann(i, img, cat, bbox, **kw):
    return {"id": i, "image_id": img, "category_id": cat, "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0, **kw}


def test_bad_annotations_are_skipped_and_counted(tmp_path):
    anns = [_ann(1, 1, 3, [5, 5, 10, 10]),           # good: label 1 (category 3)
            _ann(2, 1, 7, [30, 20, 20, 20]),         # outside on the right/bottom: clipped to 40x30
            _ann(3, 1, 3, [5, 5, 0, 10]),            # zero width
            _ann(4, 1, 99, [1, 1, 5, 5]),            # unknown category
            _ann(5, 1, 3, [1, 1, 5, 5], iscrowd=1),  # crowd region
            _ann(6, 2, 3, [50, 50, 5, 5])]           # entirely outside: zero area after clipping
    images = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
              {"id": 2, "file_name": "b.png", "width": 40, "height": 30},
              {"id": 3, "file_name": "missing.png", "width": 40, "height": 30}]
    d = _coco(tmp_path, anns, images)
    recs, ids, classes, rep = D.read_split(d / "annotations.json", d / "images", "train")
    assert ids == [3, 7] and classes == ["cat", "dog"]
    assert len(recs) == 1  # image 2 has no valid box left (training drops it), image 3 has no file
    r = recs[0]
    assert r["labels"].tolist() == [1, 2]
    np.testing.assert_allclose(r["boxes"], [[5, 5, 15, 15], [30, 20, 40, 30]])
    assert (rep.boxes_clipped, rep.boxes_zero_area, rep.boxes_unknown_category, rep.boxes_crowd) == (2, 2, 1, 1)
    assert (rep.images_without_boxes, rep.missing_image_files, rep.images, rep.boxes) == (1, 1, 1, 2)
    # validation keeps images without boxes: they count against false positives in COCOeval
    recs_val, *_ = D.read_split(d / "annotations.json", d / "images", "val", keep_empty=True)
    assert [len(x["labels"]) for x in recs_val] == [2, 0]


@pytest.mark.parametrize("text", ["", "{not json", json.dumps({"images": [], "annotations": []})])
def test_empty_or_malformed_annotation_file_is_one_clear_line(tmp_path, text):
    d = tmp_path / "train"
    (d / "images").mkdir(parents=True)
    (d / "annotations.json").write_text(text)
    with pytest.raises(ValueError, match="annotations.json"):
        D.read_split(d / "annotations.json", d / "images", "train")


def test_dataset_collate_and_flip(tmp_path):
    d = _coco(tmp_path, [_ann(1, 1, 3, [5, 5, 10, 10]), _ann(2, 2, 7, [0, 0, 4, 30])])
    recs, *_ = D.read_split(d / "annotations.json", d / "images", "train")
    plain, flipped = D.DetectionDataset(recs), D.DetectionDataset(recs, hflip=1.0)
    img, t = plain[0]
    assert img.shape == (3, 30, 40) and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
    assert t["boxes"].tolist() == [[5, 5, 15, 15]] and t["labels"].tolist() == [1]
    img_f, t_f = flipped[0]
    assert t_f["boxes"].tolist() == [[25, 5, 35, 15]]  # x -> 40 - x
    assert torch.equal(img_f, img.flip(-1))
    images, targets = D.collate([plain[0], plain[1]])
    assert isinstance(images, list) and len(images) == 2 and targets[1]["labels"].tolist() == [2]


def _gt(boxes, cats=(1, 2)):
    return {"images": [{"id": 1, "width": 100, "height": 100}],
            "annotations": [{"id": i + 1, "image_id": 1, "category_id": c, "bbox": b, "area": b[2] * b[3],
                             "iscrowd": 0} for i, (c, b) in enumerate(boxes)],
            "categories": [{"id": c, "name": f"c{c}"} for c in cats]}


def test_coco_map_on_hand_cases():
    gt = _gt([(1, [0, 0, 10, 10])])
    perfect = coco_map(gt, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9}])
    assert perfect["map"] == pytest.approx(1.0) and perfect["map50"] == pytest.approx(1.0)
    assert perfect["per_class_ap"] == {"c1": pytest.approx(1.0), "c2": None}  # c2: no ground truth
    # IoU 0.62: a match at IoU thresholds .50, .55, .60 only -> AP@[.5:.95] = 3/10, AP@.5 = 1
    partial = coco_map(gt, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 6.2], "score": 0.9}])
    assert partial["map"] == pytest.approx(0.3) and partial["map50"] == pytest.approx(1.0)
    # a confident wrong-class box and a miss: AP 0
    wrong = coco_map(gt, [{"image_id": 1, "category_id": 2, "bbox": [0, 0, 10, 10], "score": 0.9}])
    assert wrong["map"] == 0.0 and wrong["per_class_ap"]["c1"] == 0.0
    assert coco_map(gt, [])["map"] == 0.0


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Tiny generated scenes through the CLI (4 train, 2 val, 64 px)."""
    out = tmp_path_factory.mktemp("det") / "scenes"
    assert main(["sample-data", "--task", "detection", str(out), "--num-train", "4", "--num-val", "2",
                 "--size", "64"]) == 0
    return out


def test_sample_scenes_are_deterministic_coco(scenes, tmp_path):
    ann = json.loads((scenes / "train" / "annotations.json").read_text())
    assert len(ann["images"]) == 4 and len(ann["categories"]) == 10 and ann["annotations"]
    for a in ann["annotations"]:
        x, y, w, h = a["bbox"]
        assert w > 0 and h > 0 and x + w <= 64 and y + h <= 64 and a["area"] <= w * h
    again = tmp_path / "again"
    assert main(["sample-data", "--task", "detection", str(again), "--num-train", "4", "--num-val", "2",
                 "--size", "64"]) == 0
    assert (again / "train" / "annotations.json").read_text() == (scenes / "train" / "annotations.json").read_text()
    assert (again / "val" / "images" / "00001.jpg").read_bytes() == (scenes / "val" / "images" / "00001.jpg").read_bytes()


def test_train_resume_eval_predict_end_to_end(scenes, tmp_path, capsys):
    from edgevision.training import train

    out = tmp_path / "run"
    cfg = dict(model=MODEL, data=str(scenes), output=str(out), img_size=64, batch_size=2, epochs=1,
               max_steps_per_epoch=2, workers=0, threads=1, progress=False, warmup_epochs=0)
    s1 = train(cfg)
    assert s1["task"] == "detection" and s1["num_classes"] == 10 and len(json.loads((out / "log.json").read_text())) == 1
    s2 = train(dict(cfg, epochs=2))  # resumes from last.pth: one more epoch
    hist = json.loads((out / "log.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2] and "val_map50" in hist[0] and np.isfinite(hist[1]["train_loss"])
    assert "resume:" in capsys.readouterr().out and s2["final_val_map"] is not None
    for f in ("curves.png", "model.safetensors", "summary.json", "last.pth"):
        assert (out / f).is_file(), f
    assert main(["eval", MODEL, "--data", str(scenes), "--checkpoint", str(out / "model.safetensors"),
                 "--workers", "0"]) == 0
    text = capsys.readouterr().out
    assert "mAP@[.5:.95]" in text and "t-shirt_top" in text
    res = json.loads((out / "eval" / "eval.json").read_text())
    assert set(res["per_class_ap"]) == set(s1["classes"]) and (out / "eval" / "per_class_ap.json").is_file()
    pic = tmp_path / "pred.png"
    assert main(["predict", MODEL, str(scenes / "val" / "images" / "00000.jpg"), "--checkpoint",
                 str(out / "model.safetensors"), "--output", str(pic), "--threshold", "0.0"]) == 0
    assert Image.open(pic).size == (64, 64)



def test_predict_optimizes_dense_models_by_default(tmp_path, capsys, monkeypatch):
    """`predict` runs edgevision.optimize on a detector too (checked on its raw outputs, which
    test_optimize compares); --eager runs the plain model. The best detections agree; lower down,
    NMS keeps either of two boxes with tied scores, so whole lists are not compared."""
    import torch

    import edgevision as ev
    import edgevision.export.optimize as opt_mod

    monkeypatch.setenv("EDGEVISION_KEEP_HEAP", "0")  # keep this test process's allocator as it is
    calls = []
    real = opt_mod.optimize
    monkeypatch.setattr(opt_mod, "optimize", lambda *a, **k: calls.append(k) or real(*a, **k))
    torch.manual_seed(0)
    det = ev.create_model("ssdlite_mobilenetv3_small_075").eval()
    with torch.no_grad():
        for conv in det.head.classification_head.module_list:
            conv[1].bias.normal_(0, 2.0)
    ckpt = tmp_path / "det.pth"
    torch.save(det.state_dict(), ckpt)
    img = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(0).random((96, 96, 3)) * 255).astype(np.uint8)).save(img)
    res = {}
    for flag in ([], ["--eager"]):
        assert main(["predict", "ssdlite_mobilenetv3_small_075", str(img), "--checkpoint", str(ckpt), "--json",
                     "--threshold", "0.5", "--output", str(tmp_path / "p.png"), *flag]) == 0
        res[bool(flag)] = json.loads(capsys.readouterr().out)["detection"]
    assert len(calls) == 1 and calls[0]["keep_heap"] is False and len(res[True]) > 3
    top = {k: sorted(((r["score"], r["label"]) for r in v), reverse=True)[:3] for k, v in res.items()}
    assert [lab for _, lab in top[False]] == [lab for _, lab in top[True]]
    assert np.allclose([sc for sc, _ in top[False]], [sc for sc, _ in top[True]], atol=1e-4)
