"""The segmentation task for the training engine: image/mask folders, CE (ignore 255; optionally
+ soft Dice, ``--seg-loss``) on "out" + 0.5 x "aux", mIoU and pixel accuracy, per-class IoU plots/JSON (see edgevision.tasks.base)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from edgevision.io import atomic_write_text
from edgevision.jsonout import to_json
from edgevision.tasks.base import DenseTask, EvalRun, load_trained
from edgevision.tasks.segmentation import data as D
from edgevision.tasks.segmentation.losses import seg_loss
from edgevision.tasks.segmentation.metrics import confusion, scores


def _logits(out) -> torch.Tensor:
    return out["out"] if isinstance(out, dict) else out


class SegmentationTask(DenseTask):
    name = "segmentation"
    score_key = "val_miou"
    bar_stats = ("pixel_acc",)

    def prepare(self, run) -> None:
        cfg = run.cfg
        if not cfg.data:
            raise ValueError("--data DIR is required for segmentation: image + PNG mask folders "
                             "(DIR/train/images + DIR/train/masks, same for val/; or VOC/ADE20K layouts); "
                             "`edgevision sample-data --task segmentation DIR` writes a sample")
        classes = D.read_classes(cfg.data)
        tr = D.find_pairs(cfg.data, "train")
        if tr is None:
            raise ValueError(f"{cfg.data}: no training images found (DIR/train/images + DIR/train/masks, "
                             "DIR/images/training + DIR/annotations/training, or VOC's ImageSets/Segmentation)")
        train_pairs, rep_tr, top = D.check_pairs(tr[0], "train", len(classes) if classes else None)
        if classes is None:
            classes = [f"class_{i}" for i in range(max(top + 1, 2))]
        va = D.find_pairs(cfg.data, "val")
        reports = [rep_tr]
        if va is not None:
            val_pairs, rep_va, _ = D.check_pairs(va[0], "val", len(classes))
            reports.append(rep_va)
        else:
            n_val = max(1, round(cfg.val_fraction * len(train_pairs)))
            g = torch.Generator().manual_seed(cfg.seed)
            perm = torch.randperm(len(train_pairs), generator=g).tolist()
            val_pairs = [train_pairs[i] for i in sorted(perm[:n_val])]
            train_pairs = [train_pairs[i] for i in sorted(perm[n_val:])]
            run.log(f"data: no val split; held out {len(val_pairs)} images ({cfg.val_fraction:.0%}, seed {cfg.seed})")
        for rep in reports:
            run.log("data: " + rep.summary())
        if not train_pairs:
            raise ValueError(f"{tr[1]}: no usable image/mask pair (see the counts above)")
        if not val_pairs:
            raise ValueError(f"{cfg.data}: no validation image/mask pairs")
        run.classes, run.num_classes, run.data_dir = classes, len(classes), str(cfg.data)
        run.data_report = [r.as_dict() for r in reports]
        self._pairs = (train_pairs, val_pairs)

    def build_datasets(self, run, model):
        from edgevision.training.runtime import model_norm

        cfg = run.cfg
        mean, std = model_norm(model)
        self.norm = (list(mean), list(std))
        tr, va = self._pairs
        return (D.SegmentationDataset(tr, cfg.img_size, mean, std, True, cfg.hflip, seed=cfg.seed),
                D.SegmentationDataset(va, cfg.img_size, mean, std, False))

    def loss(self, run, model, inputs, targets):
        out = model(inputs)
        loss = seg_loss(out, targets, run.cfg.seg_loss)
        with torch.no_grad():
            pred = _logits(out).argmax(1)
            valid = targets != D.IGNORE
            acc = ((pred == targets) & valid).sum().double() / valid.sum().clamp(min=1).double()
        n = torch.tensor(float(inputs.shape[0]), device=inputs.device)
        return loss, {"n": n, "pixel_acc": acc * n}

    @torch.inference_mode()
    def evaluate(self, run, model, loader) -> dict:
        from edgevision.training.distributed import all_reduce_sum
        from edgevision.training.runtime import autocast

        model.eval()
        k = run.num_classes
        cm = torch.zeros(k, k, dtype=torch.int64, device=run.device)
        loss_sum, count = 0.0, 0
        for x, y in loader:
            x, y = x.to(run.device), y.to(run.device)
            if run.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(run.device, run.amp_dtype):
                out = model(x)
            logits = _logits(out).float()
            if logits.shape[-2:] != y.shape[-2:]:
                logits = F.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=False)
            if (y != D.IGNORE).any():
                loss_sum += F.cross_entropy(logits, y, ignore_index=D.IGNORE).item() * len(x)
            cm += confusion(logits.argmax(1), y, k)
            count += len(x)
        if run.dist.enabled:
            import torch.distributed as dist

            dist.all_reduce(cm)
            loss_sum, count = all_reduce_sum([loss_sum, count], run.device, run.dist)
        m = scores(cm.cpu().numpy(), run.classes)
        m.update(score=m["miou"], count=int(count), loss=loss_sum / max(count, 1), confusion=cm.cpu().numpy())
        return m

    def val_row(self, metrics):
        return {"val_loss": metrics["loss"], "val_miou": metrics["miou"], "val_pixel_acc": metrics["pixel_acc"]}

    def summary(self, metrics) -> str:
        return f"val loss {metrics['loss']:.4f} mIoU {metrics['miou']:.4f} pixel acc {metrics['pixel_acc']:.4f}"

    def report(self, run, metrics, out_dir):
        from edgevision.tasks.detection.draw import plot_per_class

        out_dir = Path(out_dir)
        png = plot_per_class(metrics["per_class_iou"], out_dir / "per_class_iou.png",
                             f"IoU per class (mIoU {metrics['miou']:.3f})", "IoU")
        atomic_write_text(out_dir / "per_class_iou.json", to_json(metrics["per_class_iou"], indent=1))
        return {"per_class_png": str(png), "per_class_json": str(out_dir / "per_class_iou.json")}

    def build_kwargs(self, cfg) -> dict:
        return {"output_stride": cfg.output_stride} if cfg.output_stride else {}

    def weights_meta(self, run) -> dict:
        return {"task": self.name, "num_classes": run.num_classes, "classes": list(run.classes),
                "img_size": run.cfg.img_size, "mean": self.norm[0], "std": self.norm[1],
                **self.build_kwargs(run.cfg), **self.backbone_meta()}

    def summary_fields(self, run, last, best) -> dict:
        return {"final_val_miou": last.get("val_miou"), "final_val_pixel_acc": last.get("val_pixel_acc"),
                "best_val_miou": best.get("val_miou")}

    # ---- edgevision eval
    def evaluate_checkpoint(self, model_name, data, checkpoint, output=None, img_size=None, batch_size=8,
                            workers=2, device="auto") -> dict:
        from edgevision.training.distributed import pick_device
        from edgevision.training.runtime import model_norm

        model, meta, out = load_trained(model_name, checkpoint, output)
        classes = meta.get("classes") or D.read_classes(data)
        split = D.find_pairs(data, "val") or D.find_pairs(data, "train")
        if split is None:
            raise ValueError(f"{data}: no image/mask pairs (DIR/val/images + DIR/val/masks, ...)")
        pairs, rep, _ = D.check_pairs(split[0], "val", len(classes))
        if not pairs:
            raise ValueError(f"{split[1]}: no usable image/mask pair ({rep.summary()})")
        size = img_size or int(meta.get("img_size") or 512)
        mean, std = (meta["mean"], meta["std"]) if "mean" in meta else model_norm(model)
        dev = pick_device(device)
        model.to(dev)
        loader = torch.utils.data.DataLoader(D.SegmentationDataset(pairs, size, mean, std, False),
                                             batch_size=batch_size, num_workers=workers)
        run = EvalRun(device=dev, classes=classes, num_classes=len(classes), out=out)
        m = self.evaluate(run, model, loader)
        out.mkdir(parents=True, exist_ok=True)
        files = self.report(run, m, out)
        result = {"model": model_name, "task": self.name, "checkpoint": str(checkpoint), "data": str(split[1]),
                  "num_images": m["count"], "miou": m["miou"], "pixel_acc": m["pixel_acc"], "loss": m["loss"],
                  "per_class_iou": m["per_class_iou"], "confusion_matrix": m["confusion"].tolist(),
                  "classes": classes, "img_size": size, "data_report": rep.as_dict(), **files}
        atomic_write_text(out / "eval.json", to_json(result, indent=1))
        result["json"] = str(out / "eval.json")
        result["summary"] = (f"{model_name} on {split[1]}: {m['count']} images at {size} px, mIoU {m['miou']:.4f}, "
                             f"pixel accuracy {m['pixel_acc']:.4f}")
        result["per_class"] = {c: "  n/a (absent)" if v is None else f"IoU {v:.4f}"
                               for c, v in m["per_class_iou"].items()}
        return result
