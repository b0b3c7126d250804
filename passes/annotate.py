"""annotate: the composite is read here and only here.

Before: a canonical graph (normalize, fold_batchnorm, linearize, maxpool done).
After:  every node on the relevance path whose op takes a rule has ``meta["lrpfx.rule"]`` (the
composite's first match, or None when nothing matched: ``check`` reports it), and every node
whose value is statically non-negative has ``meta["lrpfx.nonneg"] = True``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx

from lrpfx import meta
from lrpfx.composites import Composite, Context
from lrpfx.ops import functional as lf
from lrpfx.ops.registry import lookup

# ops whose output is >= 0 whatever the input
NONNEG_OUTPUT = {torch.relu, F.relu6, torch.sigmoid, F.hardsigmoid, F.softplus, F.softmax}
# ops that keep an input's non-negativity
NONNEG_PRESERVING = {
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    lf.avg_pool, torch.reshape, torch.flatten, torch.unflatten,
}


def _nonneg(node: fx.Node) -> bool:
    if node.op != "call_function":
        return False
    if node.target in NONNEG_OUTPUT:
        return True
    x = node.args[0] if node.args else None
    return (node.target in NONNEG_PRESERVING and isinstance(x, fx.Node)
            and bool(x.meta.get(meta.NONNEG)))


def annotate(gm: fx.GraphModule, composite: Composite) -> fx.GraphModule:
    """Write each node's rule and sign into ``node.meta`` (see the module docstring)."""
    modules = dict(gm.named_modules())
    cone = meta.relevance_cone(gm.graph)
    order = [n for n in gm.graph.nodes if n in cone]
    impls = {n: lookup(n, modules) for n in order}
    kinds = {n: impl.kind for n, impl in impls.items() if impl is not None}
    ctx = Context(kinds, order)
    for node in gm.graph.nodes:
        node.meta[meta.NONNEG] = _nonneg(node)
        impl = impls.get(node)
        if impl is not None and impl.takes_rule(node):
            node.meta[meta.RULE] = composite.rule_for(node, ctx)
    return gm
