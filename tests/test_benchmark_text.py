"""The language-model benchmark script runs end to end on the tiny Llama (no timing assertions):
every method runs, lrpfx and the gradient frame give one explanation, the JSON is written."""

from __future__ import annotations

import json
import math
import sys

import pytest

from tests import examples

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def bench():
    examples.load("benchmark")  # benchmark_text imports it (examples/ is on a script's path)
    yield examples.load("benchmark_text")
    del sys.modules["benchmark_text"], sys.modules["benchmark"]


def test_benchmark_text_runs_on_a_tiny_llama(bench, tmp_path):
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    methods = ["forward", "gradient", "gradient-frame", "lrpfx"]
    bench.main(["--size", "tiny", "--lengths", "16", "--batch", "1", "2", "--repeats", "2",
                "--threads", "1", "--methods", *methods, "--no-memory", "--json", str(out),
                "--markdown", str(md)])
    payload = json.loads(out.read_text())
    assert payload["model"]["hidden_size"] == bench.SIZES["tiny"]["hidden_size"]
    results = {(r["batch"], r["method"]): r for r in payload["results"]}
    assert set(results) == {(b, m) for b in (1, 2) for m in methods}
    for key, r in results.items():
        assert r["error"] is None, (key, r["error"])
        assert r["length"] == 16 and len(r["times"]) == 2 and r["median_s"] > 0
    for batch in (1, 2):  # float32, ε → 0 on both sides
        assert results[(batch, "gradient-frame")]["delta"] < 1e-5
        assert results[(batch, "lrpfx")]["setup_s"] > 0  # its compile time, reported apart
    text = md.read_text()
    assert "| tiny | 16 | 2 | lrpfx |" in text and "targets (issue 14" in text


def test_benchmark_text_memory_child(bench):
    """The peak memory of one explanation, in a fresh process bounded by a budget."""
    case = bench.TextCase("tiny", 16, 1, "cpu")
    peak = examples.load("benchmark").measure_memory(case, "lrpfx", 1, bench.__file__,
                                                     limit_mib=4096)
    assert math.isfinite(peak) and peak >= 0


def test_a_case_over_the_budget_is_skipped(bench, tmp_path):
    out = tmp_path / "bench.json"
    bench.main(["--size", "tiny", "--lengths", "16", "--batch", "1", "--repeats", "1",
                "--methods", "forward", "gradient-frame", "--memory-budget", "0",
                "--json", str(out)])
    results = json.loads(out.read_text())["results"]
    assert [r["method"] for r in results] == ["forward", "gradient-frame"]
    assert all(r["error"].startswith("skipped: needs ~") and not r["times"] for r in results)


@pytest.mark.slow
def test_compiled_lrpfx_on_a_llama_equals_eager(bench):
    """``torch_compile=True`` on the exported Llama program (inductor: about a minute)."""
    case = bench.TextCase("tiny", 16, 1, "cpu")
    results = examples.load("benchmark").time_case(case, ["lrpfx", "lrpfx-compiled"], 0, 1,
                                                   lambda: None)
    assert results["lrpfx-compiled"].error is None, results["lrpfx-compiled"].error
    assert results["lrpfx-compiled"].delta < 1e-5
