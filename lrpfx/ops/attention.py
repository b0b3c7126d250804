"""``F.scaled_dot_product_attention``: explained as what it computes,

    ``softmax(q kᵀ · scale + mask) v``

``passes.expand`` writes it out into those canonical ops, so each takes its rule from the
composite: the matrix products the ε-rule, halved between two computed operands (AttnLRP's
uniform rule: in the gradient frame each of the two products gives half its relevance to each
factor), the softmax its own rule (``SoftmaxTaylor`` in AttnLRP, ``Stop`` in CP-LRP).

Its own ops here: the scale of ``q`` (a scale: relevance passes, as for ``x / c``), the causal
mask (made from the shapes alone: no relevance), and the mask applied to the logits
``z = attention_mask(l, m)``: a boolean mask selects, as ``torch.where(m, l, -inf)`` does
(``R_l = where(m, R, 0)``); a float mask is a sum ``l + m`` with the add's rows (Norm/ε):
``s = R / stabilize(z)`` (0 where ``z = -inf``), ``R_l = l s``, a mask computed from the input
gets ``R_m = m s``, and with ``ignore_bias`` a constant mask is ignored (``R_l = R``).
"""

from __future__ import annotations

import operator
from typing import Any

import torch.nn.functional as F
from torch import fx

from lrpfx import attention, kernels, meta
from lrpfx import runtime as rt
from lrpfx.builder import Builder
from lrpfx.ops.bilinear import receives
from lrpfx.ops.table import Contribution, OpKind, carries, defop, relevance
from lrpfx.rules import Attention, Epsilon, Norm, SoftmaxTaylor, Stop

defop(kernels.attention_scale, kind=OpKind.SCALE)
defop(kernels.causal_mask, kind=OpKind.SHAPE, constant=True)
defop(kernels.attention_mask, kind=OpKind.ADD)


def arguments(q: Any, k: Any, v: Any, attn_mask: Any = None, dropout_p: Any = 0.0,
              is_causal: Any = False, scale: Any = None, enable_gqa: Any = False
              ) -> dict[str, Any]:
    """The arguments of an ``F.scaled_dot_product_attention`` call by name."""
    return {"q": q, "k": k, "v": v, "mask": attn_mask, "causal": is_causal, "scale": scale,
            "gqa": enable_gqa}


def _forward(b: Builder, node: fx.Node) -> fx.Node:
    """The fused attention's forward: ``lrpfx.attention.forward``, sdpa itself."""
    a = b.map(arguments(*node.args, **node.kwargs))
    return b.call(attention.forward, a["q"], a["k"], a["v"], a["mask"], a["causal"], a["scale"],
                  name=meta.display_name(node))


# rules.Attention is given by passes.fuse, never by a composite
defop(F.scaled_dot_product_attention, kind=OpKind.ATTENTION, rule_when=lambda node: False,
      forward=_forward)


@relevance(kernels.attention_scale)
def _scale(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    """``q · scale``: a scale, relevance passes (``R_q = q c R / (q c) = R``)."""
    return [(node.args[0], rel)]  # type: ignore[list-item]


@relevance(kernels.attention_mask, rule=(Norm, Epsilon))
def _mask(b: Builder, node: fx.Node, rel: fx.Node, rule: Norm | Epsilon) -> list[Contribution]:
    """``l ⊕ m``: selected (boolean ``m``) or ``R_l = l s``, ``R_m = m s`` (float ``m``)."""
    logits, mask = node.args[:2]
    assert isinstance(logits, fx.Node)
    tag = b.name(node)
    if rule.ignore_bias and not carries(mask):
        return [(logits, rel)]
    out = [(logits, b.call(kernels.mask_share, rel, b[logits], b[node], b.map(mask),
                           rule.stabilizer, name=f"r_{tag}"))]
    if isinstance(mask, fx.Node) and carries(mask):  # a float mask computed from the input
        s = b.call(kernels.finite_ratio, rel, b[node], rule.stabilizer, name=f"s_{tag}")
        r = b.call(operator.mul, b[mask], s, name=f"r_{tag}")
        out.append((mask, b.call(rt.unbroadcast, r, b[mask], name=f"r_{tag}")))
    return out


@relevance(F.scaled_dot_product_attention, rule=Attention)
def _fused(b: Builder, node: fx.Node, rel: fx.Node, rule: Attention) -> list[Contribution]:
    """The fused attention: ``lrpfx.attention.relevance``, block by block."""
    a = arguments(*node.args, **node.kwargs)
    operands = (a["q"], a["k"], a["v"])
    softmax = ("taylor" if isinstance(rule.softmax, SoftmaxTaylor)
               else "stop" if isinstance(rule.softmax, Stop) else "pass")
    scores = softmax != "stop"  # CP-LRP: the weights are held constant, q and k get nothing
    gets = (scores and receives(a["q"]), scores and receives(a["k"]), receives(a["v"]))
    mask = (0.0, False) if rule.mask is None else (rule.mask.stabilizer, rule.mask.ignore_bias)
    tag = b.name(node)
    out = b.call(attention.relevance, rel, *(b[x] for x in operands), b[node], b.map(a["mask"]),
                 a["causal"], a["scale"], softmax, rule.values.stabilizer,
                 rule.scores.stabilizer, mask, gets, name=f"r_{tag}")
    return [(x, b.call(operator.getitem, out, i, name=f"r_{tag}"))
            for i, x in enumerate(operands) if gets[i]]
