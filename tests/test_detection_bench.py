"""`edgevision bench` on a detector: timed on export_forward at the model's own input size.

A functional check (one timed run, eager only), not a speed measurement."""

import pytest

from edgevision.profiling.bench import run_bench


def test_bench_detector_at_its_own_size():
    report = run_bench(["ssdlite_mobilenetv3_small_075"], runtimes=("eager",), warmup=0, iters=1, rounds=1,
                       output_dir=None, progress=False, threads=1)
    (row,) = report["results"]
    assert row["size"] == "320x320" and not row.get("error")
    assert row["median_ms"] > 0 and row["macs"] > 1e8  # backbone + neck + heads at 320


@pytest.mark.slow
def test_bench_detector_onnxruntime_matches_eager():
    report = run_bench(["ssdlite_mobilenetv3_small_075"], runtimes=("eager", "onnxruntime"), warmup=0, iters=1,
                       rounds=1, output_dir=None, progress=False, threads=1)
    for row in report["results"]:
        assert not row.get("error"), row.get("error")
        assert row["max_abs_diff"] < 1e-4
