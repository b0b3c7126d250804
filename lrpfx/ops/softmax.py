"""Softmax: its own family, so composites choose how relevance passes attention weights.

- ``Pass``: ``R_x = R`` (the presets' default, as for the other activations).
- ``SoftmaxTaylor`` (AttnLRP, Prop. 3.1): ``R_x = x ⊙ (R − s Σ R)``, ``s`` the softmax.
- ``Stop`` (CP-LRP): the scores get nothing; relevance flows through the values only.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from lrpfx import kernels
from lrpfx.builder import Builder
from lrpfx.ops.table import (
    Call,
    Contribution,
    Converted,
    OpKind,
    Unsupported,
    aten,
    defop,
    pass_through,
    relevance,
    spell,
)
from lrpfx.rules import Pass, SoftmaxTaylor, Stop


def _bind(dim: Any = None, _stacklevel: Any = 3, dtype: Any = None) -> Converted:
    if dim is None:
        return Unsupported("softmax needs an explicit dim")
    if isinstance(_stacklevel, torch.dtype):  # aten.softmax.int(x, dim, dtype)
        dtype = _stacklevel
    return Call(F.softmax, (dim,), {} if dtype is None else {"dtype": dtype})


defop(F.softmax, kind=OpKind.SOFTMAX, nonneg=True, gate=True)
spell(F.softmax, torch.softmax, torch.special.softmax, "softmax", aten._softmax.default,
      aten.softmax.int,
      modules={nn.Softmax: lambda m: _bind(m.dim)}, bind=_bind)


relevance(F.softmax, rule=Pass)(pass_through)


@relevance(F.softmax, rule=SoftmaxTaylor)
def _taylor(b: Builder, node: fx.Node, rel: fx.Node, rule: SoftmaxTaylor) -> list[Contribution]:
    """Deep Taylor with bias: ``R_x = x ⊙ (R − s Σ_dim R)``."""
    x, dim = node.args[:2]
    assert isinstance(x, fx.Node)
    return [(x, b.call(kernels.softmax_taylor, rel, b[x], b[node], dim, name=f"r_{b.name(node)}"))]


@relevance(F.softmax, rule=Stop)
def _stop(b: Builder, node: fx.Node, rel: fx.Node, rule: Stop) -> list[Contribution]:
    """Stop: the scores get no relevance."""
    return []
