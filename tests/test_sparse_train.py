"""End to end: `edgevision train ... --sparsity` prunes on the schedule, and a run killed
mid-epoch resumes with its masks and ends like the uninterrupted run (issue 14)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from edgevision.training import prepare_sample_dataset

MODEL = "mobilenetv2_100"
REPO = Path(__file__).resolve().parents[1]


def _cli(args, env_extra=None, timeout=400):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "edgevision", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _argv(data, out):
    return ["train", MODEL, "--data", str(data), "--output", str(out), "--img-size", "32",
            "--batch-size", "8", "--epochs", "2", "--workers", "0", "--threads", "1",
            "--deterministic", "--no-progress", "--lr", "2e-3", "--warmup-epochs", "0",
            "--label-smoothing", "0", "--sparsity", "0.5", "--prune-start", "0", "--prune-end", "1.5"]


@pytest.mark.slow
def test_train_with_sparsity_kill_and_resume(tmp_path):
    data = prepare_sample_dataset(tmp_path / "fm", train_per_class=4, val_per_class=2)  # 5 steps/epoch
    ref = tmp_path / "ref"
    r = _cli(_argv(data, ref))
    assert r.returncode == 0, r.stderr[-3000:]
    st = torch.load(ref / "last.pth", weights_only=True)
    masks = {k: v for k, v in st["model"].items() if k.endswith("weight_mask")}
    assert len(masks) > 10
    kept = sum(int(v.sum()) for v in masks.values())
    total = sum(v.numel() for v in masks.values())
    assert abs(1 - kept / total - 0.5) < 0.01
    for k, v in masks.items():
        w = st["model"][k[: -len("_mask")]]
        assert (w[~v] == 0).all(), k
    assert st["hooks"], "the pruning hook's state is in the checkpoint"

    out = tmp_path / "crashy"
    r = _cli(_argv(data, out), {"EDGEVISION_KILL_AFTER_STEPS": "7"})  # SIGKILL mid-epoch 1
    assert r.returncode == -9, r.stderr[-2000:]
    mid = torch.load(out / "last.pth", weights_only=True)
    assert (mid["epoch"], mid["step_in_epoch"]) == (1, 0)
    mid_masks = {k: v for k, v in mid["model"].items() if k.endswith("weight_mask")}
    assert mid_masks.keys() == masks.keys()
    mid_sparsity = 1 - sum(int(v.sum()) for v in mid_masks.values()) / total
    assert 0.3 < mid_sparsity < 0.5  # on the cubic ramp (0.48 at epoch 1 of 0..1.5)
    r = _cli(_argv(data, out))
    assert r.returncode == 0 and "resume:" in r.stdout, r.stderr[-2000:]
    got, want = load_file(out / "model.safetensors"), load_file(ref / "model.safetensors")
    assert got.keys() == want.keys()
    diff = [k for k in want if not torch.equal(want[k], got[k])]
    assert not diff, f"{len(diff)} tensors differ after resume, e.g. {diff[:3]}"
