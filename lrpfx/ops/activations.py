"""Elementwise activations: relevance passes (``Pass``), or follows the forward mask
(``Gradient``, for the piecewise-linear ones: PatternNet's ReLUs).

Identities: ``Pass``: ``R_in = R_out``. ``Gradient``: ``R_in = f'(x) ⊙ R_out`` (ReLU:
``1[x > 0]``; ReLU6 and Hardtanh: 1 inside the clipping range; LeakyReLU: its slope below 0).
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx

from lrpfx.builder import Builder
from lrpfx.ops.table import Contribution, OpKind, defop, relevance
from lrpfx.rules import Gradient, Pass, Rule

ACTIVATION = OpKind.ACTIVATION
PIECEWISE_LINEAR = (torch.relu, F.relu6, F.hardtanh, F.leaky_relu)

defop(torch.relu, F.relu6, F.softplus, kind=ACTIVATION, nonneg=True)
defop(torch.sigmoid, F.hardsigmoid, F.softmax, kind=ACTIVATION, nonneg=True, gate=True)
defop(F.hardtanh, torch.tanh, F.silu, F.gelu, F.elu, F.selu, F.celu, F.leaky_relu, F.hardswish,
      F.mish, F.logsigmoid, F.softsign, F.tanhshrink, kind=ACTIVATION)


@relevance(*PIECEWISE_LINEAR, torch.sigmoid, F.hardsigmoid, F.softmax, F.softplus, torch.tanh,
           F.silu, F.gelu, F.elu, F.selu, F.celu, F.hardswish, F.mish, F.logsigmoid, F.softsign,
           F.tanhshrink, rule=Pass)
def _pass(b: Builder, node: fx.Node, rel: fx.Node, rule: Rule) -> list[Contribution]:
    """Pass: ``R_in = R_out`` (a softmax inside the network too, e.g. a gate)."""
    return [(node.args[0], rel)]  # type: ignore[list-item]


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
