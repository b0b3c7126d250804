"""Randomized DAGs (hypothesis): conv/linear, BatchNorm, activations, residual adds, cat, gates,
pools and reshapes wired at random; each compiles, reproduces the model's output, and agrees
with the independent reference (``tests/reference.py``).

Every tensor in the DAG is ``(N, 4, 5, 5)``: an op reads one or two earlier tensors (chosen by
hypothesis) and writes a new one; a cat is brought back to 4 channels by a 1×1 conv. The head
is average pooling, flatten and a linear layer. 25 examples by default (CI budget); run more
with ``LRPFX_RANDOM_GRAPHS=500``.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lrpfx
from lrpfx import composites
from tests.reference import Reference, preset

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

EXAMPLES = int(os.environ.get("LRPFX_RANDOM_GRAPHS", "25"))  # more: LRPFX_RANDOM_GRAPHS=500
C = 4
OPS = ("conv", "conv-bn", "add", "cat", "gate", "avgpool", "maxpool", "bn", "relu", "silu",
       "reshape", "permute", "mean-broadcast")


class RandomNet(nn.Module):
    """A DAG given by ``plan``: a list of ``(op, i, j)``, reading tensors ``i`` and ``j``."""

    def __init__(self, plan: list[tuple[str, int, int]]) -> None:
        super().__init__()
        self.plan = plan
        self.stem = nn.Conv2d(3, C, 3, padding=1)
        self.layers = nn.ModuleList(self._layer(op) for op, _, _ in plan)
        self.fc = nn.Linear(C, 3)

    @staticmethod
    def _layer(op: str) -> nn.Module:
        if op == "conv":
            return nn.Sequential(nn.Conv2d(C, C, 3, padding=1), nn.ReLU())
        if op == "conv-bn":
            return nn.Sequential(nn.Conv2d(C, C, 1, bias=False), nn.BatchNorm2d(C))
        if op == "cat":
            return nn.Conv2d(2 * C, C, 1)
        if op == "gate":
            return nn.Conv2d(C, C, 1)
        if op == "bn":
            return nn.BatchNorm2d(C)
        if op == "maxpool":
            return nn.MaxPool2d(3, 1, 1)
        return nn.Identity()

    def forward(self, x):
        values = [torch.relu(self.stem(x))]
        for (op, i, j), layer in zip(self.plan, self.layers, strict=True):
            a, b = values[i % len(values)], values[j % len(values)]
            if op in ("conv", "conv-bn", "bn", "maxpool"):
                y = layer(a)
            elif op == "add":
                y = a + b
            elif op == "cat":
                y = layer(torch.cat([a, b], 1))
            elif op == "gate":
                y = a * torch.sigmoid(layer(b))
            elif op == "avgpool":
                y = F.avg_pool2d(a, 3, 1, 1)
            elif op == "relu":
                y = torch.relu(a)
            elif op == "silu":
                y = F.silu(a)
            elif op == "reshape":
                y = a.view(a.shape[0], 2, 2, 25).reshape(a.shape[0], C, 5, 5)
            elif op == "permute":
                y = a.permute(0, 1, 3, 2)
            else:  # mean-broadcast: a per-channel mean added back (a broadcast add)
                y = a + b.mean((2, 3), keepdim=True)
            values.append(y)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(values[-1], 1), 1))


def _randomize(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    return model.eval()


PRESETS = {
    "epsilon": lambda: composites.EpsilonOnly(),
    "epsilon-plus-flat": lambda: composites.EpsilonPlusFlat(),
    "epsilon-gamma-box": lambda: composites.EpsilonGammaBox(-3.0, 3.0),
}
plans = st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 20), st.integers(0, 20)),
                 min_size=1, max_size=7)


pytestmark = pytest.mark.usefixtures("one_thread")


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=plans, preset_name=st.sampled_from(list(PRESETS)), seed=st.integers(0, 2**16))
def test_random_dag_agrees_with_the_reference(plan, preset_name, seed):
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(seed)
    model = _randomize(RandomNet(plan))
    x = torch.randn(2, 3, 5, 5)
    out = lrpfx.compile(model, PRESETS[preset_name](), maxpool="wta")(x)
    with torch.no_grad():
        torch.testing.assert_close(out.output, model(x), rtol=1e-10, atol=1e-12)
    target = out.output.argmax(1)
    R = torch.zeros_like(out.output)
    R[torch.arange(2), target] = out.output[torch.arange(2), target]
    expected = Reference(model, preset(preset_name))(x, R)
    scale = expected.abs().max().clamp(min=1e-300)
    delta = (out.relevance - expected).abs().max()
    assert delta <= 1e-9 * scale, f"{plan}: max |Δ| = {delta:.3g}, max |R| = {scale:.3g}"
