"""PatternNet and PatternAttribution on conv and dense layers (Kindermans et al. 2018).

Both rules are the gradient's backward with the weight matrix exchanged, evaluated once at
compile time and stored as a buffer of the program::

    PatternNet          R_in = f_aᵀ(R)          the signal, projected back with the patterns a
    PatternAttribution  R_in = f_{w⊙a}ᵀ(R)      the attribution of the root point x − a·y

``f_Mᵀ`` is the transpose of the layer with weight ``M`` (``conv_transpose`` / ``matmul``), the
bias plays no part. Through the ReLUs both take the forward mask (``rules.Gradient``, which the
pattern composites put on the activations).

They are rows of the conv and dense ops beside the linear family's. Patterns are looked up by the
key of each layer node (``pattern_keys``), the same keys ``lrpfx.patterns.fit`` stores them
under; ``passes.check`` checks every pattern against its weight (``check_patterns``).
"""

from __future__ import annotations

import operator
from collections import Counter
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from lrpfx import meta
from lrpfx import runtime as rt
from lrpfx.builder import Builder
from lrpfx.diagnostics import describe
from lrpfx.ops.layers import CONV_TRANSPOSES
from lrpfx.ops.table import OPS, Contribution, OpKind, relevance
from lrpfx.rules import PatternAttribution, PatternNet

# the conv and dense ops, as the table knows them (the layers stanza is loaded before this one);
# transposed convs have no pattern transpose here
LAYERS = tuple(k for k, s in OPS.items()
               if s.kind in (OpKind.CONV, OpKind.DENSE) and k not in CONV_TRANSPOSES)
PATTERN_RULES = (PatternNet, PatternAttribution)


def is_layer(node: fx.Node) -> bool:
    """A conv or dense node whose weight is a constant of the graph (a pattern can be fitted)."""
    weight = node.args[1] if node.op == "call_function" and len(node.args) > 1 else None
    return (node.target in LAYERS and isinstance(weight, fx.Node)
            and weight.op == "get_attr")


def pattern_keys(graph: fx.Graph) -> dict[fx.Node, str]:
    """The key of each layer node: its module path (``"features.0"``), else its node name.

    A module called at several places gets one key per call site, ``"block.conv#0"``,
    ``"block.conv#1"``, ... in execution order: each call sees other inputs, so other patterns.
    """
    layers = [n for n in graph.nodes if is_layer(n)]
    names = [n.meta.get(meta.PATH) or n.name for n in layers]
    total, seen = Counter(names), Counter[str]()
    keys = {}
    for node, name in zip(layers, names, strict=True):
        keys[node] = f"{name}#{seen[name]}" if total[name] > 1 else name
        seen[name] += 1
    return keys


def check_patterns(gm: fx.GraphModule) -> None:
    """Check every pattern-rule layer of an annotated graph against its weight, so that one
    ``PatternError`` lists every problem."""
    requests: dict[int, tuple[Any, list[tuple[str, str, torch.Tensor]]]] = {}
    for node, key in pattern_keys(gm.graph).items():
        rule = node.meta.get(meta.RULE)
        if isinstance(rule, PATTERN_RULES):
            entry = requests.setdefault(id(rule.patterns), (rule.patterns, []))
            weight = operator.attrgetter(str(node.args[1].target))(gm)  # type: ignore[union-attr]
            entry[1].append((describe(node), key, weight.detach()))
    for patterns, layers in requests.values():
        patterns.check(layers)  # raises lrpfx.patterns.PatternError naming every layer


def _transpose(b: Builder, node: fx.Node, rel: fx.Node, matrix: fx.Node) -> fx.Node:
    """``f_Mᵀ(R)``: the transpose of the layer with weight ``matrix``, applied to ``R``."""
    name = f"r_{b.name(node)}"
    if node.target is F.linear:
        return b.call(rt.linear_transpose, rel, matrix, name=name)
    rest = tuple(b.map(a) for a in node.args[3:])
    return b.call(rt.conv_transpose, rel, b[node.args[0]], matrix, *rest, name=name)


@relevance(*LAYERS, rule=PATTERN_RULES)
def _pattern(b: Builder, node: fx.Node, rel: fx.Node, rule: PatternNet | PatternAttribution
             ) -> list[Contribution]:
    """PatternNet: ``R_in = f_aᵀ(R)``; PatternAttribution: ``R_in = f_{w⊙a}ᵀ(R)``."""
    x = node.args[0]
    assert isinstance(x, fx.Node)
    weight = b.tensor(node.args[1])  # type: ignore[arg-type]
    pattern = rule.patterns[pattern_keys(b.source.graph)[node]].to(weight)
    tag = b.name(node)
    if isinstance(rule, PatternAttribution):
        matrix = b.constant(weight * pattern, name=f"wa_{tag}")
    else:
        matrix = b.constant(pattern, name=f"a_{tag}")
    return [(x, _transpose(b, node, rel, matrix))]
