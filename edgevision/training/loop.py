"""The training loop: one task-agnostic run from a laptop CPU to many GPUs under torchrun.

The pieces are timm's (optimizer and scheduler factories, ModelEmaV3) and torch's (autocast,
GradScaler, DistributedDataParallel, DistributedSampler); a :class:`~edgevision.tasks.base.Task`
(picked from ``model_info(model).task``) supplies data, model, loss and metrics. What a long
run needs lives beside this file: exact continuation and atomic checkpoints
(:mod:`.checkpointing`), SIGINT/SIGTERM and the crash test hook (:mod:`.signals`), logs and
curves (:mod:`.logs`), seeds and mixed precision (:mod:`.runtime`), options (:mod:`.config`).

Exact continuation: the sampler order, the augmentation of each sample and the global RNG
streams are all functions of (seed, epoch[, step]), and every checkpoint stores the RNG states,
so a run resumed from its last checkpoint ends with the same weights as one that never stopped
(with ``deterministic=True``).

Outputs in OUTPUT: last.pth (every epoch and on SIGINT/SIGTERM), log.csv/log.json, curves.png,
best.safetensors (the epoch with the best ``task.score_key``), model.safetensors (final weights
with the task's metadata), summary.json.

Hooks (e.g. pruning, :func:`edgevision.sparse.training.make_pruning_hook`): objects with any of
``on_model_built(run, model)``, ``on_step_end(run, epoch, step, steps_per_epoch)``,
``on_epoch_end(run, epoch)``, ``state_dict()``/``load_state_dict(d)`` (checkpoint key "hooks").
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn as nn

from edgevision.checkpoints import save_model
from edgevision.io import atomic_write_text
from edgevision.jsonout import to_json
from edgevision.training import checkpointing as ckpt
from edgevision.training import logs
from edgevision.training import signals as sig
from edgevision.training.config import TrainConfig, check_config, make_config, scaled_lr
from edgevision.training.distributed import (
    all_reduce_sum,
    barrier,
    cleanup,
    init_distributed,
    pick_device,
)
from edgevision.training.runtime import (
    autocast,
    epoch_seed,
    resolve_amp,
    seed_everything,
    set_deterministic,
    worker_init,
)


class Run:
    """State of one training run; :func:`train` drives it."""

    def __init__(self, cfg: TrainConfig, task=None):
        from edgevision.tasks.base import task_of

        self.cfg = cfg
        self.task = task if task is not None else task_of(cfg.model)
        self.out = Path(cfg.output)
        self.device = pick_device(cfg.device)
        self.dist = init_distributed(self.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.main = self.dist.is_main
        self.channels_last = cfg.channels_last
        self.amp_dtype = resolve_amp(cfg.amp, self.device)
        self.classes, self.num_classes, self.data_dir, self.data_report = [], 0, "", []
        self.hooks = build_hooks(cfg)
        self.history = []

    def log(self, msg: str) -> None:
        if self.main:
            print(msg, flush=True)

    def call_hooks(self, name: str, *args) -> None:
        for h in self.hooks:
            fn = getattr(h, name, None)
            if fn is not None:
                fn(self, *args)

    # ---- model, data and optimisation
    def build_model(self) -> nn.Module:
        cfg = self.cfg
        model = self.task.build_model(self)
        if cfg.sync_bn and self.dist.enabled:
            if self.device.type == "cpu":  # torch's SyncBatchNorm kernels are GPU-only
                self.log("--sync-bn: SyncBatchNorm runs on GPUs only; per-process BatchNorm on CPU")
            else:
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(self.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.call_hooks("on_model_built", model)  # before the optimizer sees the parameters
        return model

    def build_loaders(self, train_set, val_set) -> None:
        cfg = self.cfg
        self.train_set, self.val_set = train_set, val_set
        w, r = self.dist.world_size, self.dist.rank
        self.sampler = torch.utils.data.DistributedSampler(
            train_set, num_replicas=w, rank=r, shuffle=True, seed=cfg.seed, drop_last=True)
        self.steps_per_epoch = len(self.sampler) // cfg.batch_size
        if cfg.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.max_steps_per_epoch)
        if self.steps_per_epoch == 0:
            raise ValueError(f"batch size {cfg.batch_size} x {w} process(es) exceeds the "
                             f"{len(train_set)} training images; lower --batch-size")
        # Each process evaluates every world-th validation image (no padding: exact counts).
        val_idx = list(range(r, len(val_set), w))
        self.val_loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(val_set, val_idx), batch_size=cfg.batch_size * 2, shuffle=False,
            num_workers=cfg.workers, pin_memory=self.device.type == "cuda",
            collate_fn=self.task.collate_fn(False),
            generator=torch.Generator().manual_seed(0), worker_init_fn=worker_init if cfg.workers else None)

    def train_loader(self, epoch: int, start_step: int):
        cfg = self.cfg
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        order = list(self.sampler)[: self.steps_per_epoch * cfg.batch_size]
        order = order[start_step * cfg.batch_size:]  # mid-epoch resume skips the steps done
        return torch.utils.data.DataLoader(
            self.train_set, batch_size=cfg.batch_size, sampler=order, drop_last=True,
            num_workers=cfg.workers, pin_memory=self.device.type == "cuda",
            collate_fn=self.task.collate_fn(True),
            generator=torch.Generator().manual_seed(epoch), worker_init_fn=worker_init if cfg.workers else None)

    def build_optim(self) -> None:
        from timm.optim import create_optimizer_v2
        from timm.scheduler import create_scheduler_v2

        cfg = self.cfg
        self.global_batch = cfg.batch_size * self.dist.world_size
        self.lr = scaled_lr(cfg, self.dist.world_size)
        self.optimizer = create_optimizer_v2(self.model, cfg.opt, lr=self.lr, weight_decay=cfg.weight_decay)
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, cfg.sched, num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs,
            warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr, step_on_epochs=False,
            updates_per_epoch=self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.ema = None
        if cfg.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=cfg.ema_decay)
        self.net = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)


def build_hooks(cfg: TrainConfig) -> list:
    hooks = []
    if cfg.sparsity > 0:
        try:
            from edgevision.sparse.training import make_pruning_hook
        except ImportError as e:
            raise ValueError(f"--sparsity needs edgevision.sparse.training, which is not available ({e})") from None
        hooks.append(make_pruning_hook(cfg))
    if cfg.qat:
        from edgevision.training.qat import QATHook

        hooks.append(QATHook(cfg.qat))
    return hooks


def optimizer_step(run: Run, loss: torch.Tensor) -> None:
    """Backward, optional gradient clipping, optimizer step (GradScaler under fp16)."""
    cfg = run.cfg
    run.optimizer.zero_grad(set_to_none=True)
    if run.scaler is not None:
        run.scaler.scale(loss).backward()
        if cfg.clip_grad:
            run.scaler.unscale_(run.optimizer)
            nn.utils.clip_grad_norm_(run.model.parameters(), cfg.clip_grad)
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        loss.backward()
        if cfg.clip_grad:
            nn.utils.clip_grad_norm_(run.model.parameters(), cfg.clip_grad)
        run.optimizer.step()


def train(config: TrainConfig | dict) -> dict:
    """Run a training job; returns the summary dict (also written to output/summary.json)."""
    cfg = make_config(**config) if isinstance(config, dict) else config
    check_config(cfg)
    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    set_deterministic(cfg.deterministic)
    run = None
    try:
        run = Run(cfg)
        return _train(run)
    finally:
        if run is not None:
            cleanup(run.dist)
        torch.set_num_threads(threads_before)
        if cfg.deterministic and not was_deterministic:  # leave a library caller's process as found
            torch.use_deterministic_algorithms(False)


def _train(run: Run) -> dict:
    cfg, task = run.cfg, run.task
    if run.out.exists() and not run.out.is_dir():
        raise NotADirectoryError(f"--output must be a folder; {run.out} is a file")
    run.out.mkdir(parents=True, exist_ok=True)
    if run.main:  # temp files of checkpoint writes cut short by a crash (SIGKILL, power loss)
        for tmp in run.out.glob(".*.tmp"):
            if tmp.name.startswith((f".{ckpt.LAST}.", ".model.safetensors.", ".model_ema.safetensors.", ".best.safetensors.")):
                tmp.unlink(missing_ok=True)
    seed_everything(cfg.seed)
    task.prepare(run)
    seed_everything(cfg.seed)  # model init does not depend on the data scan
    model = run.build_model()
    run.build_loaders(*task.build_datasets(run, model))
    run.build_optim()
    start_epoch, start_step, sums, rng = ckpt.resume_run(run)
    run.log(f"train: {cfg.model} ({task.name}) on {len(run.train_set)} images, {len(run.classes)} classes, "
            f"{run.dist.world_size} process(es) x batch {cfg.batch_size} = {run.global_batch}, "
            f"lr {run.lr:.3g}, {cfg.epochs} epochs of {run.steps_per_epoch} steps, device {run.device}"
            + (f", amp {run.amp_dtype}" if run.amp_dtype else ""))
    if cfg.recipe == "finetune" and not cfg.checkpoint:
        run.log("warning: --recipe finetune without --checkpoint trains from scratch with fine-tuning "
                "settings; pass --checkpoint WEIGHTS to start from pretrained weights")
    if start_epoch >= cfg.epochs:
        run.log(f"resume: the run in {run.out} already finished {start_epoch} epochs; nothing to train "
                "(use --no-resume or another --output to start afresh, or raise --epochs)")
    tb = logs.tensorboard(run)
    stop = sig.Stop(verbose=run.main)
    stop.install()
    kill_after = sig.kill_after_steps()
    t_start = time.perf_counter()
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if rng is not None:
                ckpt.set_rng_state(rng)  # mid-epoch resume: continue the saved streams
                rng = None
            else:
                seed_everything(epoch_seed(cfg.seed, epoch, run.dist.rank))
                sums = {}
            if _train_epoch(run, epoch, start_step, sums, stop, kill_after):
                return {"interrupted": True, "epoch": epoch}
            start_step = 0
            _end_epoch(run, epoch, sums, tb)
    finally:
        stop.restore()
        if tb is not None:
            tb.close()
    return _finish(run, time.perf_counter() - t_start)


def _train_epoch(run: Run, epoch: int, start_step: int, sums: dict, stop: sig.Stop, kill_after: int) -> bool:
    """Train one epoch (from start_step); True when stopped by a signal (checkpoint written)."""
    cfg, task = run.cfg, run.task
    task.train_mode(run, run.net)
    loader = run.train_loader(epoch, start_step)
    bar = logs.progress(run.steps_per_epoch, start_step, f"epoch {epoch + 1}/{cfg.epochs}",
                        run.main and cfg.progress)
    t0, seen = time.perf_counter(), 0
    acc: dict[str, torch.Tensor] = {}  # running sums stay on the device: no host sync per step
    step = start_step
    for batch in loader:
        inputs, targets = task.to_device(run, batch, train=True)
        run.scheduler.step_update(num_updates=epoch * run.steps_per_epoch + step)
        with autocast(run.device, run.amp_dtype):
            loss, stats = task.loss(run, run.net, inputs, targets)
        optimizer_step(run, loss)
        step += 1
        if run.ema is not None:
            run.ema.update(run.model, step=epoch * run.steps_per_epoch + step)
        run.call_hooks("on_step_end", epoch, step, run.steps_per_epoch)
        stats = {"loss": loss.detach().double() * stats["n"], **stats}
        for k, v in stats.items():
            v = v.detach().double()
            acc[k] = acc[k] + v if k in acc else v.clone()
        seen += 1
        bar.update(1)
        if run.main and cfg.progress and (step % 20 == 0 or step == run.steps_per_epoch):
            now = {k: v + sums.get(k, 0.0) for k, v in zip(acc, torch.stack(list(acc.values())).tolist())}
            n = max(now["n"], 1e-9)
            ips = (now["n"] - sums.get("n", 0.0)) * run.dist.world_size / max(time.perf_counter() - t0, 1e-9)
            post = {"loss": f"{now['loss'] / n:.3f}"}
            post.update({k: f"{now[k] / n:.3g}" for k in task.bar_stats if k in now})
            bar.set_postfix(**post, ips=f"{ips:.0f} img/s", refresh=False)
        if kill_after and epoch * run.steps_per_epoch + step >= kill_after:
            sig.kill_self()
            kill_after = 0
        flag = float(stop.signum != 0)
        if run.dist.enabled:  # every process must stop at the same step
            flag = all_reduce_sum([flag], run.device, run.dist)[0]
        if flag:
            _fold(sums, acc)
            ckpt.save_run(run, epoch, step, sums)
            barrier(run.dist)
            bar.close()
            run.log(f"stopped by signal at epoch {epoch + 1} step {step}; checkpoint "
                    f"{run.out / ckpt.LAST}; rerun the same command to continue")
            return True
    bar.close()
    n_before = sums.get("n", 0.0)
    _fold(sums, acc)
    run.epoch_time = time.perf_counter() - t0
    run.epoch_ips = (sums.get("n", 0.0) - n_before) * run.dist.world_size / max(run.epoch_time, 1e-9)
    run.call_hooks("on_epoch_end", epoch)
    return False


def _fold(sums: dict, acc: dict) -> None:
    """Add the device-side running sums of this stretch of steps into the epoch's sums."""
    if acc:
        for k, v in zip(acc, torch.stack(list(acc.values())).tolist()):
            sums[k] = sums.get(k, 0.0) + v
        acc.clear()


def _end_epoch(run: Run, epoch: int, sums: dict, tb) -> None:
    cfg, task = run.cfg, run.task
    keys = sorted(sums)
    total = dict(zip(keys, all_reduce_sum([sums[k] for k in keys], run.device, run.dist)))
    n = max(total.get("n", 0.0), 1)
    eval_model = run.ema.module if run.ema is not None else run.model
    metrics = task.evaluate(run, eval_model, run.val_loader)
    run.last_metrics = metrics
    row = {"epoch": epoch + 1, "lr": run.optimizer.param_groups[0]["lr"],
           "train_loss": total.get("loss", 0.0) / n}
    row.update({f"train_{k}": v / n for k, v in total.items() if k not in ("loss", "n")})
    row.update(task.val_row(metrics))
    row.update({"img_per_s": getattr(run, "epoch_ips", 0.0), "epoch_s": getattr(run, "epoch_time", 0.0)})
    best_before = max((h.get(task.score_key, float("-inf")) for h in run.history), default=float("-inf"))
    run.history.append(row)
    if run.main and row.get(task.score_key, float("-inf")) > best_before:  # the weights that scored best
        save_model(eval_model, run.out / "best.safetensors", cfg.model, extra=task.weights_meta(run))
    run.scheduler.step(epoch + 1)
    ckpt.save_run(run, epoch + 1, 0)
    logs.write_logs(run)
    if tb is not None:
        for k, v in row.items():
            if k != "epoch":
                tb.add_scalar(k, v, epoch + 1)
    line = task.epoch_line(row)
    if line is None:
        train_cols = " ".join(f"{k[6:]} {v:.4g}" for k, v in row.items() if k.startswith("train_"))
        line = f"train {train_cols} | {task.summary(metrics)}"
    run.log(f"epoch {epoch + 1}/{cfg.epochs}: {line} | {row['img_per_s']:.0f} img/s")
    barrier(run.dist)


def _finish(run: Run, seconds: float) -> dict:
    cfg, task = run.cfg, run.task
    meta = task.weights_meta(run)
    weights = run.out / "model.safetensors"
    if run.main:
        save_model(run.model, weights, cfg.model, extra=meta)
        if run.ema is not None:
            save_model(run.ema.module, run.out / "model_ema.safetensors", cfg.model, extra=meta)
    last = run.history[-1] if run.history else {}
    best = max(run.history, key=lambda h: h.get(task.score_key, float("-inf"))) if run.history else {}
    summary = {
        "model": cfg.model, "task": task.name, "recipe": cfg.recipe, "data": run.data_dir,
        "classes": run.classes, "num_classes": len(run.classes), "train_images": len(run.train_set),
        "epochs": cfg.epochs, "world_size": run.dist.world_size, "global_batch": run.global_batch,
        "lr": run.lr, "final_train_loss": last.get("train_loss"),
        "first_train_loss": run.history[0]["train_loss"] if run.history else None,
        "score_key": task.score_key, "final_score": last.get(task.score_key),
        "best_score": best.get(task.score_key), "best_epoch": best.get("epoch"), "seconds": seconds,
        "weights": str(weights), "best_weights": str(run.out / "best.safetensors"),
        "ema_weights": str(run.out / "model_ema.safetensors") if run.ema else None,
        "checkpoint": str(run.out / ckpt.LAST), "data_report": run.data_report, "output": str(run.out),
    }
    summary.update(task.summary_fields(run, last, best))
    if run.main:
        atomic_write_text(run.out / "summary.json", to_json(summary, indent=1))
        what = task.done_line(run, summary)
        if what is None:
            fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
            what = (f"{task.score_key} {fmt(summary['final_score'])} (best {fmt(summary['best_score'])} "
                    f"at epoch {summary['best_epoch']})")
        run.log(f"done: {cfg.model} {what} in {seconds:.0f} s; weights {weights}; logs, curves.png, "
                f"summary.json in {run.out}")
    return summary
