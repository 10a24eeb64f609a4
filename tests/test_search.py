"""Search (issue 15, item 4): spaces, reward, proxy, aging evolution, resume, outputs."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from edgevision.search.build import build_network
from edgevision.search.evolution import (
    check_target,
    pareto_front,
    pick_winner,
    read_log,
    run_search,
)
from edgevision.search.proxy import Proxy, ProxyConfig
from edgevision.search.reward import mnasnet_reward
from edgevision.search.spaces import SPACES, get_space


# ---------------------------------------------------------------- fakes (cheap, deterministic)
def fake_latency(cfg):
    """Grows with depth and width, like a real network's latency."""
    if cfg["family"] == "emo":
        cost = sum(d * w * e for d, w, e in zip(cfg["depths"], cfg["dims"], cfg["exp"])) / 400
        cost += sum(cfg["attn"]) * 0.3
    else:
        cost = 0.0
        for stage in cfg["arch"]:
            for b in stage:
                parts = dict((p[0], p[1:]) for p in b.split("_")[1:] if p[:1] in "rkec")
                cost += int(parts["r"]) * int(parts["c"]) * float(parts.get("e", 1)) / 300
    return 0.5 + cost, "fake"


def fake_accuracy(cfg):
    lat, _ = fake_latency(cfg)
    return {"acc": 1 - 0.5 / (1 + lat)}


def _genes_differ(a, b):
    return [k for k in a if a[k] != b[k]]


# ----------------------------------------------------------------------------------- spaces
@pytest.mark.parametrize("name", ["mnasnet", "emo"])
def test_sampled_networks_build_and_run(name):
    space = get_space(name)
    rng = random.Random(0)
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 50 small networks: one thread avoids oversubscribing a shared machine
    try:
        _build_and_run(space, rng, x)
    finally:
        torch.set_num_threads(threads)


def _build_and_run(space, rng, x):
    with torch.inference_mode():
        for _ in range(50):
            cfg = space.to_config(space.sample(rng))
            y = build_network(cfg, num_classes=10).eval()(x)
            assert y.shape == (1, 10) and torch.isfinite(y).all(), cfg


@pytest.mark.parametrize("name", ["mnasnet", "emo"])
def test_sampler_and_mutation(name):
    space = get_space(name)
    a = [space.sample(random.Random(3)) for _ in range(2)]
    assert a[0] == a[1]  # same seed, same genotype
    rng = random.Random(1)
    samples = [space.sample(rng) for _ in range(30)]
    assert len({space.key(g) for g in samples}) > 25  # the sampler explores
    for g in samples:
        space.check(g)
        child = space.mutate(g, rng)
        space.check(child)
        assert len(_genes_differ(g, child)) == 1  # exactly one gene changes
    smallest = space.smallest()
    lat_small = fake_latency(space.to_config(smallest))[0]
    assert all(fake_latency(space.to_config(g))[0] >= lat_small for g in samples)


def test_mnasnet_config_strings():
    from timm.models._efficientnet_builder import decode_arch_def

    space = get_space("mnasnet")
    g = space.smallest()
    g.update({"width": 1.0, "s0.depth": 3, "s0.kernel": 5, "s0.exp": 6, "s0.se": True, "s0.width": 1.25})
    cfg = space.to_config(g)
    assert cfg["family"] == "mobilenetv3" and cfg["format"] == "edgevision-net/1"
    assert cfg["arch"][1] == ["ir_r3_k5_s2_e6_c32_se0.25_nre"]  # 24 x 1.25 = 30 -> 32
    assert cfg["arch"][-1][0].startswith("cn_")
    blocks = decode_arch_def(cfg["arch"])
    assert len(blocks[1]) == 3 and blocks[1][0]["dw_kernel_size"] == 5 and blocks[1][0]["se_ratio"] == 0.25
    g["head"] = "efficientnet"
    cfg = space.to_config(g)
    assert cfg["family"] == "efficientnet" and not cfg["arch"][-1][0].startswith("cn_")


def test_emo_config_keys():
    space = get_space("emo")
    g = space.sample(random.Random(5))
    g.update({"s2.attn": True, "s2.depth": 4, "window": 4})
    cfg = space.to_config(g)
    assert cfg["family"] == "emo" and cfg["attn"][2] is True and cfg["window"] == 4
    assert all(d % h == 0 for d, h in zip(cfg["dims"], cfg["dim_head"]))
    m = build_network(cfg)
    assert len(m.stages[2]) == 4 and m.stages[2][1].attn and m.stages[2][1].window == 4


def test_bad_genotypes_and_space_names():
    space = get_space("emo")
    with pytest.raises(ValueError, match="unknown search space 'nope'"):
        get_space("nope")
    g = space.smallest()
    with pytest.raises(ValueError, match="s0.dim=17"):
        space.to_config(dict(g, **{"s0.dim": 17}))
    with pytest.raises(ValueError, match="missing genes"):
        space.to_config({"window": 7})
    with pytest.raises(TypeError, match="must be a dict"):
        space.to_config([1, 2])


# ----------------------------------------------------------------------------------- reward
def test_mnasnet_reward():
    assert mnasnet_reward(0.8, 10, 10) == pytest.approx(0.8)
    assert mnasnet_reward(0.8, 20, 10) == pytest.approx(0.8 * 2 ** -0.07)
    assert mnasnet_reward(0.8, 5, 10) == pytest.approx(0.8 * 0.5 ** -0.07)  # soft: faster gains a little
    assert mnasnet_reward(0.8, 5, 10, "hard") == pytest.approx(0.8)  # hard: no gain below T
    assert mnasnet_reward(0.8, 20, 10, "hard") == pytest.approx(0.4)  # ... and (LAT/T)^-1 above
    # MnasNet's calibration: twice the latency needs ~5% more accuracy to tie
    assert mnasnet_reward(0.8 * 2 ** 0.07, 20, 10) == pytest.approx(mnasnet_reward(0.8, 10, 10))
    for bad in (dict(latency_ms=0), dict(target_ms=-1), dict(acc=float("nan"))):
        kw = {"acc": 0.5, "latency_ms": 1.0, "target_ms": 1.0, **bad}
        with pytest.raises(ValueError):
            mnasnet_reward(**kw)
    with pytest.raises(ValueError, match="reward kind"):
        mnasnet_reward(0.5, 1, 1, "medium")


# -------------------------------------------------------------------------------- evolution
def _run(tmp_path, seed=0, budget=12, log="log.jsonl", acc=fake_accuracy, **kw):
    return run_search(get_space("mnasnet"), acc, fake_latency, target_ms=kw.pop("target", 4.0), budget=budget,
                      log_path=tmp_path / log, seed=seed, population=4, sample_size=2, **kw)


def _strip(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_search_reproducible_from_seed(tmp_path):
    a = _run(tmp_path, seed=7, log="a.jsonl")
    b = _run(tmp_path, seed=7, log="b.jsonl")
    c = _run(tmp_path, seed=8, log="c.jsonl")
    assert _strip(a) == _strip(b)
    assert [r["key"] for r in a] != [r["key"] for r in c]
    assert sum(r["status"] == "trained" for r in a) == 12
    assert len({r["key"] for r in a}) == len(a)  # distinct genotypes
    assert any(r["parent"] is not None for r in a)  # mutation happened after the initial population
    # evolution beats its own random initial population on reward
    trained = [r for r in a if r["status"] == "trained"]
    assert max(r["reward"] for r in trained[4:]) >= max(r["reward"] for r in trained[:4])


def test_search_resumes_after_interruption(tmp_path):
    full = _run(tmp_path, seed=3, log="full.jsonl")
    calls = []

    def flaky(cfg):
        if len(calls) == 5:
            raise KeyboardInterrupt  # as Ctrl-C in the middle of a candidate's training
        calls.append(cfg["name"])
        return fake_accuracy(cfg)

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, seed=3, log="cut.jsonl", acc=flaky)
    header, partial = read_log(tmp_path / "cut.jsonl")
    assert header["seed"] == 3 and sum(r["status"] == "trained" for r in partial) == 5
    again = []
    resumed = _run(tmp_path, seed=3, log="cut.jsonl", acc=lambda cfg: again.append(1) or fake_accuracy(cfg))
    assert _strip(resumed) == _strip(full)
    assert len(again) == 12 - 5  # only the candidates the log lacked were trained
    # a larger budget extends the same run
    more = _run(tmp_path, seed=3, log="cut.jsonl", budget=14)
    assert _strip(more[:len(full)]) == _strip(full) and sum(r["status"] == "trained" for r in more) == 14


def test_resume_with_other_settings_refused(tmp_path):
    _run(tmp_path, seed=1, budget=3)
    with pytest.raises(ValueError, match="other settings \\(seed: 1 there, 2 now\\)"):
        _run(tmp_path, seed=2, budget=3)
    (tmp_path / "junk.jsonl").write_text("hello\n")
    with pytest.raises(ValueError, match="not a search log"):
        _run(tmp_path, log="junk.jsonl", budget=3)


def test_too_slow_candidates_are_not_trained(tmp_path):
    trained = []
    recs = _run(tmp_path, budget=6, target=5.0, max_ratio=1.2,
                acc=lambda cfg: trained.append(cfg) or fake_accuracy(cfg))
    slow = [r for r in recs if r["status"] == "too_slow"]
    assert slow and all(r["latency_ms"] > 6.0 and r["acc"] is None for r in slow)
    assert all(fake_latency(c)[0] <= 6.0 for c in trained) and len(trained) == 6


def test_target_below_smallest_network():
    space = get_space("emo")
    smallest = fake_latency(space.to_config(space.smallest()))[0]
    assert check_target(space, fake_latency, smallest * 1.01) == pytest.approx(smallest)
    with pytest.raises(ValueError, match=r"below the smallest network of the 'emo' space .* raise --latency-ms"):
        check_target(space, fake_latency, smallest * 0.5)


def test_pareto_front_and_winner():
    recs = [dict(i=0, latency_ms=1.0, acc=0.5, reward=0.5), dict(i=1, latency_ms=2.0, acc=0.4, reward=0.4),
            dict(i=2, latency_ms=3.0, acc=0.7, reward=0.69), dict(i=3, latency_ms=2.5, acc=None)]
    assert [r["i"] for r in pareto_front(recs)] == [0, 2]
    # re-scored with the measured latency: #2 turns out far over the 2 ms target (hard reward)
    w = pick_winner(recs[:3], {0: 1.0, 1: 2.0, 2: 6.0}, target_ms=2.0, reward="hard")
    assert w["i"] == 0 and w["measured_ms"] == 1.0


def test_search_outputs_and_best_config_builds(tmp_path):
    from edgevision.search.run import search

    s = search("emo", 3.0, tmp_path / "out", budget=6, seed=0, population=3, sample_size=2,
               accuracy_fn=fake_accuracy, latency_fn=fake_latency,
               verify_fn=lambda cfgs: {i: fake_latency(c)[0] for i, c in cfgs.items()}, log=lambda *_: None)
    out = tmp_path / "out"
    for f in ("best.json", "search_log.jsonl", "summary.json", "pareto.png"):
        assert (out / f).stat().st_size > 0
    best = json.loads((out / "best.json").read_text())
    assert best["family"] == "emo" and s["trained"] == 6
    assert build_network(best).eval()(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    with pytest.raises(ValueError, match="below the smallest network"):
        search("emo", 0.1, tmp_path / "out2", accuracy_fn=fake_accuracy, latency_fn=fake_latency)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        search("emo", 3.0, tmp_path / "file" / "o", accuracy_fn=fake_accuracy, latency_fn=fake_latency)


# ------------------------------------------------------------------------------------ proxy
def _tiny_arrays(n_per_class=12):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), n_per_class)
    x = (rng.random((len(y), 20, 20)) * 60).astype(np.uint8)
    for c in range(3):  # a learnable signal: a bright bar whose place depends on the class
        x[y == c, 6 * c:6 * c + 4, :] = 250
    return dict(x_train=x, y_train=y, x_test=x[::2], y_test=y[::2], classes=["a", "b", "c"], source="tiny")


def test_proxy_trains_deterministically_and_splits():
    cfg = get_space("mnasnet").to_config(get_space("mnasnet").smallest())
    pc = ProxyConfig(img_size=16, epochs=3, batch_size=8, seed=0)
    p = Proxy(arrays=_tiny_arrays(), config=pc)
    assert p.sizes == {"fit": 30, "eval": 6}  # 20% of each class held out for the search
    a, b = p(cfg), p(cfg)
    assert 0.0 <= a["acc"] <= 1.0 and a["acc"] == b["acc"]
    final = Proxy(arrays=_tiny_arrays(), split="final", config=pc)
    assert final.sizes == {"fit": 36, "eval": 18}  # all training images; scored on the test split
    with pytest.raises(ValueError, match="split"):
        Proxy(arrays=_tiny_arrays(), split="test")
    with pytest.raises(ValueError, match="img_size"):
        Proxy(arrays=_tiny_arrays(), config=ProxyConfig(img_size=4))


def test_all_spaces_listed():
    assert set(SPACES) == {"mnasnet", "emo"}
    assert all(math.log10(s.size()) > 8 for s in SPACES.values())


def test_batched_generations_time_latency_together_and_resume(tmp_path):
    calls = []

    class Batched:
        def many(self, cfgs):
            calls.append(len(cfgs))
            return [fake_latency(c) for c in cfgs]

        def __call__(self, cfg):
            return self.many([cfg])[0]

    def go(log, acc=fake_accuracy):
        return run_search(get_space("emo"), acc, Batched(), target_ms=8.0, budget=10, log_path=tmp_path / log,
                          seed=2, population=4, sample_size=2, batch=4, oversample=2)

    a = go("a.jsonl")
    assert max(calls) > 1 and sum(r["status"] == "trained" for r in a) == 10
    n = []

    def flaky(cfg):
        if len(n) == 6:
            raise KeyboardInterrupt
        n.append(1)
        return fake_accuracy(cfg)

    with pytest.raises(KeyboardInterrupt):
        go("b.jsonl", flaky)
    assert _strip(go("b.jsonl")) == _strip(a)


def _image_folder(root):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 3)):
        for c in range(3):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for k in range(n):
                img = (rng.random((20, 20, 3)) * 60).astype(np.uint8)
                img[6 * c:6 * c + 4] = 250
                Image.fromarray(img).save(d / f"{k}.png")
    return root


def test_cli_search_end_to_end(tmp_path, monkeypatch, capsys):
    from edgevision.cli import main

    monkeypatch.setenv("EDGEVISION_TIMING_LOCK", "")  # a correctness run, not a timing benchmark
    data = _image_folder(tmp_path / "data")
    out = tmp_path / "out"
    args = ["search", "--space", "mnasnet", "--latency-ms", "1000", "--runtime", "eager", "--data", str(data),
            "--budget", "2", "--population", "2", "--epochs", "1", "--img-size", "16", "--latency-size", "32",
            "--finalists", "2", "-o", str(out)]
    assert main(args) == 0
    assert "best: top-1" in capsys.readouterr().out
    best = json.loads((out / "best.json").read_text())
    assert build_network(best).eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trained"] == 2 and summary["winner"]["measured_ms"] > 0
    assert main(args) == 0  # a rerun resumes from the log: nothing retrained, same winner
    assert json.loads((out / "summary.json").read_text())["winner"]["i"] == summary["winner"]["i"]
    # bad input: one line, exit 2
    with pytest.raises(SystemExit) as e:  # argparse: range error, exit 2
        main(["search", "--space", "emo", "--latency-ms", "0", "-o", str(out)])
    assert e.value.code == 2
    assert main(["search", "--space", "emo", "--latency-ms", "0.001", "--runtime", "eager", "--latency-size", "32",
                 "-o", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "below the smallest network of the 'emo' space" in err and err.count("\n") <= 2


def test_predicted_latency_from_a_table(tmp_path):
    from edgevision.latency import build_table
    from edgevision.search.timing import PredictedLatency

    space = get_space("mnasnet")
    cfg = space.to_config(space.smallest())
    build_table([cfg], "eager", tmp_path / "t.json", threads=1, sizes=(32,), progress=False, warmup=1, rounds=1,
                target_s=0.005, min_iters=1, max_iters=2)
    pred = PredictedLatency(tmp_path / "t.json", runtime="eager", size=32, threads=1)
    ms, source = pred(cfg)
    assert source == "predicted" and 0 < ms < 1000
    other = space.to_config(dict(space.smallest(), **{"s4.depth": 4, "s4.width": 1.25}))
    assert pred(other)[0] > 0  # shapes not in the table: the fitted per-kind model
