"""Counting dense models: export_forward (backbone + neck + heads) at the registered size, and
the published figures the registry holds for detection (benchmarks/dense_counts.py writes the
full table)."""

import pytest
import torch

import edgevision as ev
from edgevision.profiling.counting import count_macs, count_params, module_summary
from edgevision.registry import model_info


def _meta(name, **kw):
    with torch.device("meta"):
        return ev.create_model(name, **kw)


def _published_count(name):
    info = model_info(name)
    m = _meta(name, num_classes=info.cfg["published_num_classes"])
    return m, count_params(m), count_macs(m, (1, *info.input_size)), info


def test_ssdlite320_matches_torchvision_meta_figures():
    m, params, macs, info = _published_count("ssdlite320_mobilenetv3_large_100")
    assert params == 3_440_060  # torchvision's num_params for ssdlite320_mobilenet_v3_large
    assert macs == pytest.approx(info.published_macs, rel=0.01)


@pytest.mark.parametrize("name", ["ssdlite_emo_1m", "retinanet_emo_1m", "retinanet_emo_5m"])
def test_emo_detectors_within_3_percent(name):
    _, params, macs, info = _published_count(name)
    assert params == pytest.approx(info.published_params, rel=0.03)
    assert macs == pytest.approx(info.published_macs, rel=0.03)


def test_counts_export_forward_not_the_detection_forward():
    m = _meta("ssdlite_emo_1m", num_classes=81).eval()
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        m.export_forward(torch.empty(1, 3, 320, 320, device="meta"))
    assert count_macs(m, (1, 3, 320, 320)) == counter.get_total_flops() // 2
    rows = {r["module"]: r for r in module_summary(m, (1, 3, 320, 320))}
    assert rows["backbone"]["macs"] > 0 and rows["head"]["macs"] > 0
    assert rows["backbone"]["macs"] + rows["head"]["macs"] == count_macs(m, (1, 3, 320, 320))


def test_head_size_changes_the_count():
    small = count_params(_meta("ssdlite_emo_1m", num_classes=3))
    coco = count_params(_meta("ssdlite_emo_1m"))
    assert coco - small == (80 + 168 + 512 + 256 + 256 + 128) * 6 * 88 + 6 * 6 * 88  # 1x1 cls convs
