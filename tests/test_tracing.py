"""Tracing, on every registered model: torch.fx, torchvision's feature extractor, and
torch.export with dynamic height and width.

- ``torch.fx.symbolic_trace(model)`` gives a graph whose outputs equal eager, at two sizes
  (fx records no sizes: size-dependent code runs inside ``torch.fx.wrap``-ed calls);
- ``create_feature_extractor(model, {feature_info module: name})`` returns one output per
  feature level with the level's channels and reduction (a token level, EfficientFormer's
  last stage, comes out as (B, N, C) tokens, as from timm's EfficientFormer);
- ``torch.export.export`` with ``Dim``s for height and width from ``min_input_size`` up
  (multiples of ``input_multiple``) succeeds without narrowing that range, and the exported
  program equals eager at sizes not seen at export: the smallest input, an odd non-square
  size, and both sides of every ``size_breakpoints`` entry.

The export runs with ``torch.fx.experimental._config.backed_size_oblivious = True``. Without
it torch.export assumes that no intermediate size is 1 unless it is 1 in the example, so
any network whose last map is 1x1 at its smallest input fails with a constraint violation
(timm's own mobilenetv2_100 with Dim(min=32) does); the option is PyTorch's switch for
"sizes may be 1, do not specialize on it".

The four families' smallest variants run by default; every other registered model runs under
the ``slow`` mark.
"""

import pytest
import torch
import torch.fx.experimental._config as fx_config
from torch.export import Dim
from torchvision.models.feature_extraction import create_feature_extractor

import edgevision as ev
from edgevision.models.base import EdgeModel

FAST = ("emo_1m", "edgevit_xxs", "efficientformer_l1", "nasnet_a_mobile")
NAMES = ev.list_models()
MODELS = [pytest.param(n, id=n) if n in FAST else pytest.param(n, id=n, marks=pytest.mark.slow)
          for n in NAMES]
MAX_SIDE = 1024  # upper end of the exported range

_CACHE: dict = {}


def _model(name):
    if name not in _CACHE:
        torch.manual_seed(0)
        _CACHE[name] = ev.create_model(name).eval()
    return _CACHE[name]


def _side(model, n: int) -> int:
    """Smallest side >= n the model accepts (min_input_size, multiples of input_multiple)."""
    mult = getattr(model, "input_multiple", 1)
    n = max(n, getattr(model, "min_input_size", 1))
    return -(-n // mult) * mult


def _x(model, h, w, batch=1):
    g = torch.Generator().manual_seed(h * 1000 + w)
    return torch.randn(batch, getattr(model, "in_chans", 3), h, w, generator=g)


def _max_diff(a, b) -> float:
    return (a - b).abs().max().item()


def test_fast_models_are_registered():
    assert set(FAST) <= set(NAMES)


@pytest.mark.parametrize("name", MODELS)
def test_fx_symbolic_trace_matches_eager(name):
    model = _model(name)
    gm = torch.fx.symbolic_trace(model)
    for h, w in [(_side(model, 64), _side(model, 64)), (_side(model, 97), _side(model, 75))]:
        x = _x(model, h, w)
        with torch.no_grad():
            assert _max_diff(gm(x), model(x)) <= 1e-6, (name, h, w)


@pytest.mark.parametrize("name", MODELS)
def test_feature_extractor_returns_the_feature_info_levels(name):
    model = _model(name)
    info = [dict(d) for d in model.feature_info]
    nodes = {d["module"]: f"level{i}" for i, d in enumerate(info)}
    assert len(nodes) == len(info), "feature_info names a module twice"
    extractor = create_feature_extractor(model, return_nodes=nodes).eval()
    h, w = _side(model, 96), _side(model, 64)
    x = _x(model, h, w)
    with torch.no_grad():
        out = extractor(x)
    assert list(out) == list(nodes.values())
    for d, t in zip(info, out.values(), strict=True):
        r, c = d["reduction"], d["num_chs"]
        if t.dim() == 3:  # (B, N, C) tokens of an (h / r) x (w / r) grid
            assert t.shape[2] == c and t.shape[1] == -(-h // r) * -(-w // r), (name, d, t.shape)
        else:
            assert t.dim() == 4 and t.shape[1] == c, (name, d, t.shape)
            # "reduction" is the stride: the map side is side / r, give or take one pixel
            # (NASNet's unpadded stem conv gives 47 at 96 px for reduction 2)
            assert abs(t.shape[2] - h / r) <= 1 and abs(t.shape[3] - w / r) <= 1, (name, d, t.shape)
    if isinstance(model, EdgeModel):  # the same maps as forward_intermediates
        with torch.no_grad():
            maps = model.forward_intermediates(x, intermediates_only=True)
        for t, m in zip(out.values(), maps, strict=True):
            m = m.flatten(2).transpose(1, 2) if t.dim() == 3 else m
            assert _max_diff(t, m) <= 1e-6, name


def _dynamic_side(model, axis: str):
    lo, mult = _export_low(model), getattr(model, "input_multiple", 1)
    if mult > 1:
        return mult * Dim(f"{axis}_blocks", min=-(-lo // mult), max=MAX_SIDE // mult)
    return Dim(axis, min=lo, max=MAX_SIDE)


def _export_low(model) -> int:
    """Smallest side a dynamic program must cover: min_input_size, or the model's declared
    min_export_size (tiny-MOAT: 64, see its constructor)."""
    return max(getattr(model, "min_input_size", 1), getattr(model, "min_export_size", 0))


def _unseen_sizes(model, seen: int) -> list[tuple[int, int]]:
    """The smallest input, an odd non-square one, and both sides of each size breakpoint."""
    lo = _side(model, _export_low(model))
    sizes = [(lo, lo), (_side(model, 97), _side(model, 130))]
    for bp in getattr(model, "size_breakpoints", ()):
        sizes += [(_side(model, bp), _side(model, bp)), (_side(model, bp + 1), _side(model, bp + 1))]
    return [s for s in dict.fromkeys(sizes) if s != (seen, seen)]


@pytest.mark.parametrize("name", MODELS)
def test_export_with_dynamic_height_and_width_matches_eager(name):
    model = _model(name)
    seen = _side(model, 64)
    dims = {2: _dynamic_side(model, "h"), 3: _dynamic_side(model, "w")}
    with fx_config.patch(backed_size_oblivious=True):
        program = torch.export.export(model, (_x(model, seen, seen),), dynamic_shapes=(dims,))
    exported = program.module()
    sizes = _unseen_sizes(model, seen)
    assert len(sizes) >= 2
    for h, w in sizes:
        x = _x(model, h, w)
        with torch.no_grad():
            assert _max_diff(exported(x), model(x)) <= 1e-4, (name, h, w)


@pytest.mark.parametrize("h, w", [(1, 1), (7, 9), (8, 8), (13, 6)])
def test_shape_helpers_equal_their_slicing_definitions(h, w):
    """layers/shapes.py: the export-friendly forms compute exactly the plain slicing forms."""
    from edgevision.layers.shapes import (
        crop_to,
        map_to_tokens,
        pad_to_multiple,
        subsample,
        tokens_to_map,
    )

    x = torch.randn(2, 3, h, w)
    for r in (2, 4, 7):
        p = pad_to_multiple(x, r)
        assert p.shape[-2:] == (-(-h // r) * r, -(-w // r) * r)
        assert torch.equal(p[:, :, :h, :w], x) and p[:, :, h:].abs().sum() == 0 == p[:, :, :, w:].abs().sum()
        assert torch.equal(crop_to(p, h, w), x)
        assert torch.equal(subsample(x, r), x[:, :, ::r, ::r])
    tokens = map_to_tokens(x)
    assert tokens.is_contiguous() and torch.equal(tokens, x.flatten(2).transpose(1, 2))
    assert torch.equal(tokens_to_map(tokens, h, w), x)
