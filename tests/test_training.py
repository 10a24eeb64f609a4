"""Training engine: learning, exact crash recovery, torchrun/DDP, fine-tuning, clear errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import edgevision
from edgevision.checkpoints import CheckpointError
from edgevision.training import make_config, prepare_sample_dataset, train

MODEL = "mobilenetv3_small_075"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """Real Fashion-MNIST images as an ImageFolder: 4 train + 2 val per class."""
    return prepare_sample_dataset(tmp_path_factory.mktemp("fm_tiny"), train_per_class=4, val_per_class=2)


def _tiny(data, out, **kw):
    base = dict(model=MODEL, data=str(data), output=str(out), img_size=32, batch_size=8, epochs=2,
                workers=0, threads=1, deterministic=True, progress=False, lr=2e-3, warmup_epochs=1,
                label_smoothing=0.0, resume="auto", drop_path=0.1)
    base.update(kw)
    return base


def _cli(args, env_extra=None, timeout=240, new_session=False):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "edgevision", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, start_new_session=new_session)


def _tiny_argv(data, out):
    return ["train", MODEL, "--data", str(data), "--output", str(out), "--img-size", "32",
            "--batch-size", "8", "--epochs", "2", "--workers", "0", "--threads", "1",
            "--deterministic", "--no-progress", "--lr", "2e-3", "--warmup-epochs", "1",
            "--label-smoothing", "0", "--drop-path", "0.1"]


@pytest.mark.slow
def test_short_run_lowers_loss_and_beats_chance(tmp_path):
    data = prepare_sample_dataset(tmp_path / "fm", train_per_class=30, val_per_class=10)
    # Many small steps: BatchNorm's running statistics need ~100 updates before eval works.
    s = train(dict(model=MODEL, data=str(data), output=str(tmp_path / "run"), img_size=32,
                   batch_size=10, epochs=5, lr=3e-3, warmup_epochs=0, workers=0, threads=1,
                   crop_scale=(0.7, 1.0), color_jitter=0.0, label_smoothing=0.0, progress=False))
    assert s["final_train_loss"] < 0.8 * s["first_train_loss"]
    assert s["final_val_top1"] > 2 * s["chance_top1"], s  # 100 held-out test images, 10 classes
    out = tmp_path / "run"
    for f in ("log.csv", "log.json", "curves.png", "summary.json", "last.pth", "model.safetensors"):
        assert (out / f).is_file(), f
    assert len(json.loads((out / "log.json").read_text())) == 5
    # The exported weights load through create_model; the checkpoint is pickle-free.
    m = edgevision.create_model(MODEL, num_classes=10, checkpoint=str(out / "model.safetensors"))
    assert m.num_classes == 10
    st = torch.load(out / "last.pth", weights_only=True)
    assert st["epoch"] == 5 and st["model_name"] == MODEL and st["num_classes"] == 10
    assert {"python", "numpy", "torch"} <= set(st["rng"]) and st["optimizer"]["state"]


@pytest.mark.slow
def test_sigterm_and_sigkill_then_resume_equal_uninterrupted_run(tiny_data, tmp_path):
    ref = train(_tiny(tiny_data, tmp_path / "ref"))
    ref_w = load_file(ref["weights"])
    out = tmp_path / "crashy"
    argv = _tiny_argv(tiny_data, out)
    # Ctrl-C mid-epoch 1 (after step 3 of 5), sent to the whole process group as a terminal does,
    # DataLoader workers included: checkpoint at that step, exit 130, no traceback.
    r = _cli([*argv, "--workers", "1"], {"EDGEVISION_KILL_AFTER_STEPS": "3", "EDGEVISION_KILL_SIGNAL": "INT",
                                         "EDGEVISION_KILL_GROUP": "1"}, new_session=True)
    assert r.returncode == 130 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "SIGINT: finishing this step" in r.stderr
    st = torch.load(out / "last.pth", weights_only=True)
    assert (st["epoch"], st["step_in_epoch"]) == (0, 3)
    # Resume, then a hard crash mid-epoch 2 (global step 7): the epoch-1 checkpoint survives.
    r = _cli(argv, {"EDGEVISION_KILL_AFTER_STEPS": "7"})
    assert r.returncode == -9, r.stderr[-2000:]
    assert "resume:" in r.stdout
    st = torch.load(out / "last.pth", weights_only=True)
    assert (st["epoch"], st["step_in_epoch"]) == (1, 0)
    # Auto-resume from the output folder to the end.
    r = _cli(argv)
    assert r.returncode == 0, r.stderr[-2000:]
    got = load_file(out / "model.safetensors")
    assert got.keys() == ref_w.keys()
    diff = [k for k in ref_w if not torch.equal(ref_w[k], got[k])]
    assert not diff, f"{len(diff)} tensors differ after resume, e.g. {diff[:3]}"
    log = json.loads((out / "log.json").read_text())
    assert [h["epoch"] for h in log] == [1, 2]


def _torchrun(argv, env_extra=None, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "edgevision", *argv]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_torchrun_two_process_gloo_run_and_exact_mid_epoch_resume(tiny_data, tmp_path):
    def argv(out):  # 40 images / 2 processes / batch 4 = 5 steps; drop-path draws from each rank's RNG
        return [*_tiny_argv(tiny_data, out), "--batch-size", "4", "--epochs", "1", "--device", "cpu", "--sync-bn"]

    out = tmp_path / "ddp"
    r = _torchrun(argv(out))
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    assert "2 process(es) x batch 4 = 8" in r.stdout
    assert r.stdout.count("epoch 1/1: train loss") == 1  # rank 0 logs alone
    assert "SyncBatchNorm runs on GPUs only" in r.stdout
    st = torch.load(out / "last.pth", weights_only=True)
    assert st["world_size"] == 2 and st["epoch"] == 1
    assert not any(k.startswith("module.") for k in st["model"])
    m = edgevision.create_model(MODEL, num_classes=10)
    m.load_state_dict(st["model"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch"] == 8
    ref_w = load_file(out / "model.safetensors")

    # Stopped mid-epoch (SIGTERM to both ranks after step 2): every rank's RNG streams are saved,
    # and the resumed run ends with the uninterrupted run's weights.
    stopped = tmp_path / "ddp_stopped"
    r = _torchrun(argv(stopped), {"EDGEVISION_KILL_AFTER_STEPS": "2", "EDGEVISION_KILL_SIGNAL": "TERM"})
    assert r.returncode != 0 and "stopped by signal at epoch 1 step 2" in r.stdout, r.stderr[-3000:]
    st = torch.load(stopped / "last.pth", weights_only=True)
    assert (st["epoch"], st["step_in_epoch"]) == (0, 2) and len(st["rank_states"]) == 2
    r = _torchrun(argv(stopped))
    assert r.returncode == 0 and "resume:" in r.stdout, (r.stdout[-2000:], r.stderr[-3000:])
    got = load_file(stopped / "model.safetensors")
    diff = [k for k in ref_w if not torch.equal(ref_w[k], got[k])]
    assert not diff, f"{len(diff)} tensors differ after a 2-process mid-epoch resume, e.g. {diff[:3]}"


def test_finetune_new_head_frozen_backbone_and_resume_mismatch(tiny_data, tmp_path):
    base = train(_tiny(tiny_data, tmp_path / "base", epochs=1, deterministic=False))
    # A 3-class data set: fine-tune from the 10-class weights with a new head.
    import shutil

    three = tmp_path / "three"
    for split in ("train", "val"):
        for c in sorted(os.listdir(tiny_data / split))[:3]:
            shutil.copytree(tiny_data / split / c, three / split / c)
    ft = train(_tiny(three, tmp_path / "ft", epochs=1, checkpoint=base["weights"], freeze_backbone=True,
                     batch_size=4))
    before, after = load_file(base["weights"]), load_file(ft["weights"])
    head = [k for k in after if after[k].shape != before[k].shape]
    assert head and all(k.startswith("classifier") for k in head), head
    frozen = [k for k in after if k not in head and not k.endswith("num_batches_tracked")]
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert ft["num_classes"] == 3
    # --freeze-bn: every BatchNorm keeps the checkpoint's running statistics, affine parameters train.
    fbn = train(_tiny(three, tmp_path / "fbn", epochs=1, checkpoint=base["weights"], freeze_bn=True, batch_size=4))
    got = load_file(fbn["weights"])
    stats = [k for k in got if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(before[k], got[k]) for k in stats)
    assert any(not torch.equal(before[k], got[k]) for k in got if k.endswith("bn1.weight"))
    with pytest.raises(ValueError, match="--freeze-bn needs --checkpoint"):
        train(_tiny(three, tmp_path / "nofbn", epochs=1, freeze_bn=True))
    # Same class count (a further fine-tune, pruning or distillation run): the classifier is kept.
    from edgevision.tasks.classification import load_backbone

    fresh_model = edgevision.create_model(MODEL, num_classes=10)
    assert load_backbone(fresh_model, MODEL, base["weights"], keep_matching_head=True)[1] == set()
    assert torch.equal(fresh_model.state_dict()["classifier.weight"], before["classifier.weight"])
    fmt, fresh = load_backbone(edgevision.create_model(MODEL, num_classes=10), MODEL, base["weights"])
    assert fresh == {"classifier.weight", "classifier.bias"}
    # Halved pre-logits head (1024 -> 512 for MobileNetV3): fine-tunes, and eval rebuilds it.
    half = train(_tiny(three, tmp_path / "half", epochs=1, checkpoint=base["weights"], batch_size=4,
                       head_width_scale=0.5))
    w = load_file(half["weights"])
    assert w["conv_head.weight"].shape[0] == before["conv_head.weight"].shape[0] // 2
    from edgevision.training import evaluate

    assert evaluate(MODEL, str(three), half["weights"], str(tmp_path / "ev"), workers=0)["num_images"] == 6
    with pytest.raises(ValueError, match="pre-logits head"):
        train(_tiny(three, tmp_path / "v2", epochs=1, model="mobilenetv2_035", head_width_scale=0.5))
    # Resuming the 3-class run folder with 10-class data, or another model, fails clearly.
    with pytest.raises(CheckpointError, match="num_classes=3"):
        train(_tiny(tiny_data, tmp_path / "ft", epochs=1))
    with pytest.raises(CheckpointError, match="checkpoint is for model"):
        train(_tiny(three, tmp_path / "ft", epochs=1, model="mobilenetv2_035"))


@pytest.mark.slow
def test_config_and_input_errors(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="unknown training option"):
        make_config(MODEL, bogus=1)
    with pytest.raises(ValueError, match="unknown recipe"):
        make_config(MODEL, recipe="nope")
    assert make_config(MODEL, "emo_imagenet").lr_base == 6e-3
    with pytest.raises(ValueError, match="--data DIR is required"):
        train(dict(model=MODEL, output=str(tmp_path / "x")))
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        train(dict(model=MODEL, data=str(tmp_path / "missing"), output=str(tmp_path / "x")))
    with pytest.raises(ValueError, match="exceeds the"):
        train(_tiny(tiny_data, tmp_path / "big", batch_size=1000))
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        train(_tiny(tiny_data, tmp_path / "amp", amp="fp16", device="cpu"))
    r = _cli(["train", "no_such_model", "--data", str(tiny_data)])
    assert r.returncode == 2 and "unknown model" in r.stderr


def test_options_smoke_ema_bf16_mixup_channels_last(tiny_data, tmp_path, capsys):
    import importlib.util

    has_tb = importlib.util.find_spec("tensorboard") is not None  # missing: see test_training_data_tools
    s = train(_tiny(tiny_data, tmp_path / "opts", epochs=1, ema=True, ema_decay=0.9, amp="bf16",
                    mixup=0.8, cutmix=1.0, channels_last=True, auto_augment="trivialaugment",
                    clip_grad=1.0, max_steps_per_epoch=2, deterministic=False, tensorboard=has_tb))
    if has_tb:
        assert (tmp_path / "opts" / "tensorboard").is_dir()
    assert s["ema_weights"] and os.path.isfile(s["ema_weights"])
    st = torch.load(tmp_path / "opts" / "last.pth", weights_only=True)
    assert st["ema"] is not None and st["global_step"] == 2


@pytest.mark.slow
def test_demo_recipe_cli_uses_bundled_sample(tmp_path):
    out = tmp_path / "demo"
    r = _cli(["train", MODEL, "--recipe", "demo", "--output", str(out), "--epochs", "1",
              "--max-steps-per-epoch", "2", "--workers", "0", "--img-size", "32", "--threads", "1"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Fashion-MNIST sample (MIT licence; " in r.stdout
    assert (out / "data" / "train" / "sandal").is_dir() and (out / "model.safetensors").is_file()
