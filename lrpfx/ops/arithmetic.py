"""Arithmetic: sums and differences of tensors, products (scales and gates), division by
constants, reductions (``mean``/``sum`` over dimensions), and Python integer arithmetic.

Identities (``s = R / stabilize(z)``, ``z`` the node's output):

- ``z = a ± c`` (two tensors, Norm): ``R_a = a s``, ``R_c = ± c s``; broadcast inputs sum their
  share back to their shape. A constant operand is a bias: it keeps its share, or, when the rule
  ignores biases, the op is the identity and ``R`` passes to the tensor.
- ``z = a * c`` with a constant factor (layer scale): ``R_a = R``; ``a / c`` likewise, and
  ``a / n`` with ``n`` a sum, mean or maximum of ``a`` itself (a normalizer, held constant).
  Two tensor factors: the ``Gating`` rule decides the shares (a sigmoid/softmax factor is a
  gate; the signal takes all).
- ``z = mean(x, dims)`` / ``sum(x, dims)``: the linear family with the transposed reduction.
- ``//``, ``%``, ``**``: shape arithmetic only (``channels // groups``); on tensors they have
  no row, and ``check`` says so.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import fx

from lrpfx import meta
from lrpfx import runtime as rt
from lrpfx.builder import Builder
from lrpfx.ops.linear import LinearOp, linear_rule
from lrpfx.ops.table import (
    OPS,
    Call,
    Contribution,
    Converted,
    OpKind,
    Unsupported,
    aten,
    carries,
    defop,
    relevance,
    spell,
    unsupported,
)
from lrpfx.rules import Epsilon, Flat, Gating, Norm

defop(operator.add, operator.sub, kind=OpKind.ADD)
defop(operator.mul, kind=OpKind.MUL,
      rule_when=lambda node: sum(carries(a) for a in node.args[:2]) == 2)
defop(operator.truediv, operator.neg, kind=OpKind.SCALE)
defop(operator.floordiv, operator.mod, kind=OpKind.SHAPE)
defop(torch.mean, torch.sum, kind=OpKind.SUM)


def _arithmetic(fn: Callable[..., Any]) -> Callable[..., Converted]:
    def bind(other: Any, *, alpha: Any = 1, rounding_mode: Any = None) -> Converted:
        if alpha != 1:
            return Unsupported(f"{fn.__name__} with alpha={alpha}: write the product explicitly")
        if rounding_mode is not None:
            return Unsupported(f"division with rounding_mode={rounding_mode!r}")
        return Call(fn, (other,))
    return bind


def _reduce(fn: Callable[..., Any]) -> Callable[..., Converted]:
    def bind(dim: Any = None, keepdim: bool = False, *, dtype: Any = None,
             axis: Any = None) -> Converted:
        if dtype is not None:
            return Unsupported(f"{fn.__name__} with dtype={dtype}: cast before or after instead")
        dim = axis if dim is None else dim
        return Call(fn, (tuple(dim) if isinstance(dim, (list, tuple)) else dim, keepdim))
    return bind


spell(operator.add, torch.add, "add", aten.add.Tensor, in_place=(operator.iadd, "add_"),
      bind=_arithmetic(operator.add))
spell(operator.sub, torch.sub, torch.subtract, "sub", "subtract", aten.sub.Tensor,
      in_place=(operator.isub, "sub_"), bind=_arithmetic(operator.sub))
spell(operator.mul, torch.mul, torch.multiply, "mul", "multiply", aten.mul.Tensor,
      in_place=(operator.imul, "mul_"), bind=_arithmetic(operator.mul))
spell(operator.truediv, torch.div, torch.divide, torch.true_divide, "div", "divide",
      aten.div.Tensor, in_place=(operator.itruediv, "div_"), bind=_arithmetic(operator.truediv))
spell(operator.neg, torch.neg, aten.neg.default)
spell(torch.mean, "mean", aten.mean.dim, bind=_reduce(torch.mean))
spell(torch.sum, "sum", aten.sum.dim_IntList, bind=_reduce(torch.sum))


@relevance(operator.add, operator.sub, rule=(Norm, Epsilon))
def _add(b: Builder, node: fx.Node, rel: fx.Node, rule: Norm | Epsilon) -> list[Contribution]:
    """``a ± c``: relevance in proportion to the contributions ``a`` and ``± c`` (Norm)."""
    signs = (1.0, 1.0 if node.target is operator.add else -1.0)
    terms = [(a, sign) for a, sign in zip(node.args[:2], signs, strict=True)
             if isinstance(a, fx.Node) and carries(a)]
    tag = b.name(node)
    if len(terms) == 1 and rule.ignore_bias:  # ± x + bias with the bias ignored: the identity
        a = terms[0][0]
        return [(a, b.call(rt.unbroadcast, rel, b[a], name=f"r_{tag}"))]
    z = b.call(rt.stabilize, b[node], rule.stabilizer, name=f"z_{tag}")
    s = b.call(operator.truediv, rel, z, name=f"s_{tag}")
    out = []
    for a, sign in terms:
        r = b.call(operator.mul, b[a], s, name=f"r_{tag}")
        if sign < 0:
            r = b.call(operator.neg, r, name=f"r_{tag}")
        out.append((a, b.call(rt.unbroadcast, r, b[a], name=f"r_{tag}")))
    return out


@relevance(operator.mul)
def _scale_by_constant(b: Builder, node: fx.Node, rel: fx.Node, rule: None
                       ) -> list[Contribution]:
    """``x * c`` with a constant ``c`` (layer scale): ``R_x = R``."""
    x = next(a for a in node.args[:2] if isinstance(a, fx.Node) and carries(a))
    return [(x, b.call(rt.unbroadcast, rel, b[x], name=f"r_{b.name(node)}"))]


def _gates(factors: list[fx.Node]) -> list[bool]:
    """Which factors of a product are gates: those in ``[0, 1]`` (sigmoid, softmax); when
    neither is, an activation's output against a factor that is none (a gated linear unit:
    SwiGLU's ``silu(gate(x)) * up(x)``, GEGLU)."""
    gates = [bool(f.meta.get(meta.GATE)) for f in factors]
    if any(gates):
        return gates
    return [f.meta.get(meta.KIND) == OpKind.ACTIVATION for f in factors]


@relevance(operator.mul, rule=Gating)
def _gated(b: Builder, node: fx.Node, rel: fx.Node, rule: Gating) -> list[Contribution]:
    """``a * c`` of two tensors: ``Gating`` shares ``R`` (a gate's share, the signal's share)."""
    tensors = [a for a in node.args[:2] if isinstance(a, fx.Node)]
    tag = b.name(node)
    out = []
    for f, share in zip(tensors, rule.shares(*_gates(tensors)), strict=True):
        if share == 0.0:
            continue
        r = rel if share == 1.0 else b.call(operator.mul, rel, share, name=f"r_{tag}")
        out.append((f, b.call(rt.unbroadcast, r, b[f], name=f"r_{tag}")))
    return out


@relevance(operator.truediv, operator.neg)
def _scale(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    """``x / c`` and ``-x``: a scale, relevance passes (``R_x = x (1/c) R / (x/c) = R``)."""
    x = node.args[0]
    if node.target is operator.truediv and carries(node.args[1]) and not _normalizer(
            node.args[1], x):
        raise unsupported(node, "division by a tensor computed from the input (other than a "
                          "sum, mean or maximum of the numerator, held constant)")
    if not carries(x):
        return []
    return [(x, b.call(rt.unbroadcast, rel, b[x], name=f"r_{b.name(node)}"))]  # type: ignore[list-item]


_FOLLOWED = (OpKind.RESHAPE, OpKind.ROUTING, OpKind.ADD, OpKind.SCALE, OpKind.MUL)


def _normalizer(divisor: Any, x: Any) -> bool:
    """Whether ``divisor`` is a sum, mean or maximum of ``x`` itself (maybe re-indexed, shifted
    or scaled: ``x.sum(-1).unsqueeze(-1) + eps``): a normalizer, held constant like the
    LN-rule's σ, so ``x / divisor`` is a scale (ConViT: ``attn /= attn.sum(-1, keepdim)``)."""
    while isinstance(divisor, fx.Node) and divisor.op == "call_function" and divisor.args:
        if divisor.target in (torch.sum, torch.mean, torch.amax):
            return divisor.args[0] is x
        facts = OPS.get(divisor.target)  # type: ignore[arg-type]
        if facts is None or facts.kind not in _FOLLOWED:
            return False
        divisor = divisor.args[0]
    return False


def _reduction(transpose: Callable[..., torch.Tensor]) -> LinearOp:
    return LinearOp(
        forward=lambda b, n, x, w, bias: b.call(n.target, x, *b.map(n.args[1:]),
                                                name=f"z_{b.name(n)}"),
        transpose=lambda b, n, s, w: b.call(transpose, s, b[n.args[0]], *b.map(n.args[1:]),
                                            name=f"c_{b.name(n)}"),
    )


REDUCTION_RULES = (Epsilon, Norm, Flat)
relevance(torch.mean, rule=REDUCTION_RULES)(linear_rule(_reduction(rt.mean_transpose)))
relevance(torch.sum, rule=REDUCTION_RULES)(linear_rule(_reduction(rt.sum_transpose)))

