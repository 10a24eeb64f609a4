"""Every segmentation head on every registry backbone: build, forward, backward at small input.

Each of ``deeplabv3_``, ``mobile_deeplabv3_``, ``lraspp_`` and ``pspnet_<backbone>`` (one per
classification backbone of the registry) is built with num_classes=3, run in train mode on a
small batch, and must return logits [B, 3, H, W] at the input size, and gradients must reach the
backbone's first conv and the classifier. The export contract (``export_forward`` and
``export_output_names``) is checked in eval mode. MobileNetV3-Large and EMO-1M run by default,
every other backbone under the ``slow`` mark.
"""

import pytest
import torch

import edgevision as ev
from edgevision.registry import dense_backbones
from edgevision.tasks.segmentation.models import HEADS

BACKBONES = dense_backbones()
FAST = ("mobilenetv3_large_100", "emo_1m")
CASES = [pytest.param(h, b, id=f"{h}_{b}", marks=() if b in FAST else pytest.mark.slow)
         for b in BACKBONES for h in HEADS]


@pytest.fixture(autouse=True)
def _one_thread():
    """Small convolutions are fastest on one thread, and far faster on a loaded machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_every_backbone_has_every_head():
    names = set(ev.list_models(task="segmentation"))
    assert names == {f"{h}_{b}" for h in HEADS for b in BACKBONES}
    assert not names & set(ev.list_models())  # the classifier listing is unchanged
    assert ev.model_info("lraspp_emo_1m").task == "segmentation"


def _size(model, n=64):
    """A small non-square input the model accepts (min_input_size, multiples of input_multiple)."""
    m = model.input_multiple
    h = -(-max(n, model.min_input_size) // m) * m
    return h, h + max(8, m)


@pytest.mark.parametrize("head,backbone", CASES)
def test_forward_backward(head, backbone):
    torch.manual_seed(0)
    aux = head != "lraspp"
    model = ev.create_model(f"{head}_{backbone}", num_classes=3, aux_loss=aux)
    x = torch.randn(2, 3, *_size(model))
    model.train()
    out = model(x)
    assert set(out) == ({"out", "aux"} if aux else {"out"})
    for v in out.values():
        assert v.shape == (2, 3, *x.shape[-2:])
    loss = sum(torch.nn.functional.cross_entropy(v, torch.randint(0, 3, (2, *x.shape[-2:]))) for v in out.values())
    loss.backward()
    first = next(p for n, p in model.named_parameters() if p.dim() == 4)  # the stem conv
    assert first.grad is not None and first.grad.abs().sum() > 0
    cls = model.classifier[-1] if isinstance(model.classifier, torch.nn.Sequential) else model.classifier.low_classifier
    assert cls.weight.grad is not None and torch.isfinite(cls.weight.grad).all()
    model.eval()
    with torch.no_grad():
        exported = model.export_forward(x[:1])
    assert len(exported) == len(model.export_output_names) == (2 if aux else 1)
    assert all(t.shape == (1, 3, *x.shape[-2:]) for t in exported)


# ------------------------------------------------------------------------------ bad input
@pytest.fixture(scope="module")
def small_model():
    return ev.create_model("lraspp_mobilenetv3_large_100", num_classes=3).eval()


def _one_line(e):
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 300, msg
    return msg


def test_wrong_channel_count(small_model):
    with pytest.raises(ValueError, match="in_chans=3") as e:
        small_model(torch.randn(1, 1, 64, 64))
    _one_line(e)


def test_input_smaller_than_minimum(small_model):
    with pytest.raises(ValueError, match="at least 32x32") as e:
        small_model(torch.randn(1, 3, 16, 64))
    _one_line(e)
    emo = ev.create_model("pspnet_emo_1m", num_classes=3).eval()
    with pytest.raises(ValueError, match="at least"):
        emo(torch.randn(1, 3, 20, 20))


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(output_stride=12), ValueError, "output_stride must be one of"),
    (dict(num_classes=0), ValueError, "num_classes >= 1"),
    (dict(aux_loss="yes"), TypeError, "aux_loss"),
    (dict(colour=True), TypeError, "unexpected arguments"),
])
def test_bad_build_arguments(kwargs, exc, match):
    kwargs = {"num_classes": 3, **kwargs}
    with pytest.raises(exc, match=match) as e:
        ev.create_model("deeplabv3_mobilenetv3_large_100", **kwargs)
    _one_line(e)


def test_lraspp_has_no_aux_head():
    with pytest.raises(ValueError, match="no auxiliary head"):
        ev.create_model("lraspp_emo_1m", num_classes=3, aux_loss=True)


def test_in_chans_and_output_stride_are_honoured():
    model = ev.create_model("deeplabv3_emo_1m", num_classes=4, in_chans=1, output_stride=16).eval()
    assert model.output_stride == 16 and model.backbone.reductions["out"] == 16
    with torch.no_grad():
        out = model(torch.randn(1, 1, 64, 48))["out"]
    assert out.shape == (1, 4, 64, 48)


def test_official_window_padding_count():
    """The official-vs-ours padding MACs: none where the maps divide both windows, positive where the
    official 16x16 windows pad (EMO-5M at 448 px: stage maps 28 and 14)."""
    from edgevision.tasks.segmentation.official import official_padding_macs

    with torch.device("meta"):
        m1, m5 = ev.create_model("pspnet_emo_1m"), ev.create_model("pspnet_emo_5m")
    assert official_padding_macs(m1, "emo_1m", (448, 448)) == 0
    assert official_padding_macs(m5, "emo_5m", (448, 448)) > 0
    assert official_padding_macs(m1, "emo_1m", (512, 512)) > 0  # 32 and 16 pad to 35 and 21
