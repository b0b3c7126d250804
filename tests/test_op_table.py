"""The op table: one stanza per op, loud duplicates, closed kinds, facts computed once and
linearly, graphs of any depth."""

from __future__ import annotations

import operator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lrpfx
from lrpfx import composites, meta, passes, rules
from lrpfx.errors import RegistrationError
from lrpfx.frontend.fx import trace
from lrpfx.ops import OPS, OpKind, defop, relevance, spell, table


@pytest.fixture
def registry():
    """Registrations made by a test are undone after it."""
    before = set(OPS)
    yield
    table.unregister(*(set(OPS) - before))


def _readme_stanza() -> str:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("**A new op, as one stanza.**"):]
    start = section.index("```python") + len("```python")
    return section[start:section.index("```", start)]


def test_the_readme_stanza_adds_an_op_in_every_spelling(registry):
    namespace: dict = {}
    exec(compile(_readme_stanza(), "README.md", "exec"), namespace)  # as documented
    model, out = namespace["model"], namespace["out"]
    assert out.output.shape == (4, 3)

    class Functional(nn.Module):
        def __init__(self, how: str) -> None:
            super().__init__()
            self.how, self.fc1, self.fc2 = how, model[0], model[2]

        def forward(self, x):
            h = self.fc1(x)
            h = F.hardshrink(h, 0.1) if self.how == "function" else h.hardshrink(0.1)
            return self.fc2(h)

    x = torch.randn(5, 6, dtype=torch.float64)
    lrp0 = {composites.Kind("dense"): rules.Epsilon(1e-12, ignore_bias=True)}
    expected = lrpfx.compile(model.double(), lrp0)(x, target=1)
    for how in ("function", "method"):
        explainer = lrpfx.compile(Functional(how).eval(), lrp0)
        got = explainer(x, target=1)
        assert [str(n.target) for n in explainer.graph_module.graph.nodes
                if "hardshrink" in str(n.target)] == [str(F.hardshrink)]
        torch.testing.assert_close(got.relevance, expected.relevance, rtol=0, atol=0)
    # the rules ignore biases and the activation passes: the logit is conserved
    torch.testing.assert_close(expected.relevance.sum(1), model(x)[:, 1], rtol=1e-9, atol=1e-12)


def test_declaring_an_op_or_a_row_twice_is_an_error(registry):
    with pytest.raises(RegistrationError, match="already declared"):
        defop(torch.relu, kind=OpKind.ACTIVATION)
    with pytest.raises(RegistrationError, match="already has a relevance implementation for Pass"):
        relevance(torch.relu, rule=rules.Pass)(lambda b, node, rel, rule: [])
    with pytest.raises(RegistrationError, match="already means"):
        spell(F.gelu, "relu")
    with pytest.raises(RegistrationError, match="before its rows"):
        relevance(torch.cumsum, rule=rules.Pass)(lambda b, node, rel, rule: [])
    with pytest.raises(RegistrationError, match="already declared"):
        lrpfx.register(torch.relu, kind="activation", rules=(rules.Pass,))(
            lambda b, node, rel, rule: [])


class Scale(nn.Module):
    """Multiplies by 3."""

    def forward(self, x):
        return 3 * x


def test_override_replaces_every_row_of_an_op(registry):
    def passes_all(b, node, rel, rule):
        return [(node.args[0], rel)]

    def halves(b, node, rel, rule):
        return [(node.args[0], b.call(operator.mul, rel, 0.5, name="r_half"))]

    lrpfx.register(Scale, kind="activation", rules=(rules.Pass, rules.Gradient))(passes_all)
    with pytest.raises(RegistrationError, match="already declared"):
        lrpfx.register(Scale, kind="activation", rules=(rules.Pass,))(halves)
    lrpfx.register(Scale, kind="activation", rules=(rules.Pass,), override=True)(halves)
    assert table.rules_of(Scale) == (rules.Pass,)  # the Gradient row went with the rest
    model = nn.Sequential(nn.Linear(3, 3, bias=False), Scale(), nn.Linear(3, 2, bias=False))
    x = torch.randn(2, 3, dtype=torch.float64)
    out = lrpfx.compile(model.double().eval(), rules.Epsilon(1e-12))(x, target=0)
    torch.testing.assert_close(out.relevance.sum(1), 0.5 * out.output[:, 0])


def test_kinds_are_a_closed_set():
    with pytest.raises(ValueError, match="unknown op kind 'dens'"):
        composites.Kind("dens")
    with pytest.raises(ValueError, match="unknown op kind"):
        composites.First("convolution")
    assert composites.Kind("conv", OpKind.DENSE).kinds == (OpKind.CONV, OpKind.DENSE)
    with pytest.raises(ValueError):
        lrpfx.register(nn.Identity, kind="not-a-kind")(lambda b, node, rel, rule: [])


class Shapes(nn.Module):
    """A position table built from ``x.shape`` alone, a gate seen through a reshape, ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        positions = torch.arange(x.size(1), dtype=x.dtype)  # from the shape: a constant
        h = torch.relu(self.fc(x + positions))
        gate = torch.sigmoid(h).reshape(x.size(0), 2, 2).flatten(1)
        return h * gate


def test_facts_of_each_node():
    gm = passes.facts(passes.normalize(trace(Shapes().eval())))
    by_name = {n.name: n for n in gm.graph.nodes}
    size, arange = by_name["size"], by_name["arange"]
    assert size.meta[meta.SHAPE] and not size.meta[meta.CARRIES]
    assert not arange.meta[meta.CARRIES] and not arange.meta[meta.CONE]
    relu = next(n for n in gm.graph.nodes if n.target is torch.relu)
    assert relu.meta[meta.NONNEG] and relu.meta[meta.CONE] and relu.meta[meta.KIND] == "activation"
    flat = next(n for n in gm.graph.nodes if n.target is torch.flatten)
    assert flat.meta[meta.GATE] and flat.meta[meta.NONNEG]  # through reshape and flatten
    mul = next(n for n in gm.graph.nodes if n.target is operator.mul)
    assert mul.meta[meta.TAKES_RULE]  # two tensors that carry relevance: a Gating rule
    explainer = lrpfx.compile(Shapes().eval(), "epsilon")  # arange needs no relevance row
    assert explainer(torch.randn(3, 4)).relevance.shape == (3, 4)


@pytest.mark.parametrize("blocks", [1500])
def test_a_graph_deeper_than_the_recursion_limit_compiles(blocks):
    """Facts are computed iteratively: 1500 residual adds (the recursive analysis of earlier
    versions failed at about 330) compile, and relevance is conserved through all of them."""
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3, bias=False)
            nn.init.normal_(self.fc.weight, std=1 / blocks)

        def forward(self, x):
            return x + torch.relu(self.fc(x))

    head = nn.Linear(3, 2, bias=False)
    model = nn.Sequential(*[Block() for _ in range(blocks)], head).double().eval()
    x = torch.randn(2, 3, dtype=torch.float64)
    out = lrpfx.compile(model, composites.EpsilonOnly(1e-12, stabilizer=1e-12))(x, target=1)
    torch.testing.assert_close(out.relevance.sum(1), out.output[:, 1], rtol=1e-8, atol=1e-10)
