"""tiny-MOAT against the official deeplab2 (TensorFlow) model: its variables, in TF layout with
checkpoint names, load through create_model(checkpoint=...) and reproduce its logits at 256 and
224 px (reference/parity/tiny_moat_0.md: benign drift <= 7.2e-7, smallest bug 2.1e-5)."""

import pytest
import torch
from safetensors.torch import load_file, save_file

import edgevision as ev
from edgevision.checkpoints import CheckpointMismatchError
from edgevision.models.moat import convert_official_checkpoint, tiny_moat_0
from edgevision.registry import model_info
from edgevision.testing import manifest_state_dict

TOL = 2e-6


@pytest.fixture(scope="module")
def fixture_path(reference_dir):
    return reference_dir / "parity" / "tiny_moat_0.safetensors"


@pytest.fixture(scope="module")
def io(reference_dir):
    return load_file(str(reference_dir / "parity" / "tiny_moat_0_io.safetensors"))


@pytest.fixture(scope="module")
def official(fixture_path):
    return ev.create_model("tiny_moat_0", checkpoint=str(fixture_path)).eval()


@pytest.mark.parametrize("size", ["", "_224"])
def test_official_logits_through_create_model(official, io, size):
    assert official.checkpoint_format == "official"
    x = io["input" + size]  # stored NCHW (TF was fed the NHWC transpose)
    assert x.shape[-1] == (224 if size else 256)
    with torch.no_grad():
        diff = (official(x) - io["logits" + size]).abs().max().item()
    print(f"tiny_moat_0{size or '_256'}: max|dlogits| vs deeplab2 = {diff:.2e}")
    assert diff <= TOL


def test_pool_size_is_the_builders_3(official, io):
    """The 2x2 block-default shortcut pool is another network (the fixture is pool 3)."""
    assert official.pool_size == 3
    two = tiny_moat_0(pool_size=2).eval()
    two.load_state_dict(official.state_dict())
    with torch.no_grad():
        diff = (two(io["input_224"]) - io["logits_224"]).abs().max().item()
    assert diff > 1e-2


def test_every_variant_registers_the_converter():
    for name in ev.list_models("tiny_moat_*"):
        assert model_info(name).converters.get("official") is convert_official_checkpoint


def test_manifest_layout_converts_strictly(reference_dir):
    """The manifest (Keras variable order) converts to exactly our keys and shapes."""
    sd = manifest_state_dict(reference_dir / "manifests" / "tiny_moat_0.json")
    assert len(sd) == 361
    with torch.device("meta"):
        model = tiny_moat_0()
    own = {k: v.shape for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    conv = convert_official_checkpoint(sd)
    assert {k: v.shape for k, v in conv.items()} == own


def test_tf2_names_and_moving_averages(fixture_path):
    """TF2 in-memory names (':0', unscoped stem) load too; a moving average beats its variable."""
    sd = load_file(str(fixture_path))
    ref = convert_official_checkpoint(sd)
    tf2 = {}
    for k, v in sd.items():
        name = k.replace("moat/stem/", "") + ":0"
        tf2[name] = torch.zeros_like(v)  # raw variable, superseded by its average
        tf2[k + "/ExponentialMovingAverage"] = v
    conv = convert_official_checkpoint(tf2)
    assert conv.keys() == ref.keys()
    assert all(torch.equal(conv[k], ref[k]) for k in ref)


def test_q_k_v_fuse_head_major(fixture_path):
    sd = load_file(str(fixture_path))
    conv = convert_official_checkpoint(sd)
    q = sd["moat/block_03_01/attention/q/weight"]  # (C, heads, d)
    k_bias = sd["moat/block_03_01/attention/k/bias"]  # (heads, d)
    qkv_w, qkv_b = conv["stages.3.1.attn.qkv.weight"], conv["stages.3.1.attn.qkv.bias"]
    c = q.shape[0]
    assert torch.equal(qkv_w[3 * 32 + 5], q[:, 3, 5])  # output unit = head * 32 + d
    assert torch.equal(qkv_b[c + 2 * 32 + 7], k_bias[2, 7])
    o = sd["moat/block_03_01/attention/o/weight"]  # (heads, d, C)
    assert torch.equal(conv["stages.3.1.attn.proj.weight"][9, 1 * 32 + 4], o[1, 4, 9])


def test_not_official_and_incomplete_checkpoints_fail_with_the_diff(fixture_path, tmp_path):
    with pytest.raises(KeyError, match="not an official deeplab2 MOAT"):
        convert_official_checkpoint(tiny_moat_0().state_dict())
    sd = load_file(str(fixture_path))
    del sd["moat/block_02_03/attention/v/weight"]
    path = tmp_path / "broken.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointMismatchError):
        ev.create_model("tiny_moat_0", checkpoint=str(path))
    with pytest.raises(CheckpointMismatchError, match="mis-shaped keys"):  # another variant's widths
        ev.create_model("tiny_moat_1", checkpoint=str(fixture_path))
