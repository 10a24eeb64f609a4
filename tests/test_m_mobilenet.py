"""M-MobileNet: the slim two-output top (<= 50% of MobileNet's standard head), ImageNet-format
weights into the backbone, the attribute table, the joint loss, export of both outputs."""

import json

import numpy as np
import pytest
import timm
import torch

import edgevision as ev
from edgevision.tasks.attributes.m_mobilenet import (
    convert_timm,
    default_hidden,
    m_head_params,
    standard_head_params,
)
from edgevision.tasks.attributes.table import (
    AttributeTableError,
    read_attribute_table,
    write_attribute_table,
)
from edgevision.tasks.attributes.task import attribute_loss

CLASSES = ["t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]


@pytest.mark.parametrize("name,features", [("m_mobilenetv1_100", 1024), ("m_mobilenetv2_100", 1280)])
def test_head_is_at_most_half_the_standard_head(name, features):
    m = ev.create_model(name, num_classes=10)
    c = m.head_param_counts()
    assert c["num_features"] == features
    # the standard head is MobileNet's ImageNet classifier, Linear(F -> 1000) with bias
    std = timm.create_model(name[2:], num_classes=1000).get_classifier()
    assert c["standard_head_params"] == sum(p.numel() for p in std.parameters()) == features * 1000 + 1000
    counted = sum(p.numel() for n, p in m.named_parameters() if not n.startswith("backbone."))
    assert c["head_params"] == counted == m_head_params(features, c["hidden"], 10)
    assert c["ratio"] <= 0.5 and c["hidden"] >= 256  # a real hidden layer, not a token one


def test_default_hidden_respects_budget_for_many_classes():
    for k in (2, 10, 100, 667, 1000):
        h = default_hidden(1024, k)
        assert h % 8 == 0 and h <= 512
        assert m_head_params(1024, h, k) <= 0.5 * standard_head_params(1024)
        assert m_head_params(1024, h + 8, k) > 0.5 * standard_head_params(1024) or h == 512


def test_two_outputs_and_timm_api():
    m = ev.create_model("m_mobilenetv1_100", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    species, attr = m(x, with_attribute=True)
    assert species.shape == (2, 10) and attr.shape == (2,)
    assert torch.equal(m(x), species)  # plain forward: the species logits (timm semantics)
    assert m.forward_head(m.forward_features(x), pre_logits=True).shape == (2, m.hidden)
    m.reset_classifier(4)
    assert m(x).shape == (2, 4)
    with pytest.raises(ValueError, match="3 input channels|channels"):
        m(torch.randn(1, 1, 32, 32))


def test_imagenet_weights_load_into_backbone(tmp_path):
    """A timm (ImageNet-format) MobileNet state dict loads into the backbone; the 1000-way
    classifier is dropped and our top stays new."""
    from edgevision.tasks.classification import load_backbone

    torch.manual_seed(0)
    ref = timm.create_model("mobilenetv1_100", num_classes=1000).eval()
    path = tmp_path / "mobilenetv1_100.pth"
    torch.save(ref.state_dict(), path)
    m = ev.create_model("m_mobilenetv1_100", num_classes=5).eval()
    fmt, head = load_backbone(m, "m_mobilenetv1_100", str(path))
    assert fmt == "timm" and all(not k.startswith("backbone.") for k in head)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(m.backbone(x), ref.forward_head(ref.forward_features(x), pre_logits=True), atol=1e-5)
    assert "backbone.conv_stem.weight" in convert_timm(ref.state_dict())
    assert not any(k.startswith("backbone.classifier") for k in convert_timm(ref.state_dict()))


def test_attribute_table(tmp_path):
    mapping = {c: int(c in ("sandal", "sneaker", "ankle_boot")) for c in CLASSES}
    p = write_attribute_table(tmp_path / "a.csv", mapping)
    assert read_attribute_table(p, CLASSES) == [mapping[c] for c in CLASSES]
    p.write_text("class,attribute\n" + "".join(f"{c},{'yes' if v else 'no'}\n" for c, v in reversed(mapping.items())))
    assert read_attribute_table(p, CLASSES) == [mapping[c] for c in CLASSES]  # order and yes/no words
    bad = {
        "unknown": ("class,attribute\n" + "".join(f"{c},0\n" for c in CLASSES[:-1]) + "ankle_boot,1\nsalmon,1\n",
                    r"unknown classes \['salmon'\]"),
        "missing": ("class,attribute\n" + "".join(f"{c},{int(c == 'bag')}\n" for c in CLASSES[:-1]),
                    r"misses classes \['ankle_boot'\]"),
        "header": ("species,edible\n" + "".join(f"{c},1\n" for c in CLASSES), "header"),
        "value": ("class,attribute\n" + "".join(f"{c},maybe\n" for c in CLASSES), "yes/no"),
        "twice": ("class,attribute\nbag,1\nbag,0\n", "twice"),
        "constant": ("class,attribute\n" + "".join(f"{c},1\n" for c in CLASSES), "both yes and no"),
    }
    for what, (text, msg) in bad.items():
        p.write_text(text)
        with pytest.raises(AttributeTableError, match=msg) as e:
            read_attribute_table(p, CLASSES)
        assert "\n" not in str(e.value), what
    with pytest.raises(AttributeTableError, match="no such file"):
        read_attribute_table(tmp_path / "none.csv", CLASSES)


def test_joint_loss_trains_both_outputs():
    torch.manual_seed(0)
    m = ev.create_model("m_mobilenetv1_100", num_classes=3)
    table = torch.tensor([0, 1, 1])
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    species, attr = m(x, with_attribute=True)
    loss, ce, bce = attribute_loss(species, attr, y, table)
    assert torch.allclose(loss, ce + bce)
    expect = torch.nn.functional.binary_cross_entropy_with_logits(attr, torch.tensor([0.0, 1.0, 1.0, 0.0]))
    assert torch.allclose(bce, expect)
    loss.backward()
    assert m.attribute_head.weight.grad.abs().sum() > 0 and m.species_head.weight.grad.abs().sum() > 0
    assert m.backbone.conv_stem.weight.grad.abs().sum() > 0


def _image_folder(root, classes=("sandal", "bag", "sneaker", "coat"), per_class=4, size=32):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for k, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                img = (rng.random((size, size, 3)) * 60 + 50 * k).astype("uint8")
                Image.fromarray(img).save(d / f"{i}.png")
    return root


def _cfg(data, out, **kw):
    from edgevision.training import make_config

    return make_config("m_mobilenetv1_100", data=str(data), output=str(out), epochs=1, batch_size=8, img_size=32,
                       workers=0, threads=1, progress=False, warmup_epochs=0, **kw)


@pytest.mark.slow
def test_trains_jointly_through_the_engine(tmp_path):
    from edgevision.training import train

    data = _image_folder(tmp_path / "data")
    write_attribute_table(data / "attributes.csv", {"sandal": 1, "bag": 0, "sneaker": 1, "coat": 0})
    s = train(_cfg(data, tmp_path / "run"))
    assert s["task"] == "attributes" and s["head"]["ratio"] <= 0.5
    for k in ("final_val_top1", "final_val_attr_acc", "final_val_attr_table_acc"):
        assert 0.0 <= s[k] <= 100.0
    from edgevision.checkpoints import read_metadata

    meta = read_metadata(tmp_path / "run" / "model.safetensors")
    assert json.loads(meta["attributes"]) == {"bag": 0, "coat": 0, "sandal": 1, "sneaker": 1}
    # edgevision eval reads the table saved with the weights, for both weight files
    from edgevision.tasks.base import get_task

    for weights in ("model.safetensors", "last.pth"):
        res = get_task("attributes").evaluate_checkpoint("m_mobilenetv1_100", str(data), str(tmp_path / "run" / weights),
                                                         str(tmp_path / f"eval_{weights}"), workers=0)
        saved = json.loads(open(res["json"]).read())
        assert saved["attributes"] == {"bag": 0, "coat": 0, "sandal": 1, "sneaker": 1}
        assert 0.0 <= saved["attr_acc"] <= 100.0 and "attribute" in res["summary"]
        assert saved["top1"] == pytest.approx(s["final_val_top1"], abs=1e-6) or weights == "last.pth"


def test_engine_refuses_a_table_with_unknown_classes(tmp_path):
    from edgevision.training import train

    data = _image_folder(tmp_path / "data", per_class=1)
    (data / "attributes.csv").write_text("class,attribute\nsandal,1\nbag,0\nsneaker,1\ncoat,0\nsalmon,1\n")
    with pytest.raises(AttributeTableError, match="salmon"):
        train(_cfg(data, tmp_path / "run"))
    (data / "attributes.csv").unlink()
    with pytest.raises(ValueError, match="class,attribute CSV"):
        train(_cfg(data, tmp_path / "run2"))


def test_cli_attributes_option_points_at_the_table(tmp_path, capsys):
    from edgevision.cli import main as cli_main

    data = _image_folder(tmp_path / "data", per_class=1)
    table = tmp_path / "elsewhere.csv"  # not DATA/attributes.csv: only --attributes can find it
    table.write_text("class,attribute\nsandal,1\nbag,0\nsneaker,1\nsalmon,1\n")
    rc = cli_main(["train", "m_mobilenetv1_100", "--data", str(data), "--attributes", str(table),
                   "--epochs", "1", "--img-size", "32", "--batch-size", "2", "--output", str(tmp_path / "run")])
    assert rc != 0 and "salmon" in capsys.readouterr().err
