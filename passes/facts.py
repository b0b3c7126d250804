"""facts: what every node is, computed once, in one sweep each way.

Before: a canonical graph (normalize, fold_batchnorm, maxpool done).
After:  every node has in ``node.meta`` (keys in ``lrpfx.meta``):

- ``KIND``: its op family from the op table (``None`` for ops not in it);
- ``SHAPE``: its value is a size, a rank, a dtype, or Python arithmetic on such values;
- ``CARRIES``: it is a tensor computed from the values of the explained input (through other
  such tensors: a tensor made from ``x.shape`` alone, or ``zeros_like(x)``, is a constant, and
  a normalizing statistic like ``x.var()`` is held constant), so it receives relevance. This is
  the value-dependence of the graph: the other inputs of a model with several (an attention
  mask, position ids) and everything computed from them alone (masks, position embeddings,
  rotary tables, shapes) carry none; their values are still computed. Relevance starts at the
  ``sources``: the explained input, or the embedding lookups of explained token ids
  (``lrpfx.frontend.inputs``);
- ``CONE``: it carries and reaches the output: relevance flows through it;
- ``NONNEG``: its value is known to be ``>= 0`` (a ReLU output, a pool of one, ...);
- ``GATE``: its value lies in ``[0, 1]`` (a sigmoid or softmax, maybe re-indexed);
- ``TAKES_RULE``: the composite gives it a rule (on the cone only).

Each fact of a node follows from its op's ``OpSpec`` and the facts of its inputs, so a forward
sweep in graph order (and a backward one for ``CONE``) computes all of them: linear time, no
recursion, for graphs of any depth. Later passes read these facts; none walks the graph again.
"""

from __future__ import annotations

import operator

from torch import fx

from lrpfx import meta
from lrpfx.ops import table

#: ``getattr(x, name)`` of these names is a shape query
SHAPE_ATTRIBUTES = {"shape", "ndim", "dtype", "device"}


def _shape(node: fx.Node, spec: table.OpSpec | None) -> bool:
    """A shape query, or Python arithmetic whose node operands are all shape values."""
    if spec is not None and spec.shape_query:
        return node.target is not getattr or node.args[1] in SHAPE_ATTRIBUTES
    if node.op != "call_function" or getattr(operator, getattr(node.target, "__name__", ""),
                                             None) is not node.target:
        return False
    inputs = node.all_input_nodes
    return bool(inputs) and all(a.meta[meta.SHAPE] for a in inputs)


def _first(node: fx.Node, key: str) -> bool:
    """The fact ``key`` of the node's first argument (False when it is not a node)."""
    x = node.args[0] if node.args else None
    return isinstance(x, fx.Node) and bool(x.meta.get(key))


def sources(gm: fx.GraphModule) -> list[fx.Node]:
    """The nodes where relevance is taken: the explained input or its embedding lookups (the
    first input when none is marked, as in a graph made without ``mark_explained``)."""
    marked = [n for n in gm.graph.nodes
              if n.meta.get(meta.EXPLAINED) in (meta.INPUT, meta.EMBEDDING)]
    return marked or list(gm.graph.find_nodes(op="placeholder"))[:1]


def facts(gm: fx.GraphModule) -> fx.GraphModule:
    """Write the facts of every node (see the module docstring)."""
    modules = dict(gm.named_modules())
    nodes = list(gm.graph.nodes)
    starts = set(sources(gm))
    for node in nodes:
        spec = table.spec(node, modules)
        shape = _shape(node, spec)
        carries = node in starts or any(a.meta[meta.CARRIES] for a in node.all_input_nodes)
        function = node.op == "call_function" and spec is not None
        node.meta.update({
            meta.KIND: None if spec is None else spec.kind,
            meta.SHAPE: shape,
            meta.CARRIES: (carries and not shape and node.op != "output"
                           and not (spec is not None and (spec.constant or spec.statistic))),
            meta.NONNEG: function and (spec.nonneg or spec.keeps_nonneg  # type: ignore[union-attr]
                                       and _first(node, meta.NONNEG)),
            meta.GATE: spec is not None and (spec.gate or spec.routes
                                             and _first(node, meta.GATE)),
        })
    reaches: set[fx.Node] = set()
    for node in reversed(nodes):
        if node.op == "output":
            reaches.update(node.all_input_nodes)
        elif node in reaches and node.meta[meta.CARRIES]:
            node.meta[meta.CONE] = True
            node.meta[meta.TAKES_RULE] = node not in starts and table.takes_rule(node, modules)
            reaches.update(node.all_input_nodes)
            continue
        node.meta[meta.CONE] = False
        node.meta[meta.TAKES_RULE] = False
    return gm
