"""The benchmark script runs end to end (no timing assertions), and compiled equals eager."""

from __future__ import annotations

import copy
import json
import math
import sys

import pytest
import torch
from torch import nn

import lrpfx
from tests import examples

pytest.importorskip("zennit")
pytest.importorskip("captum")



@pytest.fixture(scope="module")
def benchmark():
    yield examples.load("benchmark")
    del sys.modules["benchmark"]


def test_benchmark_runs_on_a_tiny_model(benchmark, tmp_path):
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    benchmark.main(["--model", "tiny", "--batch", "2", "--size", "16", "--repeats", "2",
                    "--methods", "forward", "gradient", "lrpfx", "zennit", "captum",
                    "--no-memory", "--json", str(out), "--markdown", str(md)])
    payload = json.loads(out.read_text())
    results = {r["method"]: r for r in payload["results"]}
    assert set(results) == {"forward", "gradient", "lrpfx", "zennit", "captum"}
    for method, r in results.items():
        assert r["error"] is None, (method, r["error"])
        assert len(r["times"]) == 2 and r["median_s"] > 0
    assert results["zennit"]["delta"] < 1e-6  # the same explanation as Zennit's
    assert payload["machine"]["threads"] == 2
    assert "| tiny | 2 | lrpfx |" in md.read_text()


def test_benchmark_memory_child(benchmark):
    """The peak memory of one explanation, measured in a fresh process."""
    case = benchmark.Case("tiny", 2, 16, "cpu", "epsilon-plus-flat")
    peak = benchmark.measure_memory(case, "lrpfx", threads=1)
    assert math.isfinite(peak) and peak >= 0


def test_a_failing_peer_is_reported_not_fatal(benchmark):
    case = benchmark.Case("tiny", 1, 16, "cpu", "epsilon-plus")
    results = benchmark.time_case(case, ["lrpfx", "captum"], 0, 1, lambda: None)
    assert results["lrpfx"].error is None and len(results["lrpfx"].times) == 1
    assert "epsilon-plus-flat" in results["captum"].error


def test_compiled_equals_eager():
    """``torch_compile=True`` (inductor on CPU) gives the eager program's result, float32."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3),
        nn.ReLU(), nn.Flatten(), nn.Linear(4 * 2 * 2, 3),
    ).float().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float32)
    eager = lrpfx.compile(model, "epsilon-plus-flat")(x)
    compiled = lrpfx.compile(model, "epsilon-plus-flat", torch_compile=True)(x)
    torch.testing.assert_close(compiled.output, eager.output, rtol=1e-4, atol=1e-6)
    scale = eager.relevance.abs().max()
    torch.testing.assert_close(compiled.relevance, eager.relevance, rtol=1e-4,
                               atol=1e-6 * float(scale))


def test_compiled_explainer_follows_new_tensors():
    """The compiled program folds its tensors in as constants (inductor freezing): loading
    another model's tensors, ``.double()`` and ``deepcopy`` give that model's result, and the
    state dict has the same keys as the eager explainer's."""
    torch.manual_seed(0)
    first, second = (nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(),
                                   nn.Linear(4 * 6 * 6, 3)).eval() for _ in range(2))
    x = torch.randn(2, 3, 8, 8)
    compiled = lrpfx.compile(first, "epsilon-plus", torch_compile=True)
    eager = lrpfx.compile(second, "epsilon-plus")
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    compiled(x)
    compiled.load_state_dict(eager.state_dict())
    torch.testing.assert_close(compiled(x).relevance, eager(x).relevance, rtol=1e-4, atol=1e-6)
    twin = copy.deepcopy(compiled).double()
    torch.testing.assert_close(twin(x.double()).relevance, eager.double()(x.double()).relevance)
