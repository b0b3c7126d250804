"""The n-ary family: sums and differences of tensors, products (scales and gates), division by
constants, reductions (``mean``/``sum`` over dimensions), and shape arithmetic.

Identities (``s = R / stabilize(z)``, ``z`` the node's output):

- ``z = a ± c`` (two tensors, Norm): ``R_a = a s``, ``R_c = ± c s``; broadcast inputs sum their
  share back to their shape. A constant operand is a bias: it keeps its share, or, when the rule
  ignores biases, the op is the identity and ``R`` passes to the tensor.
- ``z = a * c`` with a constant factor (layer scale): ``R_a = R``. Two tensor factors: the
  ``Gating`` rule decides the shares (a sigmoid/softmax factor is a gate; the signal takes all).
- ``z = mean(x, dims)`` / ``sum(x, dims)``: the linear family with the transposed reduction.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import fx

from lrpfx import meta
from lrpfx.builder import Builder
from lrpfx.errors import UnsupportedOperationError
from lrpfx.ops import functional as lf
from lrpfx.ops.linear import LinearOp, linear_rule
from lrpfx.ops.registry import Contribution, register
from lrpfx.ops.values import carries, is_gate, is_shape
from lrpfx.rules import Epsilon, Flat, Gating, Norm, Pass, Rule


def unbroadcast(r: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The transpose of broadcasting ``like`` to ``r``'s shape: sum over the broadcast dims."""
    return r if r.shape == like.shape else r.sum_to_size(like.shape)


def mean_transpose(s: torch.Tensor, x: torch.Tensor, dim: int | Sequence[int] | None,
                   keepdim: bool) -> torch.Tensor:
    """The transpose of ``torch.mean(·, dim, keepdim)`` applied to ``s``, shaped like ``x``."""
    dims = _dims(x, dim)
    return sum_transpose(s, x, dim, keepdim) / math.prod(x.shape[d] for d in dims)


def sum_transpose(s: torch.Tensor, x: torch.Tensor, dim: int | Sequence[int] | None,
                  keepdim: bool) -> torch.Tensor:
    """The transpose of ``torch.sum(·, dim, keepdim)`` applied to ``s``, shaped like ``x``."""
    if not keepdim:
        for d in _dims(x, dim):
            s = s.unsqueeze(d)
    return s.expand_as(x)


def _dims(x: torch.Tensor, dim: int | Sequence[int] | None) -> list[int]:
    if dim is None:
        return list(range(x.dim()))
    return sorted(d % x.dim() for d in ([dim] if isinstance(dim, int) else dim))


def unsupported(node: fx.Node, why: str) -> UnsupportedOperationError:
    """The error for a node whose arguments this family cannot explain (raised at codegen)."""
    return UnsupportedOperationError(
        [f"{node.name} ({node.meta.get(meta.ORIGIN) or node.target}): {why}"],
        "Fix: rewrite the expression, or register an implementation with @lrpfx.register.",
    )


def _takes_rule(node: fx.Node) -> bool:
    return not is_shape(node)


@register(operator.add, operator.sub, kind="add", rules=(Norm, Epsilon), needs_rule=_takes_rule)
def _add(b: Builder, node: fx.Node, rel: fx.Node, rule: Rule | None) -> list[Contribution]:
    """``a ± c``: relevance in proportion to the contributions ``a`` and ``± c`` (Norm)."""
    if is_shape(node):
        return []
    signs = (1.0, 1.0 if node.target is operator.add else -1.0)
    terms = [(a, sign) for a, sign in zip(node.args[:2], signs, strict=True)
             if isinstance(a, fx.Node) and carries(a)]
    tag = b.name(node)
    ignore_bias = bool(getattr(rule, "ignore_bias", False))
    if len(terms) == 1 and ignore_bias:  # ± x + bias with the bias ignored: the identity
        a = terms[0][0]
        return [(a, b.call(unbroadcast, rel, b[a], name=f"r_{tag}"))]
    stabilizer = rule.stabilizer if rule is not None else Norm().stabilizer
    z = b.call(lf.stabilize, b[node], stabilizer, name=f"z_{tag}")
    s = b.call(operator.truediv, rel, z, name=f"s_{tag}")
    out = []
    for a, sign in terms:
        r = b.call(operator.mul, b[a], s, name=f"r_{tag}")
        if sign < 0:
            r = b.call(operator.neg, r, name=f"r_{tag}")
        out.append((a, b.call(unbroadcast, r, b[a], name=f"r_{tag}")))
    return out


def _two_tensors(node: fx.Node) -> bool:
    return sum(carries(a) for a in node.args[:2]) == 2


@register(operator.mul, kind="mul", rules=(Gating,), needs_rule=_two_tensors)
def _mul(b: Builder, node: fx.Node, rel: fx.Node, rule: Gating | None) -> list[Contribution]:
    """``a * c``: a constant factor passes relevance; two tensors share it by ``Gating``."""
    if is_shape(node):
        return []
    tensors = [a for a in node.args[:2] if isinstance(a, fx.Node) and carries(a)]
    tag = b.name(node)
    if len(tensors) == 1:  # a scale (layer scale, constant): R_x = R
        return [(tensors[0], b.call(unbroadcast, rel, b[tensors[0]], name=f"r_{tag}"))]
    assert rule is not None
    out = []
    for f, share in zip(tensors, rule.shares(*(is_gate(f) for f in tensors)), strict=True):
        if share == 0.0:
            continue
        r = rel if share == 1.0 else b.call(operator.mul, rel, share, name=f"r_{tag}")
        out.append((f, b.call(unbroadcast, r, b[f], name=f"r_{tag}")))
    return out


@register(operator.truediv, operator.neg, kind="scale")
def _scale(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    """``x / c`` and ``-x``: a scale, relevance passes (``R_x = x (1/c) R / (x/c) = R``)."""
    if is_shape(node):
        return []
    x = node.args[0]
    if node.target is operator.truediv and carries(node.args[1]):
        raise unsupported(node, "division by a tensor computed from the input")
    if not carries(x):
        return []
    return [(x, b.call(unbroadcast, rel, b[x], name=f"r_{b.name(node)}"))]  # type: ignore[list-item]


@register(operator.floordiv, operator.mod, operator.pow, kind="shape")
def _integer(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    """Shape arithmetic (``channels // groups``) carries no relevance."""
    if not is_shape(node):
        raise unsupported(node, f"{getattr(node.target, '__name__', node.target)} of tensors "
                                 "has no relevance implementation")
    return []


def _reduction(transpose: Callable[..., torch.Tensor]) -> LinearOp:
    return LinearOp(
        forward=lambda b, n, x, w, bias: b.call(n.target, x, *b.map(n.args[1:]),
                                                name=f"z_{b.name(n)}"),
        transpose=lambda b, n, s, w: b.call(transpose, s, b[n.args[0]], *b.map(n.args[1:]),
                                            name=f"c_{b.name(n)}"),
    )


REDUCTION_RULES = (Epsilon, Norm, Flat)
register(torch.mean, kind="sum", rules=REDUCTION_RULES)(linear_rule(_reduction(mean_transpose)))
register(torch.sum, kind="sum", rules=REDUCTION_RULES)(linear_rule(_reduction(sum_transpose)))


@register(F.softmax, kind="activation", rules=(Pass,))
def _softmax(b: Builder, node: fx.Node, rel: fx.Node, rule: Rule) -> list[Contribution]:
    """Pass: a softmax inside the network (e.g. a gate whose share is not zero) passes ``R``."""
    return [(node.args[0], rel)]  # type: ignore[list-item]
