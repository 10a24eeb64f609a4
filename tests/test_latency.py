"""Latency tables and the predictor (issue 15): schema, sums, fitted models, resume, bad input.

Timing is replaced by a fake clock (a block's "time" is a function of its features) so the
tests are fast, deterministic and take no timing lock; real timing lives in
benchmarks/bench_latency_predictor.py.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn as nn

from edgevision.latency import (
    FORMAT,
    LatencyTableWarning,
    Predictor,
    UnknownBlockError,
    build_table,
    check_table,
    decompose,
    load_table,
    validate_table,
)
from edgevision.latency import measure as measure_mod
from edgevision.latency.predictor import fit_overhead


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, 1, 1, groups=c)
        self.pw = nn.Conv2d(c, c, 1)

    def forward(self, x):
        return x + self.pw(torch.relu(self.dw(x)))


class Down(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, 2, 1)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.bn(self.conv(x))


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.stages = nn.Sequential(nn.Sequential(Block(8), Block(8)), nn.Sequential(Down(8, 16), Block(16)))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)).mean((2, 3)))


def fake_ms(features: dict) -> float:
    """A deterministic 'latency' that is linear in the cost features."""
    return 0.01 + 1e-6 * features["macs"] + 2e-5 * features["act_elems"]


@pytest.fixture
def fake_timing(monkeypatch):
    """Replace real timing: runners return their unit's fake time; count the units timed."""
    timed = []

    def unit_runner(unit, runtime, threads=1):
        from edgevision.latency.blocks import unit_features

        timed.append(unit.key)
        ms = fake_ms(unit.features or unit_features(unit))
        return lambda: ms

    def network_runner(model, size, runtime, threads=1):
        units = decompose(model, size)
        ms = 0.2 + 0.01 * len(units) + 1.1 * sum(fake_ms(u.features) for u in units)
        return lambda: ms

    def time_interleaved(fns, **kw):
        return {k: dict(ms=fn(), p10_ms=fn(), p90_ms=fn(), iters=1) for k, fn in fns.items()}

    monkeypatch.setattr(measure_mod, "unit_runner", unit_runner)
    monkeypatch.setattr(measure_mod, "network_runner", network_runner)
    monkeypatch.setattr(measure_mod, "time_interleaved", time_interleaved)
    return timed


def test_decompose_dedupes_identical_blocks_and_names_stages():
    units = decompose(TinyNet(), 32)
    assert [u.kind for u in units] == ["Conv2d", "Block", "Block", "Down", "Block", "Linear"]
    assert [u.stage for u in units] == ["stem", "stages.0", "stages.0", "stages.1", "stages.1", "head"]
    assert units[1].key == units[2].key  # same structure and input shape, different place
    assert units[1].key != units[4].key  # other width
    assert "stages" not in units[1].key and "stem" not in units[0].key  # no module names in keys
    assert units[1].features["macs"] == 8 * 9 * 16 * 16 + 8 * 8 * 16 * 16 + 0  # dw + pw (bias not a MAC)


def test_decompose_merges_stem_and_head_chains_of_timm_models():
    import edgevision as ev

    units = decompose(ev.create_model("mobilenetv3_small_075"), 64, features=False)
    assert units[0].kind == "Conv2d+BatchNormAct2d" and units[0].stage == "stem"
    assert units[-1].stage == "head" and "Linear" in units[-1].kind
    assert all(u.stage.startswith("blocks.") for u in units[1:-2])


def test_table_schema(tmp_path, fake_timing):
    path = tmp_path / "t.json"
    table = build_table([TinyNet()], "eager", path, sizes=[32], progress=False)
    on_disk = json.loads(path.read_text())
    assert on_disk["format"] == FORMAT and on_disk["runtime"] == "eager" and on_disk["threads"] == 1
    assert {"cpu", "logical_cores", "versions"} <= set(on_disk["machine"])
    assert on_disk["settings"]["clock"] == "cpu"
    assert len(on_disk["entries"]) == 5 == len(table["entries"])  # 6 units, two identical Blocks
    for e in on_disk["entries"].values():
        assert {"kind", "signature", "input_shapes", "ms", "features", "load"} <= set(e)
        assert set(e["features"]) == {"macs", "params", "act_elems", "io_elems", "n_ops"}
    (net,) = on_disk["networks"].values()
    assert len(net["units"]) == 6 and net["ms"] > 0
    validate_table(on_disk)
    bad = dict(on_disk, format="something/0")
    with pytest.raises(ValueError, match="format"):
        validate_table(bad)
    broken = json.loads(path.read_text())
    del next(iter(broken["entries"].values()))["ms"]
    with pytest.raises(ValueError, match="lacks ms"):
        validate_table(broken)


def _hand_table(units, times):
    return {"format": FORMAT, "runtime": "eager", "threads": 1, "machine": {}, "settings": {}, "networks": {},
            "entries": {u.key: {"kind": u.kind, "signature": u.signature, "input_shapes": u.input_shapes,
                                "ms": times[u.kind], "features": {}} for u in units}}


def test_predictor_sums_hand_made_table():
    units = decompose(TinyNet(), 32, features=False)
    times = {"Conv2d": 1.0, "Block": 2.0, "Down": 3.0, "Linear": 0.5}
    table = _hand_table(units, times)
    table["entries"][units[4].key]["ms"] = 4.0  # the 16-channel Block
    pred = Predictor(table).predict(TinyNet(), 32)
    assert pred.ms == pytest.approx(1.0 + 2.0 + 2.0 + 3.0 + 4.0 + 0.5)
    assert pred.from_table == 1.0
    assert pred.stages == pytest.approx({"stem": 1.0, "stages.0": 4.0, "stages.1": 7.0, "head": 0.5})
    # With >= 4 networks in the table the overhead a + b*n + s*sum is fitted and applied.
    rows = [(s, n, 0.3 + 0.02 * n + 1.2 * s) for s, n in [(5, 6), (10, 9), (20, 12), (40, 20), (7, 30), (15, 3)]]
    o = fit_overhead(rows)
    assert (o.a, o.b, o.s, o.form) == (pytest.approx(0.3, rel=1e-3), pytest.approx(0.02, rel=1e-3),
                                        pytest.approx(1.2, rel=1e-3), "a+b+s")
    stem, down = units[0].key, units[3].key  # 1.0 ms and 3.0 ms entries
    table["networks"] = {}
    for i, (a, b) in enumerate([(2, 0), (1, 3), (4, 4), (0, 5), (6, 1), (3, 2)]):
        table["networks"][f"n{i}"] = {"units": [stem] * a + [down] * b,
                                      "ms": 0.3 + 0.02 * (a + b) + 1.2 * (1.0 * a + 3.0 * b)}
    pred = Predictor(table).predict(TinyNet(), 32)
    assert pred.ms == pytest.approx(0.3 + 0.02 * 6 + 1.2 * 12.5, rel=1e-3)


def test_fitted_model_predicts_unseen_shape():
    from edgevision.latency.blocks import unit_features

    entries = {}
    for size in range(16, 64, 4):  # 12 shapes of one block kind
        u = decompose(TinyNet(), size, features=False)[1]
        u.features = unit_features(u)
        entries[u.key] = {"kind": u.kind, "signature": u.signature, "input_shapes": u.input_shapes,
                          "ms": fake_ms(u.features), "features": u.features}
    table = {"format": FORMAT, "runtime": "eager", "threads": 1, "machine": {}, "settings": {},
             "networks": {}, "entries": entries}
    unseen = decompose(TinyNet(), 100, features=False)[1]
    assert unseen.key not in entries
    ms, source = Predictor(table).unit_ms(unseen)
    assert source == "fit"
    assert ms == pytest.approx(fake_ms(unit_features(unseen)), rel=0.03)


def test_interrupted_build_resumes(tmp_path, fake_timing):
    path = tmp_path / "t.json"
    seen = []

    def stop_after_three(key):
        seen.append(key)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_table([TinyNet()], "eager", path, sizes=[32], progress=False, on_entry=stop_after_three)
    partial = load_table(path)
    assert len(partial["entries"]) == 3 and not partial["networks"]
    fake_timing.clear()
    table = build_table([TinyNet()], "eager", path, sizes=[32], progress=False)
    assert len(table["entries"]) == 5 and len(table["networks"]) == 1
    assert len(fake_timing) == 2 and not set(fake_timing) & set(partial["entries"])  # only the missing ones
    with pytest.raises(ValueError, match="runtime eager"):
        build_table([TinyNet()], "onnxruntime", path, sizes=[32], progress=False)


def test_table_from_another_machine_warns_with_both(tmp_path):
    from edgevision.latency.table import machine_fingerprint, new_table

    table = new_table("eager", 1)
    assert check_table(table, "eager", 1) == []
    table["machine"] = dict(table["machine"], cpu="Imaginary CPU 9000")
    with pytest.warns(LatencyTableWarning) as rec:
        diffs = check_table(table, "onnxruntime", 1)
    assert diffs == ["cpu", "runtime"]
    msg = str(rec[0].message)
    assert "Imaginary CPU 9000" in msg and machine_fingerprint()["cpu"] in msg
    assert "runtime eager" in msg and "runtime onnxruntime" in msg


def test_unknown_block_type_is_named():
    units = decompose(TinyNet(), 32, features=False)
    table = _hand_table([u for u in units if u.kind != "Down"], {"Conv2d": 1.0, "Block": 2.0, "Linear": 0.5})
    with pytest.raises(UnknownBlockError, match="'Down'.*kinds it has: Block, Conv2d, Linear"):
        Predictor(table).predict(TinyNet(), 32)
    from edgevision.models.netconfig import NetConfigError

    bad = {"family": "mobilenetv3", "arch": [["ds_r1_k3_s1_e1_c16"], ["zz_r1_k3_s2_e6_c24"]]}
    with pytest.raises(NetConfigError, match="unknown block type 'zz'"):
        Predictor(table).predict(bad, 32)


def test_onnxruntime_runner_times_a_two_input_block():
    pytest.importorskip("onnxruntime")

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(4, 4, 1)
            self.b = nn.Conv2d(4, 4, 1)

        def forward(self, x, y):
            return self.a(x) + self.b(y)

    fn = measure_mod.make_runner(Two(), [torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)], "onnxruntime", 1)
    (out,) = fn()
    assert out.shape == (1, 4, 8, 8)
    stats = measure_mod.time_interleaved({"two": fn}, warmup=1, rounds=1, target_s=0.001, min_iters=2,
                                         max_iters=2, clock="cpu")
    assert stats["two"]["iters"] == 2 and stats["two"]["ms"] > 0


def test_cli_parser_build_and_predict(tmp_path, fake_timing, capsys, monkeypatch):
    import argparse

    from edgevision.cli import latency as cli

    monkeypatch.setattr("edgevision.latency.table.resolve_model", lambda spec, num_classes=1000: TinyNet())
    monkeypatch.setattr("edgevision.cli.latency.warnings", warnings)
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "t.json"
    args = parser.parse_args(["latency", "build", "--models", "tiny", "--sizes", "32", "-o", str(out),
                              "--no-progress"])
    assert args.func(args) == 0
    assert "5 block entries, 1 networks" in capsys.readouterr().out
    args = parser.parse_args(["latency", "predict", "tiny", "--table", str(out)])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "stages.1" in text and "total (whole network)" in text and "5/6" not in text


def test_cli_main_reports_missing_table_in_one_line(tmp_path, capsys):
    from edgevision.cli import main

    assert main(["latency", "predict", "emo_1m", "--table", str(tmp_path / "none.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not exist" in err and "latency build" in err
