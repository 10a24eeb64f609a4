"""Training checkpoints: everything needed to continue exactly, pickle-free, written atomically.

A checkpoint is a dict of tensors, plain containers and primitives only, so it loads with
``torch.load(weights_only=True)``: model, optimizer, scheduler, EMA and grad-scaler state,
the RNG states (python, numpy, torch CPU and CUDA) as tensors/lists, the epoch and step
counters, the model name, num_classes, class names, the run's config and the log history.
Files are written through :func:`edgevision.io.atomic_torch_save` (temp file, fsync, rename,
mode from the umask), so a crash while saving leaves the previous checkpoint intact and a full
disk is one clear line ("disk full while writing .../last.pth"), not torch's C++ message.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from edgevision.checkpoints import CheckpointError, describe_load_error
from edgevision.io import atomic_torch_save

FORMAT = "edgevision-train-v1"
LAST = "last.pth"


def rng_state() -> dict:
    """All RNG states as tensors and lists (no pickled objects)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(mt), gauss],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, mt, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in mt), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def plain(obj):
    """Config values as primitives/containers only (paths and tuples become str/list)."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write ``state`` (plus a format tag) atomically."""
    state = dict(state, format=FORMAT)
    atomic_torch_save(state, path)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict:
    """Read a training checkpoint with weights_only=True; clear errors for bad files."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a training checkpoint")
    if not path.is_file():
        raise CheckpointError(f"training checkpoint not found: {path}")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupt or unsafe files raise many types
        raise CheckpointError(describe_load_error(path, e, "training checkpoint")) from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an edgevision training checkpoint (no '{FORMAT}' tag); "
                              "to start from pretrained weights use --checkpoint instead of --resume")
    return state


def check_resumable(state: dict, model_name: str, num_classes: int, path, classes=None) -> None:
    """Refuse to resume into a different model, class count or class names, naming both."""
    if state["model_name"] != model_name:
        raise CheckpointError(f"{path}: checkpoint is for model {state['model_name']!r}, "
                              f"this run trains {model_name!r}; use another --output or drop --resume")
    if int(state["num_classes"]) != int(num_classes):
        raise CheckpointError(f"{path}: checkpoint has num_classes={state['num_classes']}, "
                              f"the data has {num_classes} classes; use another --output or drop --resume")
    saved = list(state.get("classes") or [])
    if classes is not None and saved and saved != list(classes):
        diff = [f"{a!r} vs {b!r}" for a, b in zip(saved, classes) if a != b]
        raise CheckpointError(f"{path}: checkpoint's classes differ from the data's ({', '.join(diff[:3])}); "
                              "use another --output or drop --resume")


def find_resume(output: Path, resume: str | None) -> Path | None:
    """The checkpoint to resume from: an explicit file, 'auto' (output/last.pth if present) or None."""
    if resume in (None, "", "none", "no"):
        return None
    if resume == "auto":
        p = output / LAST
        return p if p.is_file() else None
    p = Path(resume)
    if p.is_dir():
        p = p / LAST
    if not p.is_file():
        raise CheckpointError(f"--resume: checkpoint not found: {p}")
    return p


# --------------------------------------------------------------------------- a run's state
# Options whose change alters the schedule: the saved scheduler state is kept only when equal.
SCHEDULE_KEYS = ("epochs", "sched", "lr", "lr_base", "lr_base_batch", "batch_size", "warmup_epochs",
                 "warmup_lr", "min_lr", "max_steps_per_epoch")

# Options whose change makes a resumed run differ from an uninterrupted one.
RESUME_KEYS = ("data", "recipe", "batch_size", "lr", "lr_base", "lr_base_batch", "opt", "sched",
               "weight_decay", "warmup_epochs", "warmup_lr", "min_lr", "label_smoothing", "drop_path",
               "clip_grad", "ema", "ema_decay", "amp", "seed", "checkpoint", "freeze_backbone", "freeze_bn",
               "head_width_scale", "img_size", "crop_scale", "hflip", "color_jitter", "auto_augment",
               "interpolation", "mixup", "cutmix", "val_fraction", "max_steps_per_epoch",
               "sparsity", "prune_start", "prune_end", "prune_scope", "prune_pattern")


def run_state(run, epoch: int, step_in_epoch: int, sums: dict) -> dict:
    """Everything needed to continue ``run`` exactly from (epoch, step_in_epoch)."""
    from dataclasses import asdict

    cfg = run.cfg
    return {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "ema": run.ema.module.state_dict() if run.ema is not None else None,
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "hooks": [h.state_dict() if hasattr(h, "state_dict") else None for h in run.hooks],
        "rng": rng_state(),
        "epoch": epoch, "step_in_epoch": step_in_epoch,
        "global_step": epoch * run.steps_per_epoch + step_in_epoch,
        "epoch_sums": {k: float(v) for k, v in sums.items()},
        "model_name": cfg.model, "task": run.task.name, "num_classes": run.num_classes,
        "classes": list(run.classes), "world_size": run.dist.world_size, "config": plain(asdict(cfg)),
        "history": run.history,
        "task_meta": plain(run.task.weights_meta(run)),  # what eval/predict need: classes, sizes, ids
    }


def save_run(run, epoch: int, step_in_epoch: int, sums: dict | None = None) -> None:
    """Rank 0 writes OUTPUT/last.pth; mid-epoch, every rank's RNG streams and running sums go in
    too (a collective: all ranks call this), so each rank resumes its own streams exactly."""
    sums = sums or {}
    state = run_state(run, epoch, step_in_epoch, sums) if run.main else None
    if run.dist.enabled and step_in_epoch:
        import torch.distributed as dist

        mine = {"rng": rng_state(), "epoch_sums": {k: float(v) for k, v in sums.items()}}
        gathered = [None] * run.dist.world_size
        dist.all_gather_object(gathered, mine)
        if run.main:
            state["rank_states"] = gathered
    if run.main:
        save_checkpoint(run.out / LAST, state)


def _sums(saved) -> dict:
    if isinstance(saved, dict):
        return {k: float(v) for k, v in saved.items()}
    # edgevision-train-v1 files of the classification-only engine: [loss sum, correct, count]
    loss, correct, n = (float(v) for v in saved)
    return {"loss": loss, "n": n, "acc": 100.0 * correct}


def resume_run(run):
    """(start epoch, start step, epoch sums, rng state or None) from a checkpoint, if any;
    loads model, optimizer, scheduler, EMA, scaler, hooks and history into ``run``."""
    from dataclasses import asdict

    cfg = run.cfg
    path = find_resume(run.out, cfg.resume)
    if path is None:
        return 0, 0, {}, None
    st = load_checkpoint(path)
    check_resumable(st, cfg.model, run.num_classes, path, run.classes)
    saved_cfg = st.get("config") or {}
    now_cfg = plain(asdict(cfg))
    changed = [f"{k} {saved_cfg[k]!r} -> {now_cfg[k]!r}" for k in RESUME_KEYS
               if k in saved_cfg and saved_cfg[k] != now_cfg.get(k)]
    if changed:
        run.log(f"resume: warning: options differ from the run in {path}: {'; '.join(changed)} "
                "(continuing with the new values; use --no-resume or another --output to start afresh)")
    if int(st.get("world_size", 1)) != run.dist.world_size:
        raise CheckpointError(f"{path}: saved with {st['world_size']} process(es), now "
                              f"{run.dist.world_size}; resume with the same world size")
    run.model.load_state_dict(st["model"])
    run.optimizer.load_state_dict(st["optimizer"])
    if all(saved_cfg.get(k) == now_cfg.get(k) for k in SCHEDULE_KEYS):
        run.scheduler.load_state_dict(st["scheduler"])
    # else: timm's scheduler state holds its length and lrs; the one just built for the new
    # options (e.g. a raised --epochs) is right, and it is a function of the step count.
    if run.ema is not None and st.get("ema") is not None:
        run.ema.module.load_state_dict(st["ema"])
    if run.scaler is not None and st.get("scaler"):
        run.scaler.load_state_dict(st["scaler"])
    for hook, hs in zip(run.hooks, st.get("hooks") or []):
        if hs is not None and hasattr(hook, "load_state_dict"):
            hook.load_state_dict(hs)
    run.history = list(st.get("history", []))
    run.log(f"resume: {path} at epoch {st['epoch']} step {st['step_in_epoch']}")
    sums, rng = _sums(st["epoch_sums"]), st["rng"]
    if st.get("rank_states"):
        mine = st["rank_states"][run.dist.rank]
        sums, rng = _sums(mine["epoch_sums"]), mine["rng"]
    rng = rng if st["step_in_epoch"] else None  # epoch starts reseed anyway
    return int(st["epoch"]), int(st["step_in_epoch"]), sums, rng
