"""Selection: ``torch.where(condition, a, b)``, and the comparisons that make its condition.

A comparison (``x > 0``, ``torch.lt``, ``x.ge(t)``) is a mask: it carries no relevance
(``constant``: the facts pass does not let relevance flow into it), so what it is computed from
gets relevance only along its other uses. ``where`` routes: each element of the output is an
element of ``a`` or of ``b``, so relevance goes back to the branch it was selected from,

    ``R_a = where(condition, R, 0)``,  ``R_b = where(condition, 0, R)``

(summed back over the dimensions a branch was broadcast along; a number as a branch is a
constant and keeps its share). Σ R_a + Σ R_b = Σ R.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from lrpfx import runtime as rt
from lrpfx.builder import Builder
from lrpfx.ops.table import Contribution, OpKind, aten, carries, defop, relevance, spell

_COMPARISONS = {operator.gt: (torch.gt, "gt", torch.greater, "greater"),
                operator.lt: (torch.lt, "lt", torch.less, "less"),
                operator.ge: (torch.ge, "ge", torch.greater_equal, "greater_equal"),
                operator.le: (torch.le, "le", torch.less_equal, "less_equal"),
                operator.eq: (torch.eq, "eq"), operator.ne: (torch.ne, "ne", torch.not_equal)}
defop(*_COMPARISONS, kind=OpKind.SHAPE, constant=True)  # a mask: no relevance into it
for _fn, _aliases in _COMPARISONS.items():
    spell(_fn, *_aliases)

defop(torch.where, kind=OpKind.ROUTING)
spell(torch.where, aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf)


@relevance(torch.where)
def _where(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    """``where(c, a, b)``: ``R_a = where(c, R, 0)``, ``R_b = where(c, 0, R)``."""
    condition, *branches = node.args[:3]
    tag = b.name(node)
    out: list[Contribution] = []
    for index, branch in enumerate(branches):
        if not (isinstance(branch, fx.Node) and carries(branch)):
            continue
        picked = (rel, 0.0) if index == 0 else (0.0, rel)
        r = b.call(torch.where, b[condition], *picked, name=f"r_{tag}")
        out.append((branch, b.call(rt.unbroadcast, r, b[branch], name=f"r_{tag}")))
    return out
