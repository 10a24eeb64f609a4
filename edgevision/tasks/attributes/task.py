"""The "attributes" task: an image classifier with a second, yes/no output per image derived
from a class -> attribute table (M-MobileNet's species + consumability), trained jointly.

Data: an ImageFolder as for classification (``--data DIR``, or the bundled Fashion-MNIST
sample with ``--recipe demo``), and the attribute CSV (``class,attribute``): the training
config's ``attributes`` path when the engine has that option, else ``DIR/attributes.csv``; for
the Fashion-MNIST sample without a table, "footwear or not" (sandal, sneaker, ankle boot).

Loss: cross-entropy on the class + binary cross-entropy on the attribute output (target: the
table's value at the true class). Metrics: class top-1, the attribute output's accuracy, and the
accuracy of the verdict read from the table at the predicted class (the paper's way).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgevision.tasks.attributes.table import read_attribute_table
from edgevision.tasks.classification import (
    ClassificationTask,
    freeze_backbone,
    load_backbone,
)

FASHION_FOOTWEAR = {"sandal", "sneaker", "ankle_boot"}


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def attribute_loss(species, attr_logit, target, attr_table: torch.Tensor, label_smoothing: float = 0.0):
    """(total, class CE, attribute BCE): the joint objective."""
    ce = F.cross_entropy(species, target, label_smoothing=label_smoothing)
    bce = F.binary_cross_entropy_with_logits(attr_logit.float(), attr_table[target].float())
    return ce + bce, ce, bce


@torch.inference_mode()
def evaluate_attributes(model, loader, device, num_classes: int, attr_table: torch.Tensor, amp_dtype=None,
                        dist_info=None) -> dict:
    """Top-1, confusion matrix, attribute-output accuracy, table-at-prediction accuracy (%)."""
    from edgevision.training.distributed import all_reduce_sum

    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device)
    loss_sum = attr_ok = table_ok = 0.0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            species, attr = model(x, with_attribute=True)
        species, attr = species.float(), attr.float()
        truth = attr_table[y]
        loss_sum += F.cross_entropy(species, y, reduction="sum").item()
        pred = species.argmax(1)
        attr_ok += ((attr > 0).long() == truth).sum().item()
        table_ok += (attr_table[pred] == truth).sum().item()
        cm += torch.bincount(y * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes).double()
    if dist_info is not None and dist_info.enabled:
        import torch.distributed as dist

        dist.all_reduce(cm)
        loss_sum, attr_ok, table_ok = all_reduce_sum([loss_sum, attr_ok, table_ok], device, dist_info)
    cm = cm.cpu().numpy().astype(np.int64)
    n = max(int(cm.sum()), 1)
    top1 = float(np.trace(cm) / n * 100)
    return {"loss": loss_sum / n, "top1": top1, "top5": float("nan"), "score": top1, "count": int(cm.sum()),
            "attr_acc": attr_ok / n * 100, "attr_table_acc": table_ok / n * 100,
            "per_class_acc": (np.diag(cm) / np.maximum(cm.sum(1), 1) * 100).tolist(), "confusion": cm}


def _saved_attributes(checkpoint) -> dict:
    """{class: 0/1} stored with trained weights (safetensors metadata or last.pth's task_meta)."""
    import json

    from edgevision.checkpoints import read_metadata

    path = Path(checkpoint)
    if path.is_dir():
        path = path / "model.safetensors"
    if path.suffix == ".safetensors":
        raw = read_metadata(path).get("attributes")
        attrs = json.loads(raw) if raw else None
    else:
        from edgevision.training import checkpointing as ckpt

        attrs = (ckpt.load_checkpoint(path).get("task_meta") or {}).get("attributes")
    if not attrs:
        raise ValueError(f"{checkpoint}: no attribute table stored with these weights (train them with "
                         "`edgevision train m_mobilenet...`)")
    return attrs


class AttributeTask(ClassificationTask):
    name = "attributes"
    score_key = "val_top1"
    bar_stats = ("acc", "attr_acc")

    def prepare(self, run) -> None:
        super().prepare(run)
        path = getattr(run.cfg, "attributes", None) or Path(run.data_dir) / "attributes.csv"
        if not Path(path).is_file() and getattr(run.cfg, "attributes", None) is None \
                and set(run.classes) >= FASHION_FOOTWEAR:
            from edgevision.tasks.attributes.table import write_attribute_table

            path = write_attribute_table(run.out / "attributes.csv",
                                         {c: int(c in FASHION_FOOTWEAR) for c in run.classes})
            run.log(f"attributes: no table given; Fashion-MNIST 'footwear or not' written to {path}")
        elif not Path(path).is_file():
            raise ValueError(f"the attributes task needs a class,attribute CSV: --attributes FILE or {path}")
        self.attr_values = read_attribute_table(path, run.classes)
        self.attr_path = str(path)
        yes = [c for c, v in zip(run.classes, self.attr_values) if v]
        run.log(f"attributes: {path}: yes for {', '.join(yes)}; no for the other {len(run.classes) - len(yes)}")

    def build_model(self, run) -> nn.Module:
        from edgevision.factory import create_model
        from edgevision.tasks.classification import classifier_keys

        cfg = run.cfg
        model = create_model(cfg.model, num_classes=run.num_classes, drop_path_rate=cfg.drop_path)
        self.head_keys = classifier_keys(cfg.model, model)
        if cfg.head_width_scale != 1.0:
            raise ValueError("--head-width-scale does not apply to M-MobileNet: its top is sized by design")
        if cfg.checkpoint:
            fmt, _ = load_backbone(model, cfg.model, cfg.checkpoint, self.head_keys)
            run.log(f"fine-tune: loaded {cfg.checkpoint} ({fmt} format) into the backbone; new top for "
                    f"{run.num_classes} classes + the attribute output")
        if cfg.freeze_backbone:
            n = freeze_backbone(model, self.head_keys)
            run.log(f"fine-tune: backbone frozen, {n:,} trainable parameters")
        counts = unwrap(model).head_param_counts()
        run.log(f"head: {counts['head_params']:,} parameters, {counts['ratio']:.1%} of the standard head "
                f"{counts['standard_head']} ({counts['standard_head_params']:,})")
        self.attr_table = torch.tensor(self.attr_values, dtype=torch.long)
        return model

    def build_datasets(self, run, model):
        if run.cfg.mixup > 0 or run.cfg.cutmix > 0:
            raise ValueError("the attributes task does not support --mixup/--cutmix (mixed images have no "
                             "single attribute)")
        return super().build_datasets(run, model)

    def to_device(self, run, batch, train: bool):
        x, y = batch
        return x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)

    def loss(self, run, model, x, y):
        table = self.attr_table.to(y.device)
        species, attr = model(x, with_attribute=True)
        loss, ce, bce = attribute_loss(species, attr, y, table, run.cfg.label_smoothing)
        n = torch.tensor(float(len(y)), device=y.device)
        with torch.no_grad():
            stats = {"n": n, "acc": 100.0 * (species.argmax(1) == y).sum().double(),
                     "attr_acc": 100.0 * ((attr > 0).long() == table[y]).sum().double(),
                     "loss_class": ce.detach().double() * n, "loss_attr": bce.detach().double() * n}
        return loss, stats

    def evaluate(self, run, model, loader) -> dict:
        if getattr(self, "_eval_attrs", None) is not None:  # edgevision eval: the saved table
            missing = [c for c in run.classes if c not in self._eval_attrs]
            if missing:
                raise ValueError(f"the checkpoint's attribute table has no entry for class(es) {', '.join(missing)}")
            self.attr_values = [int(self._eval_attrs[c]) for c in run.classes]
            self.attr_table = torch.tensor(self.attr_values, dtype=torch.long)
            self._eval_metrics = evaluate_attributes(model, loader, run.device, run.num_classes,
                                                     self.attr_table.to(run.device), run.amp_dtype, run.dist)
            return self._eval_metrics
        return evaluate_attributes(model, loader, run.device, run.num_classes, self.attr_table.to(run.device),
                                   run.amp_dtype, run.dist)

    def val_row(self, metrics):
        return {"val_loss": metrics["loss"], "val_top1": metrics["top1"], "val_attr_acc": metrics["attr_acc"],
                "val_attr_table_acc": metrics["attr_table_acc"]}

    def summary(self, metrics) -> str:
        return (f"val loss {metrics['loss']:.4f} top-1 {metrics['top1']:.2f}% attribute {metrics['attr_acc']:.2f}% "
                f"(table at prediction {metrics['attr_table_acc']:.2f}%)")

    def epoch_line(self, row) -> str:
        return (f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.1f}% attr {row['train_attr_acc']:.1f}% "
                f"| val top-1 {row['val_top1']:.2f}% attr {row['val_attr_acc']:.2f}% "
                f"(table {row['val_attr_table_acc']:.2f}%)")

    def weights_meta(self, run) -> dict:
        meta = super().weights_meta(run)
        meta.update(attributes=dict(zip(run.classes, self.attr_values)), attributes_file=self.attr_path)
        return meta

    def summary_fields(self, run, last, best) -> dict:
        out = {"final_val_top1": last.get("val_top1"), "final_val_attr_acc": last.get("val_attr_acc"),
               "final_val_attr_table_acc": last.get("val_attr_table_acc"), "best_val_top1": best.get("val_top1"),
               "chance_top1": 100.0 / run.num_classes, "scan": run.data_report,
               "head": unwrap(run.model).head_param_counts()}
        metrics = getattr(run, "last_metrics", None)
        if metrics is not None and run.main:
            run.model_name = run.cfg.model
            out.update(self.report(run, metrics, run.out))
        return out

    def done_line(self, run, summary) -> str:
        return (f"val top-1 {summary['final_val_top1']:.2f}% (chance {summary['chance_top1']:.0f}%), attribute "
                f"{summary['final_val_attr_acc']:.2f}% (table at prediction {summary['final_val_attr_table_acc']:.2f}%)")

    # ---- edgevision eval: the classifier's evaluation, with the table the weights were trained with
    def evaluate_checkpoint(self, model_name, data, checkpoint, output=None, **options) -> dict:
        from edgevision.io import atomic_write_text
        from edgevision.jsonout import to_json

        self._eval_attrs = _saved_attributes(checkpoint)
        result = super().evaluate_checkpoint(model_name, data, checkpoint, output, **options)
        m = self._eval_metrics
        result.update(attr_acc=m["attr_acc"], attr_table_acc=m["attr_table_acc"],
                      attributes=dict(zip(result["classes"], self.attr_values)))
        saved = {k: v for k, v in result.items() if k not in ("json", "summary", "per_class")}
        atomic_write_text(Path(result["json"]), to_json(saved, indent=1))
        result["summary"] += (f", attribute {m['attr_acc']:.2f}% (table at prediction "
                              f"{m['attr_table_acc']:.2f}%)")
        return result
