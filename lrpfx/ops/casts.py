"""Casts: ``cast(x, dtype)``, a change of floating-point precision (``x.to(torch.float32)``,
torch.export's ``_to_copy(x, dtype=...)``, a softmax computed in ``float32``). The values are
the same numbers, rounded: relevance passes unchanged, in the input's dtype or a wider one it
already has. A cast to the dtype the value already has is no op at all and is removed by the
front end.
"""

from __future__ import annotations

import torch
from torch import fx

from lrpfx.builder import Builder
from lrpfx.ops.table import Contribution, OpKind, defop, relevance


def cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` in ``dtype``: the canonical cast."""
    return x.to(dtype)


def cast_like(r: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``r`` in the dtype of ``x``, unless that is narrower: relevance is not rounded to a
    precision the model uses for a while (HuggingFace's RMSNorm computes in ``float32``; a
    ``float64`` model's relevance stays ``float64``)."""
    return r if torch.promote_types(r.dtype, x.dtype) == r.dtype else r.to(x.dtype)


defop(cast, kind=OpKind.RESHAPE, routes=True, keeps_nonneg=True)


@relevance(cast)
def _cast(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    """``R_x = R`` in the dtype of ``x``."""
    x = node.args[0]
    assert isinstance(x, fx.Node)
    return [(x, b.call(cast_like, rel, b[x], name=f"r_{b.name(node)}"))]
