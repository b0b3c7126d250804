"""Matrix products ``O = A @ B`` (``@``, ``torch.matmul``, ``torch.bmm``), with the ε-rule.

``O`` is linear in each operand when the other is held fixed, so the ε-rule applies to each
(``s = R / stabilize(O)``)::

    R_A = share · A ⊙ (s Bᵀ)        R_B = share · B ⊙ (Aᵀ s)

- One operand computed from the input, the other a constant (``x @ W``): ``share = 1``, the
  ε-rule of the linear map ``x ↦ x W``, as for ``F.linear``.
- Both computed from the input (``q @ kᵀ``, ``attention @ v``): ``share = ½``, the uniform rule
  of AttnLRP (Achtibat et al. 2024, Prop. 3.3): ``R^A_ji = Σ_p A_ji B_ip R_jp / (2 O_jp + ε)``.
- An operand that comes (maybe re-indexed) from a node whose rule is ``Stop`` (CP-LRP's
  softmax) counts as a constant: the other operand takes all the relevance.

Broadcast batch dimensions sum their share back to the operand's shape; an operand of fewer
than two dimensions is refused when the program runs (write it as a matrix).
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from lrpfx import meta
from lrpfx import runtime as rt
from lrpfx.builder import Builder
from lrpfx.ops.linear import stabilizer
from lrpfx.ops.table import (
    OPS,
    Contribution,
    OpKind,
    carries,
    defop,
    relevance,
    spell,
)
from lrpfx.rules import Epsilon, Norm, Stop

defop(operator.matmul, kind=OpKind.MATMUL)
spell(operator.matmul, torch.matmul, torch.bmm, "matmul", "bmm", in_place=(operator.imatmul,))


def _receives(x: object) -> bool:
    """Whether operand ``x`` receives relevance: it carries some, and does not come from a node
    whose rule stops it (through re-indexings)."""
    if not carries(x):
        return False
    source = x
    while isinstance(source, fx.Node):
        if isinstance(source.meta.get(meta.RULE), Stop):
            return False
        facts = OPS.get(source.target) if source.op == "call_function" else None
        if facts is None or not facts.routes or not source.args:
            return True
        source = source.args[0]
    return True


@relevance(operator.matmul, rule=(Epsilon, Norm))
def _matmul(b: Builder, node: fx.Node, rel: fx.Node, rule: Epsilon | Norm
            ) -> list[Contribution]:
    """``A @ B``: the ε-rule on each operand that carries relevance, halved when both do."""
    a, other = node.args[:2]
    operands = [x for x in (a, other) if _receives(x)]
    tag = b.name(node)
    z = b.call(rt.stabilize, b[node], stabilizer(b, rule, b[node], tag), name=f"z_{tag}")
    s = b.call(operator.truediv, rel, z, name=f"s_{tag}")
    if len(operands) == 2:
        s = b.call(operator.mul, s, 0.5, name=f"s_{tag}")  # the uniform share of each operand
    out = []
    if _receives(a):
        c = b.call(rt.matmul_lhs_transpose, s, b[other], name=f"c_{tag}")
        r = b.call(operator.mul, b[a], c, name=f"r_{tag}")
        out.append((a, b.call(rt.unbroadcast, r, b[a], name=f"r_{tag}")))
    if _receives(other):
        c = b.call(rt.matmul_rhs_transpose, b[a], s, name=f"c_{tag}")
        r = b.call(operator.mul, b[other], c, name=f"r_{tag}")
        out.append((other, b.call(rt.unbroadcast, r, b[other], name=f"r_{tag}")))
    return out  # type: ignore[return-value]
