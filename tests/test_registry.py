"""Registry and create_model: names, metadata, timm integration, bad input."""

import pytest
import timm
import torch

import edgevision as ev
from edgevision.models.base import EdgeModel


def test_every_model_builds_on_meta_and_carries_metadata():
    names = ev.list_models()
    assert len(names) >= 20
    for name in names:
        info = ev.model_info(name)
        assert info.family and info.paper, name
        # networks defined by a net config (search results) have no published figures
        assert (info.published_params and info.published_source) or info.family == "netconfig", name
        with torch.device("meta"):
            model = ev.create_model(name)
        # our families subclass EdgeModel; the mobile CNNs are timm's own networks
        assert isinstance(model, EdgeModel) or type(model).__module__.startswith("timm.models."), name
        assert model.num_classes == 1000 and model.num_features > 0, name
        assert len(model.feature_info) >= 4, name


def test_list_models_pattern_and_family():
    assert ev.list_models("emo_*") == ["emo_1m", "emo_2m", "emo_5m", "emo_6m"]
    assert ev.list_models(family="edgevit") == ["edgevit_s", "edgevit_xs", "edgevit_xxs"]
    assert ev.list_models("no_such_*") == []


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ev.UnknownModelError, match=r"Did you mean: .*mobilenetv3_large_100"):
        ev.create_model("mobilenetv3_large")
    with pytest.raises(ev.UnknownModelError, match="emo_1m"):
        ev.model_info("emo1m")
    # also a KeyError, the conventional type for a missing name
    with pytest.raises(KeyError):
        ev.model_info("definitely_not_a_model")


def test_timm_create_model_builds_ours_without_shadowing_timm():
    ours = timm.create_model("emo_1m", num_classes=7)
    assert type(ours).__module__.startswith("edgevision.") and ours.num_classes == 7
    theirs = timm.create_model("mobilenetv3_large_100")
    assert type(theirs).__module__.startswith("timm."), "timm's own name must stay timm's"
    # pretrained=True goes through edgevision.hub (tested offline in test_hub.py)
    with pytest.raises(ev.CheckpointError, match="no downloadable official weights"):
        timm.create_model("tiny_moat_0", pretrained=True)  # no released weights: never a download


def test_num_classes_in_chans_and_reset_classifier():
    model = ev.create_model("mobilenetv2_035", num_classes=5, in_chans=1).eval()
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 5)
    model.reset_classifier(0)
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, model.num_features)


def test_bad_arguments():
    with pytest.raises(ValueError, match="in_chans"):
        ev.create_model("mobilenetv2_035", in_chans=0)
    with pytest.raises(ValueError, match="out_indices"):
        ev.create_model("mobilenetv2_035", features_only=True, out_indices=(9,))


def test_meta_counts_equal_real_counts():
    from edgevision.profiling import count_macs, count_params

    real = ev.create_model("emo_1m")
    with torch.device("meta"):
        meta = ev.create_model("emo_1m")
    assert count_params(real) == count_params(meta)
    assert count_macs(real, 96) == count_macs(meta, 96)
