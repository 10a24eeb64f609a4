"""COCO box mAP through pycocotools' COCOeval: mAP@[.5:.95], mAP@.5 and per-class AP."""

from __future__ import annotations

import contextlib
import io

import numpy as np


def coco_map(gt: dict, detections: list[dict]) -> dict:
    """``gt``: COCO dict (images, annotations, categories); ``detections``: COCO results
    [{image_id, category_id, bbox [x,y,w,h], score}]. Returns map, map50, map75, per_class_ap
    {name: AP@[.5:.95] or None when the class has no ground truth}, per_class_ap50."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = {c["id"]: c["name"] for c in gt["categories"]}
    empty = {"map": 0.0, "map50": 0.0, "map75": 0.0,
             "per_class_ap": {n: None for n in names.values()}, "per_class_ap50": {n: None for n in names.values()}}
    if not gt["annotations"]:
        return empty
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its table and timings
        coco = COCO()
        coco.dataset = {**gt, "annotations": [dict(a) for a in gt["annotations"]]}
        coco.createIndex()
        present = {a["category_id"] for a in gt["annotations"]}
        if not detections:
            out = dict(empty)
            out["per_class_ap"] = {n: (0.0 if c in present else None) for c, n in names.items()}
            out["per_class_ap50"] = dict(out["per_class_ap"])
            return out
        dt = coco.loadRes([dict(d) for d in detections])
        ev = COCOeval(coco, dt, "bbox")
        ev.params.imgIds = sorted(img["id"] for img in gt["images"])
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    prec = ev.eval["precision"]  # [T iou thresholds, R recall points, K classes, A areas, M max dets]
    per, per50 = {}, {}
    for k, cid in enumerate(ev.params.catIds):
        p = prec[:, :, k, 0, -1]
        per[names[cid]] = float(p[p > -1].mean()) if (p > -1).any() else None
        p50 = prec[0, :, k, 0, -1]
        per50[names[cid]] = float(p50[p50 > -1].mean()) if (p50 > -1).any() else None
    s = [max(float(v), 0.0) for v in ev.stats[:3]]  # -1: no ground truth at all
    return {"map": s[0], "map50": s[1], "map75": s[2], "per_class_ap": per, "per_class_ap50": per50}


def to_coco_results(image_id: int, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                    category_ids: list[int]) -> list[dict]:
    """One image's detections (xyxy, labels 1..K) as COCO result dicts (xywh, category ids)."""
    out = []
    for (x1, y1, x2, y2), s, lab in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
        if 1 <= lab <= len(category_ids):
            out.append({"image_id": int(image_id), "category_id": int(category_ids[lab - 1]),
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(s)})
    return out
