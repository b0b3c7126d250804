"""PatternNet and PatternAttribution on conv and dense layers (Kindermans et al. 2018).

Both rules are the gradient's backward with the weight matrix exchanged, evaluated once at
compile time and stored as a buffer of the program::

    PatternNet          R_in = f_aᵀ(R)          the signal, projected back with the patterns a
    PatternAttribution  R_in = f_{w⊙a}ᵀ(R)      the attribution of the root point x − a·y

``f_Mᵀ`` is the transpose of the layer with weight ``M`` (``conv_transpose`` / ``matmul``), the
bias plays no part. Through the ReLUs both take the forward mask (``rules.Gradient``, which the
pattern composites put on the activations).

The conv and dense entries of the registry are extended, not replaced: other rules still go to
the linear family's recipe. Patterns are looked up by the key of each layer node
(``pattern_keys``), the same keys ``lrpfx.patterns.fit`` stores them under.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from lrpfx import meta
from lrpfx.builder import Builder
from lrpfx.diagnostics import describe
from lrpfx.ops import functional as lf
from lrpfx.ops.registry import REGISTRY, Contribution, OpImpl
from lrpfx.rules import PatternAttribution, PatternNet, Rule

LAYERS = (F.conv1d, F.conv2d, F.conv3d, F.linear)
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


# canonical graphs whose patterns were checked against their weights (once per compile)
_CHECKED: weakref.WeakSet[fx.GraphModule] = weakref.WeakSet()


def _check_all(b: Builder) -> None:
    """Check every pattern-rule layer of the graph at once, so one error lists every problem."""
    if b.source in _CHECKED:
        return
    requests: dict[int, tuple[Any, list[tuple[str, str, torch.Tensor]]]] = {}
    for node, key in pattern_keys(b.source.graph).items():
        rule = node.meta.get(meta.RULE)
        if isinstance(rule, PATTERN_RULES):
            entry = requests.setdefault(id(rule.patterns), (rule.patterns, []))
            entry[1].append((describe(node), key, b.tensor(node.args[1])))  # type: ignore[arg-type]
    for patterns, layers in requests.values():
        patterns.check(layers)  # raises lrpfx.patterns.PatternError naming every layer
    _CHECKED.add(b.source)


def _transpose(b: Builder, node: fx.Node, rel: fx.Node, matrix: fx.Node) -> fx.Node:
    """``f_Mᵀ(R)``: the transpose of the layer with weight ``matrix``, applied to ``R``."""
    name = f"r_{b.name(node)}"
    if node.target is F.linear:
        return b.call(lf.linear_transpose, rel, matrix, name=name)
    rest = tuple(b.map(a) for a in node.args[3:])
    return b.call(lf.conv_transpose, rel, b[node.args[0]], matrix, *rest, name=name)


def pattern_backward(b: Builder, node: fx.Node, rel: fx.Node, rule: Rule) -> list[Contribution]:
    """PatternNet: ``R_in = f_aᵀ(R)``; PatternAttribution: ``R_in = f_{w⊙a}ᵀ(R)``."""
    _check_all(b)
    x = node.args[0]
    assert isinstance(x, fx.Node) and isinstance(rule, PATTERN_RULES)
    weight = b.tensor(node.args[1])  # type: ignore[arg-type]
    pattern = rule.patterns[pattern_keys(b.source.graph)[node]].to(weight)
    tag = b.name(node)
    if isinstance(rule, PatternAttribution):
        matrix = b.constant(weight * pattern, name=f"wa_{tag}")
    else:
        matrix = b.constant(pattern, name=f"a_{tag}")
    return [(x, _transpose(b, node, rel, matrix))]


def _with_patterns(impl: OpImpl) -> OpImpl:
    """``impl`` taking the pattern rules too; every other rule still goes to ``impl``."""

    def backward(b: Builder, node: fx.Node, rel: fx.Node, rule: Rule) -> Sequence[Contribution]:
        if isinstance(rule, PATTERN_RULES):
            return pattern_backward(b, node, rel, rule)
        return impl.backward(b, node, rel, rule)

    return replace(impl, backward=backward, rules=(*impl.rules, *PATTERN_RULES))


for _layer in LAYERS:
    REGISTRY[_layer] = _with_patterns(REGISTRY[_layer])
