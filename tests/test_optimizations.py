"""The speed work changes no result: in-place elementwise work, known signs, the flat shortcut,
max-pool routing from the input's shape. Each is compared with the program without it."""

from __future__ import annotations

import operator

import pytest
import torch
from torch import fx, nn

import lrpfx
from lrpfx import composites, program
from lrpfx.builder import like as state_like
from lrpfx.ops import shortcuts

PRESETS = {
    "epsilon-plus-flat": composites.EpsilonPlusFlat,
    "epsilon-plus": composites.EpsilonPlus,
    "epsilon-alpha2-beta1": composites.EpsilonAlpha2Beta1,
    "epsilon-gamma-box": lambda: composites.EpsilonGammaBox(-3.0, 3.0),
}


class Net(nn.Module):
    """Conv/BN/ReLU, a max-pool, a residual add, an average pool and two dense layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=2, dilation=2)
        self.conv3 = nn.Conv2d(6, 8, 3, stride=2)
        self.avg = nn.AdaptiveAvgPool2d(2)
        self.fc1 = nn.Linear(32, 12)
        self.fc2 = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(torch.relu(self.bn1(self.conv1(x))))
        h = torch.relu(h + self.conv2(h))
        h = torch.relu(self.conv3(h))
        return self.fc2(torch.relu(self.fc1(torch.flatten(self.avg(h), 1))))


@pytest.fixture(scope="module")
def net_and_input():
    torch.manual_seed(3)
    model = Net().double()
    with torch.no_grad():
        model.bn1.running_mean.normal_(0, 0.3)
        model.bn1.running_var.uniform_(0.5, 2.0)
    return model.eval(), torch.randn(3, 3, 13, 13, dtype=torch.float64)


def _explain(model, x, preset, maxpool):
    return lrpfx.compile(model, PRESETS[preset](), maxpool=maxpool)(x).relevance


@pytest.mark.parametrize("maxpool", ["avg", "wta"])
@pytest.mark.parametrize("preset", list(PRESETS))
def test_in_place_and_known_signs_change_no_bit(net_and_input, preset, maxpool, monkeypatch):
    model, x = net_and_input
    fast = _explain(model, x, preset, maxpool)
    monkeypatch.setattr(lrpfx.compiler, "PROGRAM_PASSES", (program.channels_last,))
    monkeypatch.setattr(shortcuts, "nonnegative", lambda *args: False)
    plain = _explain(model, x, preset, maxpool)
    assert torch.equal(fast, plain)


@pytest.mark.parametrize("shape", [(2, 3, 9, 9), (2, 3, 7)])
def test_flat_shortcut_equals_the_full_convolution(shape, monkeypatch):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1) if len(shape) == 4 else nn.Conv1d(3, 5, 3, 2, 2)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.LazyLinear(4)).double()
    x = torch.randn(*shape, dtype=torch.float64)
    model(x)
    explainer = lrpfx.compile(model.eval(), "epsilon-plus-flat")
    assert "channel_sum" in explainer.code
    fast = explainer(x).relevance
    monkeypatch.setattr(shortcuts, "flat_convolution", lambda *args: False)
    full = lrpfx.compile(model, "epsilon-plus-flat")(x).relevance
    torch.testing.assert_close(fast, full, rtol=1e-12, atol=1e-14)


def test_inputs_and_recorded_relevances_are_not_overwritten(net_and_input):
    model, x = net_and_input
    given = torch.randn(3, 5, dtype=torch.float64)
    x0, given0 = x.clone(), given.clone()
    explainer = lrpfx.compile(model, "epsilon-plus", record=True)
    out = explainer(x, output_relevance=given)
    assert torch.equal(x, x0) and torch.equal(given, given0)
    # a recorded relevance is an output: nothing downstream may have written into it
    again = lrpfx.compile(model, "epsilon-plus", record=True)(x, output_relevance=given)
    for name, value in out.layers.items():
        assert torch.equal(value, again.layers[name]), name
    assert torch.equal(out.layers["fc2"], given)


def test_winner_takes_all_keeps_the_shape_not_the_pool_input():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.LazyLinear(2)).double()
    model(torch.randn(1, 3, 8, 8, dtype=torch.float64))
    program = lrpfx.compile(model.eval(), "epsilon-plus", maxpool="wta").program
    relu = next(n for n in program.graph.nodes if str(n.target) in ("relu_", "relu"))
    # the ReLU output is read by the max-pool and its size only, both in the forward
    assert {getattr(u.target, "__name__", u.target) for u in relu.users} == {
        "max_pool2d_with_indices", "size"}


def _program(like=None):
    """``t = conv(x, w); t * y`` with ``y`` a constant that broadcasts ``t`` to a larger shape."""
    g = fx.Graph()
    x, w, y = g.placeholder("x"), g.get_attr("w"), g.get_attr("y")
    t = g.call_function(torch.conv2d, (x, w))
    out = g.call_function(operator.mul, (t, y))
    if like is not None:
        state_like(out, *like)
    g.output(out)
    root = nn.Module()
    root.register_buffer("w", torch.ones(1, 1, 3, 3))
    root.register_buffer("y", torch.arange(3.0).reshape(3, 1, 1, 1))
    return g, out, root


def _inplace(g, root=None):
    """The in-place program pass on the program made of ``g`` (rewrites ``g``'s nodes)."""
    return program.inplace(fx.GraphModule(root or nn.Module(), g))


def test_in_place_checks_unknown_shapes_when_the_program_runs():
    g, out, root = _program()
    _inplace(g, root)
    assert out.target.__name__ == "mul_into"  # no stated shape: checked at run time
    x = torch.randn(1, 1, 4, 4)
    expected = torch.conv2d(x, root.w) * root.y  # (3, 1, 2, 2): larger than t
    torch.testing.assert_close(fx.GraphModule(root, g)(x), expected)
    g, out, root = _program(like=(0,))
    _inplace(g, root)
    assert out.target == "mul_"


def test_in_place_leaves_shared_values_and_inputs_alone():
    g = fx.Graph()
    x = g.placeholder("x")
    y = g.call_function(torch.relu, (x,))  # the input: never written
    t = g.call_function(operator.mul, (y, 2.0))
    u = g.call_function(operator.add, (t, 1.0))  # t is returned: never written
    v = g.call_function(operator.sub, (u, 3.0))  # u is read by v alone: written in place
    view = g.call_method("reshape", (v, -1))
    w = g.call_function(operator.neg, (v,))  # a view of v is read later: v is not written
    g.output((view, w, t))
    _inplace(g)
    assert [n.target for n in (y, t, u, v, w)] == [torch.relu, "mul_", operator.add, "sub_",
                                                   operator.neg]


def test_the_last_reader_writes_when_earlier_readers_made_new_tensors():
    g = fx.Graph()
    x = g.placeholder("x")
    t = g.call_function(torch.relu, (x,))
    a = g.call_function(operator.mul, (t, 2.0))  # reads t, makes a new tensor
    b = g.call_function(operator.add, (t, 1.0))  # the last reader of t
    g.output((a, b))
    _inplace(g)
    assert (a.target, b.target) == (operator.mul, "add_")
    value = torch.randn(5)
    out = fx.GraphModule(nn.Module(), g)(value)
    torch.testing.assert_close(out, (value.relu() * 2, value.relu() + 1))


@pytest.mark.parametrize("preset", list(PRESETS))
def test_channels_last_changes_strides_not_results(net_and_input, preset, monkeypatch):
    """The program keeps its 4-d constants and the input channels-last (oneDNN's layout) and
    returns the relevance in the usual layout; the values are the plain layout's (rounding)."""
    model, x = net_and_input
    explainer = lrpfx.compile(model, PRESETS[preset](), record=True)
    kernels = [b for b in explainer.program.buffers() if b.dim() == 4]
    assert kernels and all(b.is_contiguous(memory_format=torch.channels_last) for b in kernels)
    out = explainer(x)
    assert out.relevance.is_contiguous() and x.is_contiguous()
    monkeypatch.setattr(lrpfx.compiler, "PROGRAM_PASSES", (program.inplace,))
    plain = lrpfx.compile(model, PRESETS[preset](), record=True)(x)
    torch.testing.assert_close(out.output, plain.output, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out.relevance, plain.relevance, rtol=1e-10, atol=1e-14)
    for name, value in plain.layers.items():
        torch.testing.assert_close(out.layers[name], value, rtol=1e-10, atol=1e-14)


def test_no_channels_last_without_2d_convolutions():
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 5, 2))
    program = lrpfx.compile(model.eval(), "epsilon-plus").program
    assert "channels_last" not in program.code
