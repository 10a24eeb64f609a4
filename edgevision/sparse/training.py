"""Gradual magnitude pruning during training, as an engine hook (see notes/dense_contract.md).

``make_pruning_hook(cfg)`` reads ``cfg.sparsity``, ``cfg.prune_start`` / ``cfg.prune_end``
(epochs, fractional allowed; ``prune_end=None`` means three quarters of the way from the
start to ``cfg.epochs``, leaving the last quarter to recover at the final sparsity),
``cfg.prune_scope`` and ``cfg.prune_pattern``. The engine calls:

- ``on_model_built(run, model)``: masks (all ones, sparsity 0) are added to the prunable
  layers, so a checkpoint saved later carries them and loads into the model on resume;
  with ``prune_start == prune_end == 0`` the model is pruned to the target at once
  (one-shot pruning, then fine-tuning).
- ``on_step_end(run, epoch, step, steps_per_epoch)`` (epoch counted from 0): the time
  t = epoch + (step + 1) / steps_per_epoch gives the cubic-schedule target; the masks are
  recomputed when it has risen by ``min_delta`` (default 0.005) since the last update, and
  at the end of the ramp.
- ``state_dict()`` / ``load_state_dict(d)``: the sparsity reached, so a resumed run
  continues the schedule; the masks themselves are model buffers.
"""

from __future__ import annotations

import torch.nn as nn

from edgevision.sparse.masks import apply_mask
from edgevision.sparse.prune import (
    check_scope,
    parse_pattern,
    prunable_layers,
    prune_layers,
)
from edgevision.sparse.schedule import check_schedule, check_sparsity, cubic_sparsity


def _unwrap(model: nn.Module) -> nn.Module:
    while hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP, EMA wrappers
        model = model.module
    return model


class PruningHook:
    def __init__(self, sparsity: float, start: float = 0.0, end: float | None = None, epochs: float | None = None,
                 scope: str = "layer", pattern: str = "unstructured", min_delta: float = 0.005, **rules):
        self.final = check_sparsity(sparsity)
        if end is None:
            end = start + 0.75 * max(0.0, float(epochs) - start) if epochs else start
        self.start, self.end = check_schedule(start, end)
        self.scope, self.pattern = check_scope(scope), pattern
        parse_pattern(pattern)
        self.min_delta, self.rules = float(min_delta), rules
        self.current = 0.0  # sparsity the masks were last set to
        self.layers: dict[str, nn.Module] = {}

    def on_model_built(self, run, model: nn.Module) -> None:
        model = _unwrap(model)
        self.layers = prunable_layers(model, **self.rules)
        if not self.layers:
            raise ValueError(f"--sparsity: {type(model).__name__} has no prunable layers (convs with groups=1 or "
                             "linears other than the first conv and the classifier)")
        prune_layers(self.layers, self.current, self.scope, self.pattern)  # masks on, at the current sparsity
        if self.end <= 0.0 and self.final > 0:
            self._update(self.final)

    def target(self, t: float) -> float:
        return cubic_sparsity(t, self.final, self.start, self.end)

    def _update(self, s: float) -> None:
        prune_layers(self.layers, s, self.scope, self.pattern)
        self.current = s

    def on_step_end(self, run, epoch: int, step: int, steps_per_epoch: int) -> None:
        if not self.layers:
            return
        s = self.target(epoch + (step + 1) / max(1, steps_per_epoch))
        if s - self.current >= self.min_delta or (s >= self.final and self.current < self.final):
            self._update(s)
        else:  # undo the optimizer's step on pruned weights now, so EMA and checkpoints see zeros
            for m in self.layers.values():
                apply_mask(m)

    def state_dict(self) -> dict:
        return {"current": self.current, "final": self.final, "start": self.start, "end": self.end,
                "scope": self.scope, "pattern": self.pattern}

    def load_state_dict(self, d: dict) -> None:
        if d.get("pattern", self.pattern) != self.pattern or d.get("scope", self.scope) != self.scope:
            raise ValueError(f"resumed run pruned with pattern={d.get('pattern')!r} scope={d.get('scope')!r}, "
                             f"this one asks for pattern={self.pattern!r} scope={self.scope!r}")
        self.current = float(d.get("current", 0.0))


def make_pruning_hook(cfg) -> PruningHook:
    """The hook for a TrainConfig-like ``cfg`` (fields in the module docs)."""
    return PruningHook(
        sparsity=getattr(cfg, "sparsity", 0.0),
        start=getattr(cfg, "prune_start", 0.0) or 0.0,
        end=getattr(cfg, "prune_end", None),
        epochs=getattr(cfg, "epochs", None),
        scope=getattr(cfg, "prune_scope", "layer") or "layer",
        pattern=getattr(cfg, "prune_pattern", "unstructured") or "unstructured",
    )
