"""annotate: the composite is read here and only here.

Before: a graph with its facts (``passes.facts``).
After:  every node on the relevance path whose op takes a rule has ``meta["lrpfx.rule"]`` (the
composite's first match, or None when nothing matched: ``check`` reports it); a relevance filter
the composite wraps around a rule (``filters.TopK``) goes to ``meta["lrpfx.filter"]``, the rule
it wraps to ``meta["lrpfx.rule"]``.
"""

from __future__ import annotations

from torch import fx

from lrpfx import meta
from lrpfx.composites import Composite, Context
from lrpfx.filters import TopK


def annotate(gm: fx.GraphModule, composite: Composite) -> fx.GraphModule:
    """Write each node's rule (and filter) into ``node.meta`` (see the module docstring)."""
    order = [n for n in gm.graph.nodes if n.meta.get(meta.CONE)]
    ctx = Context({n: n.meta[meta.KIND] for n in order if n.meta[meta.KIND] is not None}, order)
    for node in order:
        if not node.meta[meta.TAKES_RULE]:
            continue
        rule = composite.rule_for(node, ctx)
        if isinstance(rule, TopK):
            node.meta[meta.FILTER], rule = rule, rule.rule
        node.meta[meta.RULE] = rule
    return gm
