"""`edgevision bench` end to end, its output files, and its one-line errors."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgevision.cli import main as cli_main
from edgevision.profiling.bench import COLUMNS, check_output_dir, run_bench
from edgevision.profiling.timing import measure_latency, torch_peak_memory

TINY = ["mobilenetv3_small_075", "--size", "64", "--warmup", "1", "--iters", "3", "--threads", "1",
        "--no-progress"]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "edgevision", "bench", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_bench_cli_writes_all_outputs(tmp_path):
    out = tmp_path / "res"
    proc = _cli(*TINY, "--runtime", "eager,onnxruntime", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("bench.csv", "bench.json", "bench.md", "bench.png"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader(open(out / "bench.csv")))
    assert list(rows[0]) == COLUMNS
    assert [r["runtime"] for r in rows] == ["eager", "onnxruntime"]
    for r in rows:
        assert float(r["median_ms"]) > 0 and float(r["p10_ms"]) <= float(r["p90_ms"])
        assert float(r["throughput"]) > 0 and int(r["params"]) > 1e6 and int(r["macs"]) > 1e6
        assert float(r["max_abs_diff"]) < 1e-3 and not r["error"]
    report = json.loads((out / "bench.json").read_text())
    assert report["machine"]["versions"]["torch"] and "load_average_1_5_15" in report["machine"]
    assert "load_average_before" in report["machine"]
    assert report["settings"]["threads"] == 1
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert "mobilenetv3_small_075" in proc.stdout and "bench.png" in proc.stdout
    assert float(rows[0]["speedup_vs_eager"]) == 1.0 and float(rows[1]["speedup_vs_eager"]) > 0
    md = (out / "bench.md").read_text()
    assert "| model | runtime | batch |" in md and "--runtime eager,onnxruntime" in md and "Threads: 1" in md


def test_progress_bar(capsys):
    run_bench(["mobilenetv3_small_075"], ["eager"], [1], size=64, threads=1, warmup=0, iters=2,
              output_dir=None, progress=True)
    err = capsys.readouterr().err
    assert "bench" in err and "100%" in err


@pytest.mark.slow  # a fresh interpreter imports torch: ~5 s on a busy 2-core machine
def test_bench_cli_unknown_model_subprocess(tmp_path):
    proc = _cli("mobilenetv3_larg_100", "--runtime", "eager", "--output", str(tmp_path / "o"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "unknown model" in lines[0] and "mobilenetv3_large_100" in lines[0]


@pytest.mark.parametrize("args, message", [
    (["mobilenetv3_small_075", "--runtime", "eager,tensorrt"], "unknown runtime 'tensorrt'"),
    (["mobilenetv3_small_075", "--batch", "one"], "argument --batch: 'one' is not an integer"),
    (["--runtime", "eager"], "no models given"),
    (["mobilenetv3_small_075", "--runtime", ","], "no runtimes given"),
    (["mobilenetv3_small_075", "--threads", "-1"], "--threads: -1 is out of range: must be an integer >= 1"),
    (["mobilenetv3_small_075", "--batch", "0"], "argument --batch: 0 is out of range: must be an integer in [1, 1024]"),
    (["mobilenetv3_small_075", "--iters", "0"], "--iters: 0 is out of range"),
    (["mobilenetv3_small_075", "--rounds", "0"], "--rounds: 0 is out of range"),
    (["mobilenetv3_small_075", "--runtime", "compile", "--compile-mode", "fastest"], "unknown compile mode 'fastest'"),
    (["mobilenetv3_small_075", "--runtime", "onnxruntime-int8", "--calibration", "/no/such/folder"],
     "calibration folder /no/such/folder is not a directory"),
    (["mobilenetv3_small_075", "--all"], "not both"),
    (["mobilenetv3_small_075", "mobilenetv3_larg_100"], "unknown model 'mobilenetv3_larg_100'"),
])
def test_bench_cli_bad_input(args, message, tmp_path, capsys):
    try:
        rc = cli_main(["bench", *args, "--output", str(tmp_path / "o")])
    except SystemExit as e:  # refused by argparse (option types): one line, exit 2
        rc = e.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "o" / "bench.csv").exists()


def test_bench_unwritable_output_fails_before_running(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    rc = cli_main(["bench", *TINY, "--output", str(blocker / "sub")])
    err = capsys.readouterr().err
    assert rc == 2 and "not writable" in err and len(err.strip().splitlines()) == 1
    rc = cli_main(["bench", *TINY, "--output", str(blocker)])
    assert rc == 2 and "not a directory" in capsys.readouterr().err


def test_bench_missing_package_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    rc = cli_main(["bench", *TINY, "--runtime", "eager,onnxruntime", "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "pip install 'edgevision[onnx]'" in err and len(err.strip().splitlines()) == 1


def test_run_bench_library_call():
    report = run_bench(["mobilenetv3_small_075"], ["eager", "fused"], [1, 2], size=64, threads=1,
                       warmup=1, iters=2, output_dir=None, progress=False)
    rows = report["results"]
    assert [(r["runtime"], r["batch"]) for r in rows] == [("eager", 1), ("fused", 1), ("eager", 2), ("fused", 2)]
    assert all(r["error"] is None and r["max_abs_diff"] < 1e-4 for r in rows)
    assert rows[2]["peak_mem_mb"] > rows[0]["peak_mem_mb"] > 0  # twice the batch, more activations
    # The latency change of each runtime (e.g. of BN folding) is reported against eager.
    assert rows[0]["speedup_vs_eager"] == 1.0 and rows[2]["speedup_vs_eager"] == 1.0
    for eager, fused in ((rows[0], rows[1]), (rows[2], rows[3])):
        assert fused["speedup_vs_eager"] == pytest.approx(eager["median_ms"] / fused["median_ms"])


def test_run_bench_int8_reports_agreement():
    report = run_bench(["mobilenetv3_small_075"], ["eager", "onnxruntime-int8"], [1], size=64, threads=1,
                       warmup=0, iters=1, output_dir=None, progress=False)
    eager, int8 = report["results"]
    assert int8["error"] is None and eager["top1_agreement"] is None
    assert 0.0 <= int8["top1_agreement"] <= 1.0 and int8["max_abs_diff"] is not None


def test_a_failing_runtime_keeps_the_others(monkeypatch):
    from edgevision.profiling import runtimes

    def boom(self, model, example):
        raise RuntimeError("compiler crashed\nlong details")

    monkeypatch.setattr(runtimes.Fused, "prepare", boom)
    rows = run_bench(["mobilenetv3_small_075"], ["eager", "fused"], [1], size=64, threads=1, warmup=0,
                     iters=2, output_dir=None, progress=False)["results"]
    assert rows[0]["error"] is None and rows[0]["median_ms"] > 0
    assert rows[1]["error"] == "RuntimeError: compiler crashed" and rows[1]["median_ms"] is None


def test_runtimes_are_timed_interleaved():
    from edgevision.profiling.timing import measure_interleaved

    calls = []
    fns = {k: (lambda t, k=k: calls.append(k)) for k in "ab"}
    stats = measure_interleaved(fns, torch.zeros(2, 1), warmup=1, iters=5, rounds=2)
    # warm-up of each, then chunks of 3 and 2 timed runs alternating between them
    assert "".join(calls) == "ab" + "aaabbb" + "aabb"
    assert set(stats) == {"a", "b"} and all(s["iters"] == 5 and s["throughput"] > 0 for s in stats.values())


def test_cli_all_means_every_registered_model(tmp_path, monkeypatch, capsys):
    import edgevision
    from edgevision.profiling import bench

    seen = {}

    def fake_run_bench(models, runtimes, batches, **kw):  # records what the CLI asked for
        seen.update(models=models, runtimes=runtimes, batches=batches, **kw)
        return dict(settings=dict(size=kw["size"], threads=kw["threads"]),
                    machine=dict(load_average_1_5_15=None), results=[],
                    files={k: f"bench.{k}" for k in ("csv", "json", "md", "png")})

    monkeypatch.setattr(bench, "run_bench", fake_run_bench)
    rc = cli_main(["bench", "--all", "--runtime", "eager,onnxruntime", "--batch", "1,32", "--size", "96",
                   "--threads", "2", "--warmup", "4", "--iters", "7", "--output", str(tmp_path)])
    assert rc == 0 and "bench.png" in capsys.readouterr().out
    assert seen["models"] == edgevision.list_models() and seen["runtimes"] == ["eager", "onnxruntime"]
    assert seen["batches"] == [1, 32]
    assert (seen["size"], seen["threads"], seen["warmup"], seen["iters"]) == (96, 2, 4, 7)
    assert seen["output_dir"] == str(tmp_path) and seen["progress"] is True


def test_latency_stats_and_memory():
    x = torch.randn(4, 8)
    stats = measure_latency(lambda t: t @ t.T, x, warmup=1, iters=9)
    assert stats["p10_ms"] <= stats["median_ms"] <= stats["p90_ms"]
    assert stats["throughput"] == pytest.approx(4 / (stats["median_ms"] / 1e3))
    # A forward holding two 1 MiB temporaries at once peaks at >= 2 MiB of live tensors.
    peak = torch_peak_memory(lambda t: (t + 1) * (t + 2), torch.zeros(256, 1024))
    assert peak >= 2 * 2**20
    with pytest.raises(ValueError, match="iters"):
        measure_latency(lambda t: t, x, iters=0)


def test_check_output_dir_creates(tmp_path):
    assert check_output_dir(tmp_path / "a" / "b").is_dir()


def test_bench_takes_a_net_config_file(tmp_path, capsys):
    """A search result or a recovered architecture (a net config) is benchmarked by its path,
    with the same counts as the registry network it was saved from."""
    import edgevision.models.netconfig as netconfig

    cfg = Path(netconfig.__file__).with_name("configs") / "searched_mnasnet_t1.json"
    report = run_bench([str(cfg)], ["eager"], [1], size=64, threads=1, warmup=1, iters=2, output_dir=None,
                       progress=False)
    row, = report["results"]
    import edgevision as ev

    assert row["error"] is None and row["model"] == str(cfg)
    assert row["params"] == sum(p.numel() for p in ev.create_model("searched_mnasnet_t1").parameters())
    rc = cli_main(["bench", str(tmp_path / "missing.json"), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "missing.json" in err[0], err
