"""Knowledge distillation (--teacher): the loss, the teacher checks, and a run that uses it."""

import json

import pytest
import torch
import torch.nn.functional as F

from edgevision.cli import main as cli_main
from edgevision.training import make_config, prepare_sample_dataset, train
from edgevision.training.config import check_config
from edgevision.training.distill import distill_loss

MODEL = "mobilenetv3_small_075"


def test_distill_loss_is_hintons_kl_scaled_by_t_squared():
    torch.manual_seed(0)
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    T = 3.0
    p = F.softmax(t / T, 1)
    want = (p * (p.log() - F.log_softmax(s / T, 1))).sum(1).mean() * T * T
    assert distill_loss(s, t, T).item() == pytest.approx(want.item(), rel=1e-5)
    assert distill_loss(t, t, T).item() == pytest.approx(0.0, abs=1e-6)  # nothing to learn from itself
    s.requires_grad_(True)
    distill_loss(s, t, T).backward()
    # d/ds of T^2 KL = T (softmax(s/T) - softmax(t/T)) / batch
    assert torch.allclose(s.grad, T * (F.softmax(s / T, 1) - p) / 5, atol=1e-6)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("kd")
    data = prepare_sample_dataset(root / "fm", train_per_class=4, val_per_class=2)
    base = dict(model=MODEL, data=str(data), img_size=32, batch_size=8, epochs=1, workers=0, threads=1,
                deterministic=True, progress=False, lr=2e-3, warmup_epochs=0, label_smoothing=0.0,
                max_steps_per_epoch=2)
    teacher = train(dict(base, output=str(root / "teacher")))["weights"]
    return base, teacher, root


def test_a_teacher_changes_the_loss_and_is_logged(tiny, tmp_path, capsys):
    base, teacher, _ = tiny
    plain = train(dict(base, output=str(tmp_path / "plain")))
    kd = train(dict(base, output=str(tmp_path / "kd"), teacher=teacher, distill_alpha=1.0, distill_temp=2.0))
    assert kd["first_train_loss"] != pytest.approx(plain["first_train_loss"], rel=1e-3)
    assert "distill: teacher mobilenetv3_small_075" in capsys.readouterr().out


def test_a_teacher_of_other_classes_is_refused(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    base, teacher, _ = tiny
    bad = tmp_path / "other_classes.safetensors"
    from safetensors import safe_open

    with safe_open(teacher, framework="pt") as f:
        meta = dict(f.metadata())
    meta["classes"] = json.dumps(list(reversed(json.loads(meta["classes"]))))
    save_file(load_file(teacher), str(bad), metadata=meta)
    with pytest.raises(ValueError, match="trained on classes"):
        train(dict(base, output=str(tmp_path / "x"), teacher=str(bad)))


@pytest.mark.parametrize("overrides,message", [
    (dict(teacher="/no/such/teacher.safetensors"), "--teacher /no/such/teacher.safetensors: no such file"),
    (dict(teacher_model="emo_1m"), "give its weights with --teacher"),
    (dict(model="lraspp_mobilenetv3_large_100", teacher=__file__), "is for classifiers"),
    (dict(teacher=__file__, distill_alpha=0.0), "--distill-alpha must be in (0, 1]"),
    (dict(teacher=__file__, distill_temp=0.0), "--distill-temp must be > 0"),
])
def test_bad_distill_options_fail_in_one_line(overrides, message):
    cfg = make_config(overrides.pop("model", MODEL), **overrides)
    with pytest.raises(ValueError) as e:
        check_config(cfg)
    assert message in str(e.value)


def test_cli_distill_options(tmp_path, capsys):
    rc = cli_main(["train", MODEL, "--data", str(tmp_path), "--teacher", str(tmp_path / "none.safetensors")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no such file" in err[0], err
