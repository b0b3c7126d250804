"""Elementwise activations: relevance passes (``Pass``), or follows the forward mask
(``Gradient``, for the piecewise-linear ones: PatternNet's ReLUs).

Identities: ``Pass``: ``R_in = R_out``. ``Gradient``: ``R_in = f'(x) ⊙ R_out`` (ReLU:
``1[x > 0]``; ReLU6 and Hardtanh: 1 inside the clipping range; LeakyReLU: its slope below 0).
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from lrpfx.builder import Builder
from lrpfx.ops.table import (
    Call,
    Contribution,
    OpKind,
    aten,
    carries,
    defop,
    pass_through,
    relevance,
    spell,
    unsupported,
)
from lrpfx.rules import Gradient, Pass

ACTIVATION = OpKind.ACTIVATION
PIECEWISE_LINEAR = (torch.relu, F.relu6, F.hardtanh, F.leaky_relu)
defop(torch.relu, F.relu6, F.softplus, kind=ACTIVATION, nonneg=True)
defop(torch.sigmoid, F.hardsigmoid, kind=ACTIVATION, nonneg=True, gate=True)
defop(F.hardtanh, torch.tanh, F.silu, F.gelu, F.elu, F.selu, F.celu, F.leaky_relu, F.hardswish,
      F.mish, F.logsigmoid, F.softsign, F.tanhshrink, kind=ACTIVATION)


spell(torch.relu, F.relu, "relu", aten.relu.default, in_place=(torch.relu_, F.relu_, "relu_"),
      modules={nn.ReLU: None})
spell(F.relu6, modules={nn.ReLU6: None})
spell(F.hardtanh, aten.hardtanh.default, in_place=(F.hardtanh_,),
      modules={nn.Hardtanh: lambda m: (m.min_val, m.max_val)})
spell(torch.sigmoid, F.sigmoid, "sigmoid", aten.sigmoid.default,
      in_place=(torch.sigmoid_, "sigmoid_"),
      modules={nn.Sigmoid: None})
spell(torch.tanh, F.tanh, "tanh", aten.tanh.default, in_place=(torch.tanh_, "tanh_"),
      modules={nn.Tanh: None})
spell(F.silu, aten.silu.default, modules={nn.SiLU: None})
spell(F.gelu, aten.gelu.default,
      modules={nn.GELU: lambda m: Call(F.gelu, (), {"approximate": m.approximate})})
spell(F.elu, in_place=(F.elu_,), modules={nn.ELU: lambda m: (m.alpha,)})
spell(F.selu, torch.selu, in_place=(torch.selu_,), modules={nn.SELU: None})
spell(F.celu, in_place=(F.celu_,), modules={nn.CELU: lambda m: (m.alpha,)})
spell(F.leaky_relu, in_place=(F.leaky_relu_,),
      modules={nn.LeakyReLU: lambda m: (m.negative_slope,)})
spell(F.hardswish, "hardswish", aten.hardswish.default, modules={nn.Hardswish: None})
spell(F.hardsigmoid, aten.hardsigmoid.default, modules={nn.Hardsigmoid: None})
spell(F.softplus, modules={nn.Softplus: lambda m: (m.beta, m.threshold)})
spell(F.mish, modules={nn.Mish: None})
spell(F.logsigmoid, modules={nn.LogSigmoid: None})
spell(F.softsign, modules={nn.Softsign: None})
spell(F.tanhshrink, modules={nn.Tanhshrink: None})


# a power of a tensor (StarReLU's ``relu(x) ** 2``) is an elementwise activation; ``square`` is
# the one spelling without an exponent, so the exponent defaults to 2
defop(operator.pow, kind=ACTIVATION)
spell(operator.pow, torch.pow, "pow", torch.square, "square", aten.pow.Tensor_Scalar,
      bind=lambda exponent=2: Call(operator.pow, (exponent,)))


@relevance(operator.pow, rule=Pass)
def _power(b: Builder, node: fx.Node, rel: fx.Node, rule: Pass) -> list[Contribution]:
    """``x ** c`` passes its relevance to ``x``; a computed exponent has no rule."""
    if carries(node.args[1]):
        raise unsupported(node, "a power with an exponent computed from the input")
    return [(node.args[0], rel)]  # type: ignore[list-item]


relevance(*PIECEWISE_LINEAR, torch.sigmoid, F.hardsigmoid, F.softplus, torch.tanh,
          F.silu, F.gelu, F.elu, F.selu, F.celu, F.hardswish, F.mish, F.logsigmoid, F.softsign,
          F.tanhshrink, rule=Pass)(pass_through)


def _arg(node: fx.Node, index: int, name: str, default: float) -> float:
    """An activation's scalar argument, given by position or keyword."""
    if len(node.args) > index:
        return node.args[index]  # type: ignore[return-value]
    return node.kwargs.get(name, default)  # type: ignore[return-value]


def _linear_region(b: Builder, node: fx.Node) -> fx.Node:
    """Where a clipping activation has slope 1: ``x > 0`` (ReLU), ``0 < x < 6`` (ReLU6),
    ``min_val < x < max_val`` (Hardtanh)."""
    x, tag = b[node.args[0]], b.name(node)
    low, high = 0.0, None
    if node.target is F.relu6:
        high = 6.0
    elif node.target is F.hardtanh:
        low, high = _arg(node, 1, "min_val", -1.0), _arg(node, 2, "max_val", 1.0)
    mask = b.call(operator.gt, x, low, name=f"mask_{tag}")
    if high is None:
        return mask
    below = b.call(operator.lt, x, high, name=f"mask_{tag}")
    return b.call(operator.and_, mask, below, name=f"mask_{tag}")


@relevance(*PIECEWISE_LINEAR, rule=Gradient)
def _gradient(b: Builder, node: fx.Node, rel: fx.Node, rule: Gradient) -> list[Contribution]:
    """Gradient: ``R_in = f'(x) ⊙ R_out``, the forward's mask; LeakyReLU scales by its slope
    where ``x <= 0``."""
    x = node.args[0]
    assert isinstance(x, fx.Node)
    tag = b.name(node)
    if node.target is F.leaky_relu:
        positive = b.call(operator.gt, b[x], 0.0, name=f"mask_{tag}")
        slope = _arg(node, 1, "negative_slope", 0.01)
        leak = b.call(operator.mul, rel, slope, name=f"r_{tag}")
        return [(x, b.call(torch.where, positive, rel, leak, name=f"r_{tag}"))]
    return [(x, b.call(operator.mul, rel, _linear_region(b, node), name=f"r_{tag}"))]
