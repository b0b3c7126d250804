"""LayerNorm with the LN-rule of Ali et al. 2022 (``rules.LNRule``): the normalizer is a constant.

``y = w ⊙ (x − mean(x)) / σ + b`` is then linear in ``x``; its transpose applied to
``s = R / stabilize(z)`` is ``t − mean(t)`` with ``t = w ⊙ s / σ`` (over the normalized
dimensions), and ``R_in = x ⊙ (t − mean(t))``. ConvNeXt's channels-first ``LayerNorm2d`` is a
permute, this op, and a permute back, all canonical.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import fx

from lrpfx.builder import Builder
from lrpfx.ops import functional as lf
from lrpfx.ops.registry import Contribution, register
from lrpfx.rules import LNRule, Pass, Rule


def layer_norm_transpose(
    s: torch.Tensor, x: torch.Tensor, normalized_shape: Sequence[int],
    weight: torch.Tensor | None, eps: float,
) -> torch.Tensor:
    """``Wᵀ s`` for ``W = diag(w / σ) (I − 1/N)``, the Jacobian of LayerNorm at constant σ."""
    dims = tuple(range(-len(normalized_shape), 0))
    sigma = torch.sqrt(x.var(dims, unbiased=False, keepdim=True) + eps)
    t = s / sigma if weight is None else s * weight / sigma
    return t - t.mean(dims, keepdim=True)


@register(F.layer_norm, kind="layernorm", rules=(LNRule, Pass))
def _layer_norm(b: Builder, node: fx.Node, rel: fx.Node, rule: Rule) -> list[Contribution]:
    """LN-rule: ``R_i = x_i (t_i − mean(t))``, ``t = w ⊙ R / (σ stabilize(z))``; Pass: ``R``."""
    x, shape, weight, bias, eps = node.args
    assert isinstance(x, fx.Node) and isinstance(rule, (LNRule, Pass))
    if isinstance(rule, Pass):
        return [(x, rel)]
    tag = b.name(node)
    z = b[node]
    if rule.ignore_bias and isinstance(bias, fx.Node):
        z = b.call(operator.sub, z, b[bias], name=f"z_{tag}")
    s = b.call(operator.truediv, rel, b.call(lf.stabilize, z, rule.stabilizer, name=f"z_{tag}"),
               name=f"s_{tag}")
    c = b.call(layer_norm_transpose, s, b[x], shape, b.map(weight), eps, name=f"c_{tag}")
    return [(x, b.call(operator.mul, b[x], c, name=f"r_{tag}"))]
