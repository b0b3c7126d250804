"""Ops that move relevance without a layer rule: activations, re-indexings, shape queries."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx

from lrpfx.builder import Builder
from lrpfx.ops.registry import Contribution, register
from lrpfx.rules import Pass, Rule

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
