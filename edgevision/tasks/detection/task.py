"""The detection task for the training engine: COCO data, torchvision's detection losses,
COCO mAP through pycocotools, per-class AP plots/JSON (see :mod:`edgevision.tasks.base`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgevision.io import atomic_write_text
from edgevision.jsonout import to_json
from edgevision.tasks.base import DenseTask, EvalRun, load_trained
from edgevision.tasks.detection import data as D
from edgevision.tasks.detection.metrics import coco_map, to_coco_results


def split_records(records: list, fraction: float, seed: int):
    """Deterministic hold-out of ``fraction`` of the images (no val split in the folder)."""
    idx = np.random.default_rng(seed).permutation(len(records))
    n_val = max(1, int(round(fraction * len(records))))
    val = set(idx[:n_val].tolist())
    return [r for i, r in enumerate(records) if i not in val], [r for i, r in enumerate(records) if i in val]


class DetectionTask(DenseTask):
    name = "detection"
    score_key = "val_map"
    bar_stats = ()

    def prepare(self, run) -> None:
        cfg = run.cfg
        if not cfg.data:
            raise ValueError("--data DIR is required for detection: COCO instances JSON + images "
                             "(DIR/train/annotations.json + DIR/train/images/, same for val/); "
                             "`edgevision sample-data --task detection DIR` writes a sample")
        tr = D.find_coco_split(cfg.data, "train")
        if tr is None:
            raise ValueError(f"{cfg.data}: no COCO training split found (DIR/train/annotations.json + "
                             "DIR/train/images/, or DIR/annotations/instances_train*.json + DIR/train*/)")
        train_recs, cat_ids, classes, rep_tr = D.read_split(*tr, "train")
        reports = [rep_tr]
        va = D.find_coco_split(cfg.data, "val")
        if va is not None:
            val_recs, _, _, rep_va = D.read_split(*va, "val", cat_ids, keep_empty=True)
            reports.append(rep_va)
        else:
            train_recs, val_recs = split_records(train_recs, cfg.val_fraction, cfg.seed)
            run.log(f"data: no val split; held out {len(val_recs)} images ({cfg.val_fraction:.0%}, seed {cfg.seed})")
        for rep in reports:
            run.log("data: " + rep.summary())
        if not train_recs:
            raise ValueError(f"{tr[0]}: no training image with a valid box (see the counts above)")
        if not val_recs:
            raise ValueError(f"{cfg.data}: no validation images")
        run.classes, run.num_classes, run.data_dir = classes, len(classes) + 1, str(cfg.data)
        run.data_report = [r.as_dict() for r in reports]
        self.category_ids = cat_ids
        self._records = (train_recs, val_recs)
        self.gt = D.gt_coco_dict(val_recs, cat_ids, classes)

    def build_datasets(self, run, model):
        train_recs, val_recs = self._records
        return (D.DetectionDataset(train_recs, hflip=run.cfg.hflip, seed=run.cfg.seed),
                D.DetectionDataset(val_recs))

    def collate_fn(self, train: bool):
        return D.collate

    def to_device(self, run, batch, train: bool):
        images, targets = batch
        images = [im.to(run.device, non_blocking=True) for im in images]
        targets = [{"boxes": t["boxes"].to(run.device), "labels": t["labels"].to(run.device),
                    "image_id": t["image_id"]} for t in targets]
        return images, targets

    def loss(self, run, model, inputs, targets):
        losses = model(inputs, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
        loss = sum(losses.values())
        n = torch.tensor(float(len(inputs)), device=run.device)
        stats = {"n": n}
        stats.update({f"{k.replace('bbox_', 'box_')}_loss": v.detach().double() * n for k, v in losses.items()})
        return loss, stats

    @torch.inference_mode()
    def evaluate(self, run, model, loader) -> dict:
        from edgevision.training.runtime import autocast

        model.eval()
        results, count = [], 0
        for images, targets in loader:
            images = [im.to(run.device) for im in images]
            with autocast(run.device, run.amp_dtype):
                outs = model(images)
            for out, t in zip(outs, targets):
                results += to_coco_results(t["image_id"], out["boxes"].float().cpu().numpy(),
                                           out["scores"].float().cpu().numpy(), out["labels"].cpu().numpy(),
                                           self.category_ids)
            count += len(images)
        if run.dist.enabled:
            import torch.distributed as dist

            gathered = [None] * run.dist.world_size
            dist.all_gather_object(gathered, (results, count))
            results = [r for part, _ in gathered for r in part]
            count = sum(c for _, c in gathered)
        m = coco_map(self.gt, results)
        m.update(score=m["map"], count=count, detections=len(results))
        return m

    def val_row(self, metrics):
        return {"val_map": metrics["map"], "val_map50": metrics["map50"]}

    def summary(self, metrics) -> str:
        return f"val mAP {metrics['map']:.4f} mAP@.5 {metrics['map50']:.4f}"

    def report(self, run, metrics, out_dir):
        from edgevision.tasks.detection.draw import plot_per_class

        out_dir = Path(out_dir)
        png = plot_per_class(metrics["per_class_ap"], out_dir / "per_class_ap.png",
                             f"AP@[.5:.95] per class (mAP {metrics['map']:.3f})", "AP")
        atomic_write_text(out_dir / "per_class_ap.json",
                          to_json({"ap": metrics["per_class_ap"], "ap50": metrics["per_class_ap50"]}, indent=1))
        return {"per_class_png": str(png), "per_class_json": str(out_dir / "per_class_ap.json")}

    def weights_meta(self, run) -> dict:
        return {"task": self.name, "num_classes": run.num_classes, "classes": list(run.classes),
                "category_ids": list(self.category_ids), "img_size": run.cfg.img_size, **self.backbone_meta()}

    def summary_fields(self, run, last, best) -> dict:
        return {"final_val_map": last.get("val_map"), "final_val_map50": last.get("val_map50"),
                "best_val_map": best.get("val_map")}

    # ---- edgevision eval
    def evaluate_checkpoint(self, model_name, data, checkpoint, output=None, img_size=None, batch_size=8,
                            workers=2, device="auto") -> dict:
        from edgevision.training.distributed import pick_device

        model, meta, out = load_trained(model_name, checkpoint, output)
        if img_size:
            model.img_size = img_size
        split = D.find_coco_split(data, "val") or D.find_coco_split(data, "train")
        if split is None:
            raise ValueError(f"{data}: no COCO split (DIR/val/annotations.json + DIR/val/images/, ...)")
        ids = meta.get("category_ids")
        recs, ids, classes, rep = D.read_split(*split, "val", ids, keep_empty=True)
        if meta.get("classes") and len(meta["classes"]) != len(classes):
            raise ValueError(f"{checkpoint} was trained on {len(meta['classes'])} classes; {split[0]} has "
                             f"{len(classes)}")
        classes = meta.get("classes") or classes
        self.category_ids, self.gt = ids, D.gt_coco_dict(recs, ids, classes)
        dev = pick_device(device)
        model.to(dev)
        loader = torch.utils.data.DataLoader(D.DetectionDataset(recs), batch_size=batch_size,
                                             num_workers=workers, collate_fn=D.collate)
        run = EvalRun(device=dev, classes=classes, num_classes=len(classes) + 1, out=out)
        m = self.evaluate(run, model, loader)
        out.mkdir(parents=True, exist_ok=True)
        files = self.report(run, m, out)
        result = {"model": model_name, "task": self.name, "checkpoint": str(checkpoint), "data": str(split[1]),
                  "num_images": m["count"], "map": m["map"], "map50": m["map50"], "map75": m["map75"],
                  "per_class_ap": m["per_class_ap"], "per_class_ap50": m["per_class_ap50"],
                  "classes": classes, "data_report": rep.as_dict(), **files}
        atomic_write_text(out / "eval.json", to_json(result, indent=1))
        result["json"] = str(out / "eval.json")
        result["summary"] = (f"{model_name} on {split[1]}: {m['count']} images, mAP@[.5:.95] {m['map']:.4f}, "
                             f"mAP@.5 {m['map50']:.4f}")
        result["per_class"] = {c: "  n/a (no boxes)" if v is None else f"AP {v:.4f}"
                               for c, v in m["per_class_ap"].items()}
        return result
