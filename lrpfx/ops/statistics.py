"""Norms written by hand, and ``addcmul``.

A normalizer computed in ``forward`` (``x.var()``, ``torch.var_mean``, ``x.std()``,
``x.norm()``, ``torch.linalg.vector_norm``, a mean of squares: ``passes.expand``), as timm's
``LayerNorm2d`` and RMSNorm fallbacks, EvoNorm and ``GlobalResponseNorm`` write it, is a
*statistic* of the input: it is computed in the forward and held constant in the backward (the
op table's ``statistic`` fact: it carries no relevance), as the LN-rule holds σ constant (Ali et
al. 2022). What is computed from it alone (``rsqrt(var + eps)``, ``x_g / x_g.mean()``) carries
none either, so ``x * rsqrt(var + eps)`` is a product with a constant factor (relevance passes
to ``x``) and ``x / std`` a division by a constant. The centering ``x - mean(x)`` stays a
difference of two tensors that carry relevance: with the Norm rule and the mean's transpose it
gives ``R_i = x_i (s_i − mean(s))``, the LN-rule's centering. ``torch.var_mean``'s mean is held
constant with its variance (a bias-like shift).

``addcmul(c, a, u, value=v) = c + v · a ⊙ u``: a sum (Norm/ε) of ``c`` and the product, whose
relevance goes to its one factor that carries relevance (a product with a constant factor);
``R_c = c s``, ``R_prod = v a u s``, ``s = R / stabilize(z)``; with ``ignore_bias`` a constant
``c`` keeps nothing and ``R`` passes to the product. Two factors that both carry are refused.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx

from lrpfx import kernels
from lrpfx import runtime as rt
from lrpfx.builder import Builder
from lrpfx.ops.table import (
    Call,
    Contribution,
    OpKind,
    carries,
    defop,
    relevance,
    spell,
    unsupported,
)
from lrpfx.rules import Epsilon, Norm

defop(torch.var, "var", torch.std, "std", torch.var_mean, torch.std_mean, torch.norm, "norm",
      torch.linalg.vector_norm, torch.linalg.norm, kernels.mean_square, kind=OpKind.LAYERNORM,
      statistic=True)

defop(torch.addcmul, kind=OpKind.ADD)
spell(torch.addcmul, "addcmul",
      bind=lambda tensor1, tensor2, *, value=1: Call(torch.addcmul, (tensor1, tensor2),
                                                      {"value": value}))


@relevance(torch.addcmul, rule=(Norm, Epsilon))
def _addcmul(b: Builder, node: fx.Node, rel: fx.Node, rule: Norm | Epsilon
             ) -> list[Contribution]:
    """``c + v a ⊙ u``: ``R_c = c s``, the product's ``v a u s`` to its factor from the input."""
    c, a, u = node.args
    value = node.kwargs.get("value", 1)
    factors = [f for f in (a, u) if carries(f)]
    if len(factors) > 1:
        raise unsupported(node, "addcmul of two tensors computed from the input; write the "
                          "product a * u and the sum separately")
    tag = b.name(node)
    out: list[Contribution] = []
    if not factors:
        product = None
    elif rule.ignore_bias and not carries(c):
        product = rel
    else:
        z = b.call(rt.stabilize, b[node], rule.stabilizer, name=f"z_{tag}")
        s = b.call(operator.truediv, rel, z, name=f"s_{tag}")
        product = b.call(operator.mul, _product(b, node, a, u, value), s, name=f"r_{tag}")
        if carries(c):
            r = b.call(operator.mul, b[c], s, name=f"r_{tag}")
            out.append((c, b.call(rt.unbroadcast, r, b[c], name=f"r_{tag}")))  # type: ignore[arg-type]
    if product is not None:
        f = factors[0]
        out.append((f, b.call(rt.unbroadcast, product, b[f], name=f"r_{tag}")))  # type: ignore[arg-type]
    return out


def _product(b: Builder, node: fx.Node, a: Any, u: Any, value: Any) -> fx.Node:
    """``value · a ⊙ u`` in the program."""
    tag = b.name(node)
    p = b.call(operator.mul, b.map(a), b.map(u), name=f"p_{tag}")
    return p if value == 1 else b.call(operator.mul, p, value, name=f"p_{tag}")
