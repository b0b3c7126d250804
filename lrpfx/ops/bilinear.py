"""Products linear in each of two operands, with the ε-rule: matrix products ``O = A @ B``
(``@``, ``torch.matmul``, ``torch.bmm``) and two-operand ``torch.einsum``.

``O`` is linear in each operand when the other is held fixed, so the ε-rule applies to each
(``s = R / stabilize(O)``)::

    R_A = share · A ⊙ (s Bᵀ)        R_B = share · B ⊙ (Aᵀ s)

(for ``einsum``, ``s Bᵀ`` is the einsum that maps ``s`` back onto ``A``'s indices).

- One operand computed from the input, the other a constant (``x @ W``): ``share = 1``, the
  ε-rule of the linear map ``x ↦ x W``, as for ``F.linear``.
- Both computed from the input (``q @ kᵀ``, ``attention @ v``): ``share = ½``, the uniform rule
  of AttnLRP (Achtibat et al. 2024, Prop. 3.3): ``R^A_ji = Σ_p A_ji B_ip R_jp / (2 O_jp + ε)``.
- An operand that comes (maybe re-indexed) from a node whose rule is ``Stop`` (CP-LRP's
  softmax) counts as a constant: the other operand takes all the relevance.

Broadcast batch dimensions sum their share back to the operand's shape; a ``matmul`` operand of
fewer than two dimensions, and an ``einsum`` of other than two operands or with a diagonal
(``"ii,i->i"``), are refused.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx

from lrpfx import kernels, meta
from lrpfx import runtime as rt
from lrpfx.builder import Builder
from lrpfx.ops.linear import stabilizer
from lrpfx.ops.table import (
    OPS,
    Call,
    Contribution,
    OpKind,
    aten,
    carries,
    defop,
    relevance,
    spell,
    unsupported,
)
from lrpfx.rules import Epsilon, Norm, Stop

defop(operator.matmul, kind=OpKind.MATMUL)
spell(operator.matmul, torch.matmul, torch.bmm, "matmul", "bmm", aten.matmul.default,
      aten.bmm.default, in_place=(operator.imatmul,))
defop(torch.einsum, kind=OpKind.MATMUL)
spell(torch.einsum, aten.einsum.default, bind=lambda *operands, path=None: Call(torch.einsum, (
    tuple(operands[0]) if len(operands) == 1 and isinstance(operands[0], (list, tuple))
    else operands)))


def receives(x: object) -> bool:
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


def _operands(node: fx.Node) -> tuple[Any, Any]:
    """The two operands of a product node (``einsum``'s follow its equation)."""
    operands = node.args[1:] if node.target is torch.einsum else node.args[:2]
    if len(operands) != 2:
        raise unsupported(node, f"einsum of {len(operands)} operands; lrpfx explains products "
                          "of two (write it as a chain of two-operand einsums)")
    if node.target is torch.einsum and _diagonal(str(node.args[0])):
        raise unsupported(node, f"einsum {node.args[0]!r} repeats an index within one operand "
                          "(a diagonal); take the diagonal with torch.diagonal first")
    return operands[0], operands[1]


def _diagonal(equation: str) -> bool:
    """Whether an einsum equation repeats an index within one operand (``"ii,j->ij"``)."""
    terms = equation.replace(" ", "").replace(".", "").split("->")[0].split(",")
    return any(len(set(t)) < len(t) for t in terms)


def _transpose(b: Builder, node: fx.Node, s: fx.Node, i: int) -> fx.Node:
    """``s`` mapped back onto the indices of operand ``i``: ``s Bᵀ`` (0) or ``Aᵀ s`` (1)."""
    a, other = _operands(node)
    name = f"c_{b.name(node)}"
    if node.target is torch.einsum:
        return b.call(kernels.einsum_transpose, s, node.args[0], b[a], b[other], i, name=name)
    if i == 0:
        return b.call(kernels.matmul_lhs_transpose, s, b[other], name=name)
    return b.call(kernels.matmul_rhs_transpose, b[a], s, name=name)


@relevance(operator.matmul, torch.einsum, rule=(Epsilon, Norm))
def _product(b: Builder, node: fx.Node, rel: fx.Node, rule: Epsilon | Norm
             ) -> list[Contribution]:
    """``A @ B``: the ε-rule on each operand that carries relevance, halved when both do."""
    operands = _operands(node)
    receiving = [x for x in operands if receives(x)]
    tag = b.name(node)
    z = b.call(rt.stabilize, b[node], stabilizer(b, rule, b[node], tag), name=f"z_{tag}")
    s = b.call(operator.truediv, rel, z, name=f"s_{tag}")
    if len(receiving) == 2:
        s = b.call(operator.mul, s, 0.5, name=f"s_{tag}")  # the uniform share of each operand
    out = []
    for i, x in enumerate(operands):
        if x in receiving:
            r = b.call(operator.mul, b[x], _transpose(b, node, s, i), name=f"r_{tag}")
            out.append((x, b.call(rt.unbroadcast, r, b[x], name=f"r_{tag}")))
    return out  # type: ignore[return-value]
