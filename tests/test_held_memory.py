"""What the explain program holds across the turn (forward values its backward reads): cheap
values are computed again in the backward (``program.recompute``), values read for their shape
alone are held as their size (``program.shapes``). Neither changes a bit of the result."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import lrpfx
from lrpfx import composites, kernels, program
from lrpfx import runtime as rt
from tests.test_attention_models import _small_maxvit, _small_swin, _small_vit

WITHOUT = (program.inplace, program.channels_last)  # the passes before these two


def _held(explainer, x) -> int:
    """Bytes of the distinct storages of the forward's tensors alive at the turn."""

    class AtTurn(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.op == "call_function" and n.target is rt.output_relevance:
                self.held = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                             for k, t in self.env.items()
                             if isinstance(t, torch.Tensor) and k.op != "get_attr"}
            return out

    run = AtTurn(explainer.program)
    with torch.no_grad():
        run.run(x, None, None)
    return sum(run.held.values())


@pytest.mark.parametrize("make, size", [(_small_vit, 32), (_small_maxvit, 32),
                                        (_small_swin, 36)], ids=["vit", "maxvit", "swin"])
def test_attention_models_hold_less_and_change_no_bit(make, size, monkeypatch):
    model = make()
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    explainer = lrpfx.compile(model, composites.AttnLRP(), example_inputs=x)
    out = explainer(x, target=1)
    monkeypatch.setattr(lrpfx.compiler, "PROGRAM_PASSES", WITHOUT)
    before = lrpfx.compile(model, composites.AttnLRP(), example_inputs=x)
    plain = before(x, target=1)
    assert torch.equal(out.relevance, plain.relevance) and torch.equal(out.output, plain.output)
    assert _held(explainer, x) < 0.8 * _held(before, x)


def test_swin_holds_no_gelu_output_and_no_roll_for_its_shape():
    model = _small_swin()
    x = torch.randn(1, 3, 36, 36, dtype=torch.float64)
    graph = lrpfx.compile(model, "attn-lrp", example_inputs=x).program.graph
    order = {n: i for i, n in enumerate(graph.nodes)}
    turn = next(n for n in graph.nodes if n.target is rt.output_relevance)
    forward = [n for n in graph.nodes if order[n] < order[turn]]
    for node in forward:
        if node.target in (F.gelu, torch.roll, F.pad):
            late = [u for u in node.users if order[u] > order[turn]]
            assert not late, f"{node.name} is held for {[u.name for u in late]}"
    assert any(n.name.endswith("_shape") for n in forward)  # the patch merge's pad: its size


def _turned(build):
    """A hand-made program: ``build``'s forward, the turn, ``build``'s backward."""
    g = fx.Graph()
    x = g.placeholder("x")
    forward = build.forward(g, x)
    seed = g.call_function(rt.output_relevance, (forward, None, None))
    g.output((forward, build.backward(g, seed)))
    root = nn.Module()
    root.register_buffer("w", torch.randn(6, 4, dtype=torch.float64))
    return g, fx.GraphModule(root, g)


class _MLP:
    """linear → gelu → linear; the backward reads the first linear's output and the gelu's."""

    def __init__(self, held: bool) -> None:
        self.held = held  # whether the backward reads the first linear's output too

    def forward(self, g, x):
        self.z = g.call_function(F.linear, (x, g.get_attr("w")))
        self.a = g.call_function(F.gelu, (self.z,))
        return g.call_function(operator.mul, (self.a, 2.0))

    def backward(self, g, r):
        r = g.call_function(operator.mul, (r, self.a))
        return g.call_function(operator.truediv, (r, self.z)) if self.held else r


@pytest.mark.parametrize("held", [True, False])
def test_a_cheap_value_is_computed_again_where_its_input_is_held_anyway(held):
    build = _MLP(held)
    g, gm = _turned(build)
    x = torch.randn(3, 4, dtype=torch.float64)
    expected = gm(x)
    program.recompute(gm)
    again = [n for n in g.nodes if n.name.endswith("_again")]
    # with z held for the backward, gelu(z) is made again there; else a is held, not z
    assert [n.target for n in again] == ([F.gelu] if held else [])
    got = gm(x)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


def test_a_value_read_for_its_shape_alone_is_held_as_its_size():
    g = fx.Graph()
    x = g.placeholder("x")
    t = g.call_function(torch.roll, (x, 1, 0))
    u = g.call_function(operator.mul, (t, 2.0))
    kept = g.call_function(operator.mul, (x, 3.0))
    seed = g.call_function(rt.output_relevance, (u, None, None))
    r = g.call_method("reshape_as", (seed, t))
    r = g.call_function(kernels.index_transpose, (r, t, (slice(None), slice(0, 1))))
    r = g.call_function(operator.mul, (r, kept))  # kept: read for its values
    g.output((u, r))
    gm = fx.GraphModule(nn.Module(), g)
    x0 = torch.randn(4, 1, dtype=torch.float64)
    expected = gm(x0)
    program.shapes(gm)
    sizes = [n for n in g.nodes if n.target == "size"]
    assert [n.args[0] for n in sizes] == [t] and len(t.users) == 2  # u and its size
    assert kept.users.keys() == {r}
    assert all(torch.equal(a, b) for a, b in zip(gm(x0), expected, strict=True))


def test_a_language_model_holds_no_attention_matrix_across_the_turn(monkeypatch):
    """An attention the model writes out (HuggingFace's eager attention; an sdpa call is fused,
    ``test_fused_attention``): the scores ``q @ kᵀ``, their masked form and the softmax (one
    sequence × sequence matrix per head each) are made again in the backward from ``q``, ``k``
    and the mask, which it holds anyway; the relevance is the same, bit for bit."""
    pytest.importorskip("transformers")
    from tests.test_language_models import _batch, _make

    model, inputs = _make("llama", "eager"), _batch()
    explainer = lrpfx.compile(model, "attn-lrp", example_inputs=inputs)
    graph = explainer.program.graph
    order = {n: i for i, n in enumerate(graph.nodes)}
    turn = next(n for n in graph.nodes if n.target is rt.output_relevance)
    matrices = [n for n in graph.nodes if order[n] < order[turn] and (
        n.target in (F.softmax, kernels.attention_mask) or n.target is torch.matmul)]
    assert matrices
    for node in matrices:
        late = [u.name for u in node.users if order[u] > order[turn]]
        assert not late, f"{node.name} is held for {late}"
    out = explainer(**inputs)
    monkeypatch.setattr(lrpfx.compiler, "PROGRAM_PASSES", WITHOUT)
    plain = lrpfx.compile(model, "attn-lrp", example_inputs=inputs)(**inputs)
    assert torch.equal(out.embedding, plain.embedding) and torch.equal(out.output, plain.output)
