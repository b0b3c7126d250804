"""Every any-graph op, in every spelling, against the independent per-node reference (float64).

Each case is a tiny network ``conv → ReLU → <op> → flatten → linear`` whose middle is written
the way models write it (``x + y``, ``torch.cat``, ``x.chunk``, ``F.layer_norm``...). The
explanation must equal ``tests/reference.py`` (fx Interpreter + dense Jacobians) within 1e-10,
and the explainer's output must be the model's.
"""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lrpfx
from lrpfx import composites, rules
from lrpfx.composites import Kind
from tests.reference import Reference, preset

torchvision = pytest.importorskip("torchvision")


pytestmark = pytest.mark.usefixtures("one_thread")


class Case(nn.Module):
    """``conv → ReLU → body → flatten → linear``; ``body(self, h)`` is the op under test."""

    def __init__(self, body, channels: int = 6) -> None:
        super().__init__()
        self.body = body
        self.c1 = nn.Conv2d(3, channels, 3, padding=1)
        self.c2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.c3 = nn.Conv2d(channels, channels, 1)
        self.se = nn.Conv2d(channels, channels, 1)
        self.norm = nn.LayerNorm(channels)
        self.scale = nn.Parameter(torch.rand(channels, 1, 1) + 0.5)
        self.gate, self.silu, self.hardswish = nn.Sigmoid(), nn.SiLU(), nn.Hardswish()
        self.gelu = nn.GELU(approximate="tanh")
        self.drop_path = torchvision.ops.StochasticDepth(0.3, "row")
        with torch.no_grad():
            width = self.features(torch.zeros(1, 3, 6, 6)).numel()
        self.fc = nn.Linear(width, 4)

    def features(self, x):
        return self.body(self, torch.relu(self.c1(x)))

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


def _inplace_add(m, h):
    y = m.c2(h)
    y += h
    return y


def _inplace_method(m, h):
    y = m.c2(h)
    y.add_(h)
    return y.relu_()


def _layer_norm_2d(m, h):  # torchvision's LayerNorm2d: permute, normalize channels, permute back
    return F.layer_norm(h.permute(0, 2, 3, 1), (6,), m.norm.weight, m.norm.bias,
                        1e-6).permute(0, 3, 1, 2)


BODIES = {
    # n-ary: sums, differences, constants (biases)
    "add": lambda m, h: h + m.c2(h),
    "torch.add": lambda m, h: torch.add(m.c2(h), h),
    "add-method": lambda m, h: m.c2(h).add(h),
    "iadd": _inplace_add,
    "add_-method": _inplace_method,
    "sub": lambda m, h: m.c2(h) - m.c3(h),
    "torch.sub": lambda m, h: torch.sub(h, m.c3(h)),
    "add-three": lambda m, h: h + m.c2(h) + m.c3(h),
    "add-constant": lambda m, h: m.c2(h) + 0.5,
    "add-parameter": lambda m, h: m.c2(h) + m.scale,
    "add-broadcast": lambda m, h: m.c2(h) + h.mean((2, 3), keepdim=True),
    "stack-sum": lambda m, h: torch.stack([h, m.c2(h)], dim=-1).sum(-1),
    # products: scales and gates
    "mul-constant": lambda m, h: m.c2(h) * 0.5,
    "layer-scale": lambda m, h: m.scale * m.c2(h),
    "div-constant": lambda m, h: m.c2(h) / 3.0,
    "se-sigmoid": lambda m, h: h * torch.sigmoid(m.se(h.mean((2, 3), keepdim=True))),
    "se-module": lambda m, h: m.gate(m.se(F.adaptive_avg_pool2d(h, 1))) * h,
    "se-hardsigmoid": lambda m, h: torch.mul(h, F.hardsigmoid(m.se(h.mean((2, 3), True)))),
    "se-expand-as": lambda m, h: h * m.se(h.mean((2, 3), True)).sigmoid().expand_as(h),
    "silu-written": lambda m, h: m.c2(h) * torch.sigmoid(m.c2(h)),
    "gate-softmax": lambda m, h: h * F.softmax(m.se(h), dim=1),
    # routing
    "cat": lambda m, h: torch.cat([h, m.c2(h)], 1),
    "cat-dim-kw": lambda m, h: torch.cat((m.c3(h), h), dim=1),
    "concat": lambda m, h: torch.concat([h, h * 2.0], dim=-1),
    "cat-three": lambda m, h: torch.cat([h, m.c2(h), h], 2),
    "stack": lambda m, h: torch.stack([h, m.c2(h)], 1),
    "getitem-slice": lambda m, h: m.c2(h)[:, 1:4, ::2],
    "getitem-int": lambda m, h: m.c2(h)[:, 2],
    "getitem-ellipsis": lambda m, h: h[..., 1:, None],
    "getitem-advanced": lambda m, h: h[:, [0, 2, 2, 5]],
    "chunk": lambda m, h: torch.cat([m.c2(h).chunk(2, dim=1)[1], m.c2(h).chunk(2, 1)[0]], 1),
    "torch.chunk": lambda m, h: torch.chunk(h, 3, 1)[1] + torch.chunk(h, 3, 1)[2],
    "split": lambda m, h: h.split([2, 4], dim=1)[1],
    "torch.split": lambda m, h: torch.split(m.c2(h), 2, 1)[0],
    "unbind": lambda m, h: torch.stack([h.unbind(1)[4], torch.unbind(m.c2(h), 1)[0]], 1),
    "permute": lambda m, h: h.permute(0, 2, 3, 1),
    "torch.permute": lambda m, h: torch.permute(h, (0, 3, 1, 2)),
    "transpose": lambda m, h: h.transpose(1, 3),
    "swapaxes": lambda m, h: torch.swapaxes(h, 2, 3),
    "unsqueeze-squeeze": lambda m, h: h.unsqueeze(2).squeeze(2).unsqueeze(-1),
    "expand": lambda m, h: h.mean(1, keepdim=True).expand(-1, 3, -1, -1),
    "view-reshape": lambda m, h: h.view(h.size(0), 2, 3, -1).reshape(h.shape[0], -1),
    "channel-shuffle": lambda m, h: h.view(h.size(0), 2, h.size(1) // 2, 6, 6)
    .transpose(1, 2).contiguous().view(h.size(0), -1, 6, 6),
    "narrow-select": lambda m, h: torch.narrow(h, 1, 1, 3).select(2, 4),
    "pad": lambda m, h: m.c3(F.pad(h, (1, 1, 0, 2))),
    # reductions and pools
    "mean": lambda m, h: m.c2(h).mean((2, 3)),
    "torch.mean-keepdim": lambda m, h: torch.mean(m.c2(h), dim=(2, 3), keepdim=True),
    "sum": lambda m, h: m.c2(h).sum(-1),
    "avg-pool-fn": lambda m, h: F.avg_pool2d(m.c2(h), kernel_size=3, stride=1, padding=1),
    # activations in their spellings
    "relu6": lambda m, h: F.relu6(m.c2(h)),
    "silu": lambda m, h: m.silu(m.c2(h)) + F.silu(m.c3(h)),
    "gelu": lambda m, h: F.gelu(m.c2(h)) + m.gelu(m.c3(h)),
    "hardswish": lambda m, h: m.hardswish(m.c2(h)) + F.hardswish(m.c3(h)),
    "tanh-sigmoid": lambda m, h: torch.tanh(m.c2(h)) + m.c3(h).sigmoid(),
    "stochastic-depth": lambda m, h: h + m.drop_path(m.c2(h)),
    "stochastic-depth-fn": lambda m, h: torchvision.ops.stochastic_depth(m.c2(h), 0.5, "batch",
                                                                        False) + h,
    # normalization
    "layer-norm-module": lambda m, h: m.norm(m.c2(h).permute(0, 2, 3, 1)),
    "layer-norm-2d": _layer_norm_2d,
    # one module, several call sites
    "reused-conv": lambda m, h: m.c2(torch.relu(m.c2(h))) + m.c2(h),
}
PRESETS = {
    "epsilon": lambda: composites.EpsilonOnly(),
    "epsilon-gamma-box": lambda: composites.EpsilonGammaBox(-3.0, 3.0),
}


# the reference re-runs nodes on autograd inputs: in-place spellings get an out-of-place twin
TWINS = {
    "iadd": lambda m, h: m.c2(h) + h,
    "add_-method": lambda m, h: torch.relu(m.c2(h) + h),
}


@pytest.mark.parametrize("preset_name", list(PRESETS))
@pytest.mark.parametrize("case", list(BODIES))
def test_op_matches_reference(case, preset_name):
    torch.manual_seed(3)
    model = Case(BODIES[case]).eval()
    x = torch.randn(2, 3, 6, 6)
    target = torch.tensor([1, 2])
    out = lrpfx.compile(model, PRESETS[preset_name](), maxpool="wta")(x, target)
    with torch.no_grad():
        torch.testing.assert_close(out.output, model(x), rtol=1e-12, atol=1e-12)
    R = torch.zeros_like(out.output)
    R[torch.arange(2), target] = out.output[torch.arange(2), target]
    if case in TWINS:
        twin = Case(TWINS[case]).eval()
        twin.load_state_dict(model.state_dict())
        model = twin
    expected = Reference(model, preset(preset_name))(x, R)
    scale = expected.abs().max()
    assert scale > 0
    delta = (out.relevance - expected).abs().max()
    assert delta <= 1e-10 * scale, f"max |Δ| = {delta:.3g}, max |R| = {scale:.3g}"


def _targets(model):
    explainer = lrpfx.compile(model, "epsilon-plus")
    return [n.target for n in explainer.graph_module.graph.nodes if n.op == "call_function"]


@pytest.mark.parametrize(("case", "canonical"), [
    ("add", operator.add), ("torch.add", operator.add), ("add-method", operator.add),
    ("iadd", operator.add), ("add_-method", operator.add), ("torch.sub", operator.sub),
    ("concat", torch.cat), ("chunk", torch.chunk), ("swapaxes", torch.transpose),
    ("expand", torch.broadcast_to), ("torch.mean-keepdim", torch.mean),
    ("layer-norm-module", F.layer_norm), ("se-module", torch.sigmoid),
])
def test_every_spelling_becomes_one_canonical_call(case, canonical):
    assert canonical in _targets(Case(BODIES[case]).eval())


@pytest.mark.parametrize("case", ["stochastic-depth", "stochastic-depth-fn"])
def test_stochastic_depth_vanishes_at_eval(case):
    targets = _targets(Case(BODIES[case]).eval())
    assert all("stochastic" not in getattr(t, "__name__", "") for t in targets)


def test_each_call_site_of_a_module_is_its_own_node():
    model = Case(BODIES["reused-conv"]).eval()
    explainer = lrpfx.compile(model, "epsilon-plus")
    sites = [n for n in explainer.graph_module.graph.nodes if n.meta.get("lrpfx.path") == "c2"]
    assert len(sites) == 3 and len({n.name for n in sites}) == 3
    assert len({n.args[0] for n in sites}) == 2  # c2(relu(c2(h))) reads its own output


def _gate_model():
    return Case(lambda m, h: torch.sigmoid(m.se(h)) * m.c2(h)).eval()


@pytest.mark.parametrize("act", [nn.Sigmoid, nn.SiLU, nn.GELU])
@pytest.mark.parametrize("share", ["signal", "gate", "uniform", "Uniform"])
def test_gating_conventions(share, act):
    """``act(gate(h)) * signal(h)``: the relevance arriving at the product goes all to the
    signal, all to the gate, or half to each; compared through explicit output relevance on a
    model whose head is the product itself. A sigmoid is a gate by its range; SiLU and GELU
    outputs are the gates of gated linear units (SwiGLU, GEGLU), the linear branch the signal."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()).eval()
    gate, signal = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)

    class Product(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.gate, self.signal, self.act = model, gate, signal, act()

        def forward(self, x):
            h = self.body(x)
            return self.act(self.gate(h)) * self.signal(h)

    x = torch.randn(2, 3, 4, 4)
    net = Product().eval()
    R = torch.rand(2, 4, 4, 4)
    common = {Kind("conv"): rules.Epsilon(1e-9)}
    rule = rules.Uniform() if share == "Uniform" else rules.Gating(share)  # AttnLRP's name
    got = lrpfx.compile(net, {**common, Kind("mul"): rule})(x, output_relevance=R).relevance
    as_signal = lrpfx.compile(nn.Sequential(model, signal).eval(), common)(
        x, output_relevance=R).relevance
    with torch.no_grad():  # the gate branch alone: its pre-activation relevance passes it
        as_gate = lrpfx.compile(nn.Sequential(model, gate, act()).eval(), common)(
            x, output_relevance=R).relevance
    expected = {"signal": as_signal, "gate": as_gate}.get(share, (as_signal + as_gate) / 2)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_a_constant_added_is_a_bias():
    """``c2(h) + 0.5``: with Norm the constant keeps its share; ignoring biases, R passes."""
    torch.manual_seed(0)
    model = Case(BODIES["add-constant"]).eval()
    x = torch.randn(2, 3, 6, 6)
    R = torch.rand(2, 4)
    lrp0 = {Kind("conv", "dense"): rules.Epsilon(1e-12, ignore_bias=True)}
    kept = lrpfx.compile(model, {**lrp0, Kind("add"): rules.Norm(1e-12)})(
        x, output_relevance=R).relevance
    passed = lrpfx.compile(model, {**lrp0, Kind("add"): rules.Norm(1e-12, ignore_bias=True)})(
        x, output_relevance=R).relevance
    torch.testing.assert_close(passed.sum(), R.sum(), rtol=1e-9, atol=0)
    assert (kept.sum() - R.sum()).abs() > 1e-3 * R.abs().sum()


def test_show_names_the_rule_of_every_new_op(capsys):
    model = Case(lambda m, h: m.norm((h * torch.sigmoid(m.se(h))
                                      + m.c2(h)).permute(0, 2, 3, 1)).mean((1, 2))).eval()
    explainer = lrpfx.compile(model, "epsilon-plus-flat")
    lrpfx.show(explainer)
    shown = capsys.readouterr().out
    for rule in ("Norm(", "Gating(", "LNRule(", "Pass("):
        assert rule in shown, rule


def test_cat_of_a_tuple_node_is_a_named_error():
    model = Case(lambda m, h: torch.cat(h.chunk(2, 1), 1)).eval()
    with pytest.raises(lrpfx.UnsupportedOperationError, match="cat of a tuple-valued node"):
        lrpfx.compile(model, "epsilon-plus")
