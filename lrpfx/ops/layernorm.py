"""LayerNorm, RMSNorm and ``F.normalize`` with the LN-rule of Ali et al. 2022 (``rules.LNRule``):
the normalizer is a constant.

``y = w ⊙ (x − mean(x)) / σ + b`` is then linear in ``x``; its transpose applied to
``s = R / stabilize(z)`` is ``t − mean(t)`` with ``t = w ⊙ s / σ`` (over the normalized
dimensions), and ``R_in = x ⊙ (t − mean(t))``. ConvNeXt's channels-first ``LayerNorm2d`` is a
permute, this op, and a permute back, all canonical.

RMSNorm ``y = w ⊙ x / rms(x)`` and ``F.normalize`` ``y = x / ‖x‖`` do not center: with the
normalizer constant they are diagonal maps, and the ε-rule on them is ``R_in = y ⊙ R /
stabilize(y)``, the identity up to the stabilizer (AttnLRP's identity rule for RMSNorm).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
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
    aten,
    defop,
    pass_through,
    relevance,
    spell,
)
from lrpfx.rules import LNRule, Pass

defop(F.layer_norm, F.rms_norm, F.normalize, kind=OpKind.LAYERNORM)


def _bind(normalized_shape: Any, weight: Any = None, bias: Any = None,
          eps: float = 1e-5, cudnn_enable: Any = True) -> Converted:
    return Call(F.layer_norm, (tuple(normalized_shape), weight, bias, eps))


def _module(m: nn.LayerNorm) -> Converted:
    if type(m).forward is not nn.LayerNorm.forward:
        return Unsupported(f"{type(m).__qualname__} overrides LayerNorm.forward; do not mark it "
                           "as a leaf module, so its forward is traced")
    return Call(F.layer_norm, (tuple(m.normalized_shape), Param("weight", m.weight),
                               Param("bias", m.bias), m.eps))


spell(F.layer_norm, aten.layer_norm.default, modules={nn.LayerNorm: _module}, bind=_bind)
spell(F.rms_norm, modules={nn.RMSNorm: lambda m: (
    tuple(m.normalized_shape), Param("weight", m.weight), m.eps)},
    bind=lambda normalized_shape, weight=None, eps=None: Call(
        F.rms_norm, (tuple(normalized_shape), weight, eps)))
spell(F.normalize, bind=lambda p=2.0, dim=1, eps=1e-12, out=None: Call(F.normalize, (p, dim, eps)))


relevance(F.layer_norm, F.rms_norm, F.normalize, rule=Pass)(pass_through)


def held_normalizer(b: Builder, node: fx.Node, rel: fx.Node, rule: LNRule,
                    transpose: Callable[..., Any], unshift: Callable[..., Any]
                    ) -> list[Contribution]:
    """The LN-rule of a centering norm ``op(x, shape, weight, bias, eps)`` whose normalizer is
    held constant: ``R_i = x_i · transpose(s)_i``, ``s = R / stabilize(z)`` (``z = y``, or
    ``unshift(y, bias)`` with ``ignore_bias``)."""
    x, shape, weight, bias, eps = node.args
    assert isinstance(x, fx.Node)
    tag = b.name(node)
    z = b[node]
    if rule.ignore_bias and isinstance(bias, fx.Node):
        z = b.call(unshift, z, b[bias], name=f"z_{tag}")
    s = b.call(operator.truediv, rel, b.call(rt.stabilize, z, rule.stabilizer, name=f"z_{tag}"),
               name=f"s_{tag}")
    c = b.call(transpose, s, b[x], shape, b.map(weight), eps, name=f"c_{tag}")
    return [(x, b.call(operator.mul, b[x], c, name=f"r_{tag}"))]


@relevance(F.layer_norm, rule=LNRule)
def _ln_rule(b: Builder, node: fx.Node, rel: fx.Node, rule: LNRule) -> list[Contribution]:
    """LN-rule: ``R_i = x_i (t_i − mean(t))``, ``t = w ⊙ R / (σ stabilize(z))``."""
    return held_normalizer(b, node, rel, rule, rt.layer_norm_transpose, operator.sub)


@relevance(F.rms_norm, F.normalize, rule=LNRule)
def _scale_rule(b: Builder, node: fx.Node, rel: fx.Node, rule: LNRule) -> list[Contribution]:
    """A normalizer without centering, held constant: ``R_in = y ⊙ R / stabilize(y)``."""
    tag = b.name(node)
    z = b.call(rt.stabilize, b[node], rule.stabilizer, name=f"z_{tag}")
    s = b.call(operator.truediv, rel, z, name=f"s_{tag}")
    return [(node.args[0], b.call(operator.mul, b[node], s, name=f"r_{tag}"))]  # type: ignore[list-item]
