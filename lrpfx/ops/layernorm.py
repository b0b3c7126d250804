"""LayerNorm with the LN-rule of Ali et al. 2022 (``rules.LNRule``): the normalizer is a constant.

``y = w ⊙ (x − mean(x)) / σ + b`` is then linear in ``x``; its transpose applied to
``s = R / stabilize(z)`` is ``t − mean(t)`` with ``t = w ⊙ s / σ`` (over the normalized
dimensions), and ``R_in = x ⊙ (t − mean(t))``. ConvNeXt's channels-first ``LayerNorm2d`` is a
permute, this op, and a permute back, all canonical.
"""

from __future__ import annotations

import operator
from typing import Any

import torch.nn.functional as F
from torch import fx, nn

from lrpfx import runtime as rt
from lrpfx.builder import Builder
from lrpfx.ops.table import (
    Call,
    Contribution,
    Converted,
    OpKind,
    Param,
    Unsupported,
    defop,
    relevance,
    spell,
)
from lrpfx.rules import LNRule, Pass

defop(F.layer_norm, kind=OpKind.LAYERNORM)


def _bind(normalized_shape: Any, weight: Any = None, bias: Any = None,
          eps: float = 1e-5) -> Converted:
    return Call(F.layer_norm, (tuple(normalized_shape), weight, bias, eps))


def _module(m: nn.LayerNorm) -> Converted:
    if type(m).forward is not nn.LayerNorm.forward:
        return Unsupported(f"{type(m).__qualname__} overrides LayerNorm.forward; do not mark it "
                           "as a leaf module, so its forward is traced")
    return Call(F.layer_norm, (tuple(m.normalized_shape), Param("weight", m.weight),
                               Param("bias", m.bias), m.eps))


spell(F.layer_norm, modules={nn.LayerNorm: _module}, bind=_bind)


@relevance(F.layer_norm, rule=Pass)
def _pass(b: Builder, node: fx.Node, rel: fx.Node, rule: Pass) -> list[Contribution]:
    """Pass: ``R_in = R_out``."""
    return [(node.args[0], rel)]  # type: ignore[list-item]


@relevance(F.layer_norm, rule=LNRule)
def _ln_rule(b: Builder, node: fx.Node, rel: fx.Node, rule: LNRule) -> list[Contribution]:
    """LN-rule: ``R_i = x_i (t_i − mean(t))``, ``t = w ⊙ R / (σ stabilize(z))``."""
    x, shape, weight, bias, eps = node.args
    assert isinstance(x, fx.Node)
    tag = b.name(node)
    z = b[node]
    if rule.ignore_bias and isinstance(bias, fx.Node):
        z = b.call(operator.sub, z, b[bias], name=f"z_{tag}")
    s = b.call(operator.truediv, rel, b.call(rt.stabilize, z, rule.stabilizer, name=f"z_{tag}"),
               name=f"s_{tag}")
    c = b.call(rt.layer_norm_transpose, s, b[x], shape, b.map(weight), eps, name=f"c_{tag}")
    return [(x, b.call(operator.mul, b[x], c, name=f"r_{tag}"))]
