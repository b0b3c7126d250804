"""Ops that move relevance without a layer rule: activations, re-indexings, shape queries."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx

from lrpfx.builder import Builder
from lrpfx.ops.registry import Contribution, register
from lrpfx.rules import Gradient, Pass, Rule

# Canonical elementwise activations (normalize maps every spelling onto one of these).
ACTIVATIONS = (
    torch.relu, F.relu6, F.hardtanh, torch.sigmoid, torch.tanh, F.silu, F.gelu, F.elu, F.selu,
    F.celu, F.leaky_relu, F.hardswish, F.hardsigmoid, F.softplus, F.mish, F.logsigmoid,
    F.softsign, F.tanhshrink,
)


@register(*ACTIVATIONS, kind="activation", rules=(Pass,))
def _activation(b: Builder, node: fx.Node, rel: fx.Node, rule: Rule) -> list[Contribution]:
    """Pass: ``R_in = R_out`` for an elementwise activation."""
    return [(node.args[0], rel)]  # type: ignore[list-item]


def _arg(node: fx.Node, index: int, name: str, default: float) -> float:
    """An activation's scalar argument, given by position or keyword."""
    if len(node.args) > index:
        return node.args[index]  # type: ignore[return-value]
    return node.kwargs.get(name, default)  # type: ignore[return-value]


def _linear_region(b: Builder, node: fx.Node) -> fx.Node:
    """Where a clipping activation has slope 1: ``x > 0`` (ReLU), ``0 < x < 6`` (ReLU6),
    ``min_val < x < max_val`` (Hardtanh)."""
    x, tag = b[node.args[0]], b.name(node)  # type: ignore[index]
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


@register(torch.relu, F.relu6, F.hardtanh, F.leaky_relu, kind="activation", rules=(Pass, Gradient))
def _piecewise_linear(b: Builder, node: fx.Node, rel: fx.Node, rule: Rule) -> list[Contribution]:
    """Pass, or Gradient: ``R_in = f'(x) ⊙ R_out``, the forward's mask (ReLU: ``1[x > 0]``);
    LeakyReLU scales by its slope where ``x <= 0``."""
    x = node.args[0]
    assert isinstance(x, fx.Node)
    if not isinstance(rule, Gradient):
        return [(x, rel)]
    tag = b.name(node)
    if node.target is F.leaky_relu:
        positive = b.call(operator.gt, b[x], 0.0, name=f"mask_{tag}")
        slope = _arg(node, 1, "negative_slope", 0.01)
        leak = b.call(operator.mul, rel, slope, name=f"r_{tag}")
        return [(x, b.call(torch.where, positive, rel, leak, name=f"r_{tag}"))]
    return [(x, b.call(operator.mul, rel, _linear_region(b, node), name=f"r_{tag}"))]


@register(torch.reshape, torch.flatten, torch.unflatten, kind="reshape")
def _reshape(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    """A re-indexing: relevance goes back to where each element came from."""
    x = node.args[0]
    assert isinstance(x, fx.Node)
    return [(x, b.method("reshape_as", rel, b[x], name=f"r_{b.name(node)}"))]


@register("size", "dim", getattr, kind="shape")
def _shape(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    """Shape queries carry no relevance."""
    return []
