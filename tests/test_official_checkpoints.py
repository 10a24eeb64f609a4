"""Official-format checkpoints of every EMO and EdgeViT variant load through one converter per
family. Only emo_1m/2m and edgevit_xxs have parity fixtures; the manifests give the official
keys, shapes and order of every variant, so the others are checked by layout here."""

import pytest
import torch

import edgevision as ev
from edgevision.testing import manifest_state_dict

VARIANTS = ["emo_1m", "emo_2m", "emo_5m", "emo_6m", "edgevit_xxs", "edgevit_xs", "edgevit_s"]


@pytest.mark.parametrize("name", VARIANTS)
def test_manifest_shaped_official_checkpoint_loads_strictly(reference_dir, tmp_path, name):
    """Every variant, same converter: an official-format .pth (the manifest's keys and shapes in
    official order) is detected as "official" by create_model, loads strictly, and every tensor
    lands where the converter puts it (a rename: nothing dropped, merged or left over)."""
    sd = manifest_state_dict(reference_dir / "manifests" / f"{name}.json")
    converted = ev.model_info(name).converters["official"](sd)
    assert len(converted) == len(sd)
    assert set(converted) == set(ev.create_model(name).state_dict())  # num_batches_tracked included
    path = tmp_path / f"{name}.pth"
    torch.save(sd, path)
    model = ev.create_model(name, checkpoint=str(path))
    assert model.checkpoint_format == "official"
    ours = model.state_dict()
    for k, v in converted.items():
        assert torch.equal(ours[k], v), k
