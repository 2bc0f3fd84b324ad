"""benchmarks/bench_distill.py: one tiny configuration measured on the CPU, its row and its results files."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_distill.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_distill", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_distill"] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench_distill", None)


ROW_KEYS = {
    "arch", "params", "batch", "batch_gpu", "micro_batches", "precision", "compile", "checkpointing", "channels_last",
    "sample_source", "device", "warmup", "iterations", "sec_per_iter_simcli", "sec_per_iter_minimal", "overhead_ratio",
    "overhead_ratio_paired_median", "overhead_ratio_best", "sec_per_kimg", "sec_per_kimg_minimal", "times_simcli",
    "times_minimal",
    "gpu_peak_gib_simcli", "gpu_peak_gib_minimal", "process_peak_rss_gib", "process_peak_rss_growth_gib",
    "loss_scaling", "simcli_parts_ms", "load1_before", "load1_after", "error",
}


def check_row(row: dict, batch: int) -> None:
    assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
    assert row["error"] is None
    assert row["sec_per_iter_simcli"] > 0 and row["sec_per_iter_minimal"] > 0
    assert len(row["times_simcli"]) == len(row["times_minimal"]) == row["iterations"]
    assert all(t > 0 for t in row["times_simcli"] + row["times_minimal"])
    assert math.isclose(row["overhead_ratio"], row["sec_per_iter_simcli"] / row["sec_per_iter_minimal"], rel_tol=1e-9)
    assert math.isclose(row["sec_per_kimg"], row["sec_per_iter_simcli"] * 1000 / batch, rel_tol=1e-9)
    assert math.isclose(row["sec_per_kimg_minimal"], row["sec_per_iter_minimal"] * 1000 / batch, rel_tol=1e-9)
    assert row["process_peak_rss_gib"] > 0
    assert row["gpu_peak_gib_simcli"] is None  # CPU run


def test_measure_tiny_cpu_row(bench):
    row = bench.measure("tiny", 4, iterations=2, warmup=1, device="cpu")
    check_row(row, 4)
    assert (row["arch"], row["batch"], row["batch_gpu"], row["micro_batches"]) == ("tiny", 4, 4, 1)
    assert (row["precision"], row["compile"], row["sample_source"]) == ("fp32", False, "fresh")
    assert row["params"] > 0


def test_main_writes_json_and_markdown(bench, tmp_path):
    out = tmp_path / "bench"
    doc = bench.main(["--arch", "tiny", "--batch", "4", "--batch-gpu", "2", "--iterations", "2", "--warmup", "1",
                      "--sample-source", "generator-step", "--breakdown", "--out", str(out)])
    written = json.loads((tmp_path / "bench.json").read_text())
    assert written["rows"] == json.loads(json.dumps(doc["rows"]))
    assert {"torch", "cpu", "threads", "gpu", "load1_start", "load1_end"} <= set(written["machine"])
    (row,) = written["rows"]
    check_row(row, 4)
    assert (row["batch_gpu"], row["micro_batches"], row["sample_source"]) == (2, 2, "generator-step")
    assert set(row["simcli_parts_ms"]) == {"streams", "finite_check", "ema", "ema_foreach_lerp", "mode_switches"}
    assert all(v >= 0 for v in row["simcli_parts_ms"].values())
    md = (tmp_path / "bench.md").read_text()
    assert "| tiny |" in md and "--sample-source generator-step" in md


def test_failing_configuration_is_a_row(bench):
    row = bench.measure_or_error(arch="tiny", batch=4, batch_gpu=3, iterations=1, warmup=0, device="cpu",
                                 precision="fp32", compile=False, checkpointing=False, channels_last=False,
                                 sample_source="fresh")
    assert row["error"].startswith("ValueError") and row["overhead_ratio"] is None
