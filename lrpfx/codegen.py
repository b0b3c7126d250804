"""Code generation: one explain program (forward + relevance backward) as a GraphModule.

The program is ``forward(self, <inputs...>, target=None, output_relevance=None)`` (the model's
inputs in the order of its arguments) returning ``(output, relevance)``, the relevance of the
explained input (or of the embedding output, for explained token ids:
``passes.facts.sources``), or ``(output, relevance, {name: relevance})`` when layers are
recorded (``lrpfx.record``); ``output`` in the form the model returns it: a tensor, or a dict /
tuple / list of them, each seeded with its own relevance (``lrpfx.outputs``). The forward sweep
copies every node; the output relevance is selected; the backward sweep visits the nodes in
reverse and lets each op's implementation emit the relevance of its inputs; relevances of a
value used several times are summed.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx, nn

from lrpfx import meta, outputs
from lrpfx import runtime as rt
from lrpfx.builder import Builder, like
from lrpfx.ops import table
from lrpfx.passes.facts import sources


def _forward(b: Builder, gm: fx.GraphModule, modules: dict[str, nn.Module]) -> Any:
    """Copy the forward; returns the model output's value (a node, or a dict / tuple / list of
    nodes: ``lrpfx.outputs``)."""
    output = None
    for node in gm.graph.nodes:
        if node.op == "output":
            output = b.map(node.args[0])
            continue
        spec = table.spec(node, modules)
        emit = spec.forward if spec is not None and node.meta.get(meta.CONE) else None
        b.env[node] = emit(b, node) if emit else b.copy(node)
    assert output is not None
    return output


def _accumulate(b: Builder, rel: dict[fx.Node, fx.Node], node: fx.Node, value: fx.Node) -> None:
    """Sum the relevance arriving at ``node`` from its several users (fan-out)."""
    if node in rel:
        value = like(b.call(operator.add, rel[node], value, name=f"rel_{b.name(node)}"), 0, 1)
    rel[node] = value


def _seeds(b: Builder, gm: fx.GraphModule, seed: fx.Node) -> dict[fx.Node, fx.Node]:
    """The relevance of the output's nodes: ``seed`` for a one-tensor output; for a dict /
    tuple / list output, element ``i`` of ``seed`` for its ``i``-th tensor (summed where one
    node is returned twice)."""
    output = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    if isinstance(output, fx.Node):
        return {output: seed}
    rel: dict[fx.Node, fx.Node] = {}
    for i, (path, node) in enumerate(outputs.leaves(output)):
        name = f"rel_output_{meta.identifier('_'.join(map(str, path)))}"
        _accumulate(b, rel, node, b.call(operator.getitem, seed, i, name=name))
    return rel


def _backward(
    b: Builder, gm: fx.GraphModule, modules: dict[str, nn.Module], seed: fx.Node
) -> dict[fx.Node, fx.Node]:
    """Propagate ``seed`` from the output to every node; returns the relevance of each."""
    rel = _seeds(b, gm, seed)
    for node in reversed(gm.graph.nodes):
        if (node not in rel or node.op == "placeholder" or not node.meta.get(meta.CONE)
                or node.meta.get(meta.EXPLAINED)):  # where relevance is taken: it stops there
            continue
        arriving = rel[node]
        if (top := node.meta.get(meta.FILTER)) is not None:  # a filters.TopK
            arriving = b.call(rt.top_k, arriving, top.percent, name=f"topk_{b.name(node)}")
        rule = node.meta.get(meta.RULE)
        backward = table.backward(node, modules, rule)
        assert backward is not None, f"{node.name}: no row (passes.check lets none through)"
        for source, value in backward(b, node, arriving, rule):
            _accumulate(b, rel, source, value)
    return rel


def _relevance(b: Builder, rel: dict[fx.Node, fx.Node], starts: list[fx.Node]) -> fx.Node:
    """The relevance where it is taken (several embedding lookups of the ids: their sum)."""
    found = [rel[n] for n in starts if n in rel]
    if not found:
        x = starts[0]
        return b.call(torch.zeros_like, b[x], name=f"rel_{b.name(x)}")
    total = found[0]
    for more in found[1:]:
        total = b.call(operator.add, total, more, name="rel_embedding")
    return total


def generate(gm: fx.GraphModule, record: dict[str, fx.Node] | None = None,
             relevance_dtype: torch.dtype | None = None) -> fx.GraphModule:
    """The explain program of an annotated, checked canonical graph; ``record`` names the nodes
    whose output relevance it also returns (``lrpfx.record.select``); ``relevance_dtype``
    (float32 for a bfloat16 model) is the dtype the backward computes in where the model's is
    narrower (``Builder.widen``)."""
    modules = dict(gm.named_modules())
    b = Builder(gm)
    if not gm.graph.find_nodes(op="placeholder"):
        raise ValueError("lrpfx explains models with a tensor input, got none")
    output = _forward(b, gm, modules)
    target = b.graph.placeholder("target", default_value=None)
    given = b.graph.placeholder("output_relevance", default_value=None)
    seed = b.call(rt.output_relevance, output, target, given, name="rel_output")
    if relevance_dtype is not None:
        b.widen(relevance_dtype)
        seed = b.call(rt.widen, seed, relevance_dtype, name="rel_output_wide")
    rel = _backward(b, gm, modules, seed)
    relevance = _relevance(b, rel, sources(gm))
    if record:
        layers = {
            name: rel.get(node)
            or b.call(torch.zeros_like, b[node], name=f"rel_{meta.identifier(name)}")
            for name, node in record.items()
        }
        b.graph.output((output, relevance, layers))
    else:
        b.graph.output((output, relevance))
    root = nn.Module()
    for name, value in b.constants.items():
        root.register_buffer(name, value)
    for node in b.graph.nodes:
        if node.op == "call_module":
            root.add_module(str(node.target), modules[str(node.target)])
    b.graph.lint()
    return fx.GraphModule(root, b.graph, "ExplainProgram")
