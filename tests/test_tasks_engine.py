"""The task-agnostic engine: the task registry, option checks, training hooks (saved and restored)."""

import sys
import types

import numpy as np
import pytest
import torch

from edgevision.cli import main
from edgevision.tasks.base import Task, get_task, register_task, task_of
from edgevision.training import make_config, train
from edgevision.training.config import check_config


def test_task_registry():
    assert get_task("classification").score_key == "val_top1"
    assert task_of("mobilenetv3_small_075").name == "classification"
    assert task_of("ssdlite_mobilenetv3_small_075").name == "detection"
    assert task_of("lraspp_mobilenetv3_small_075").name == "segmentation"
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        get_task("nope")

    class Mine(Task):
        name = "mine"

    register_task("mine", Mine)
    assert isinstance(get_task("mine"), Mine)


@pytest.mark.parametrize("kw, msg", [
    (dict(sparsity=1.0), "--sparsity must be in"), (dict(sparsity=-0.1), "--sparsity must be in"),
    (dict(sparsity=0.5, prune_start=3.0, prune_end=1.0), "--prune-end"),
    (dict(prune_scope="model"), "--prune-scope"), (dict(prune_start=-1.0), "--prune-start"),
])
def test_bad_pruning_options_are_one_clear_line(kw, msg):
    with pytest.raises(ValueError, match=msg):
        check_config(make_config("mobilenetv3_small_075", **kw))


def test_pruning_flags_reach_the_config(monkeypatch):
    import edgevision.training as T

    seen = {}
    monkeypatch.setattr(T, "train", lambda cfg: seen.setdefault("cfg", cfg) and {})
    assert main(["train", "mobilenetv3_small_075", "--data", "d", "--sparsity", "0.7", "--prune-start", "0.5",
                 "--prune-end", "2.5", "--prune-scope", "global", "--prune-pattern", "2:4"]) == 0
    c = seen["cfg"]
    assert (c.sparsity, c.prune_start, c.prune_end, c.prune_scope, c.prune_pattern) == (0.7, 0.5, 2.5, "global", "2:4")


class RecordingHook:
    """Stands in for edgevision.sparse's pruning hook: records the calls, keeps a state."""

    def __init__(self, cfg):
        self.cfg, self.calls, self.steps, self.loaded = cfg, [], 0, None

    def on_model_built(self, run, model):
        self.calls.append("built")
        model.register_buffer("hook_mask", torch.ones(1))  # masks are module buffers

    def on_step_end(self, run, epoch, step, steps_per_epoch):
        self.steps += 1
        self.calls.append(("step", epoch, step, steps_per_epoch))

    def on_epoch_end(self, run, epoch):
        self.calls.append(("epoch", epoch))

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, d):
        self.loaded = dict(d)


def test_hooks_run_and_their_state_is_checkpointed(tmp_path, monkeypatch):
    from edgevision.training.scenes import write_scenes

    made = []
    fake = types.ModuleType("edgevision.sparse.training")
    fake.make_pruning_hook = lambda cfg: made.append(RecordingHook(cfg)) or made[-1]
    monkeypatch.setitem(sys.modules, "edgevision.sparse.training", fake)
    rng = np.random.default_rng(0)
    data = write_scenes(tmp_path / "d", 4, 2, size=48, backgrounds=[rng.integers(0, 255, (64, 64, 3), np.uint8)])
    cfg = dict(model="lraspp_mobilenetv3_small_075", data=str(data), output=str(tmp_path / "run"), img_size=48,
               batch_size=2, epochs=1, workers=0, threads=1, progress=False, warmup_epochs=0, sparsity=0.5)
    train(cfg)
    h = made[0]
    assert h.cfg.sparsity == 0.5 and h.calls[0] == "built"
    assert h.calls[1:] == [("step", 0, 1, 2), ("step", 0, 2, 2), ("epoch", 0)]
    st = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert st["hooks"] == [{"steps": 2}] and "hook_mask" in st["model"]
    train(dict(cfg, epochs=2))  # resume: the new hook gets the saved state back
    assert made[1].loaded == {"steps": 2} and made[1].steps == 2
    with pytest.raises(ValueError, match="--sparsity"):
        train(dict(cfg, sparsity=1.5))
