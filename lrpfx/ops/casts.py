"""Casts: ``cast(x, ...)`` is ``x.to(...)``, the one canonical form of ``x.to(dtype)``,
``x.to(other)``, ``x.type_as(other)``, torch.export's ``_to_copy(x, dtype=...)`` and a softmax
computed in ``float32``. The values are the same numbers, rounded: relevance passes unchanged,
in the input's dtype or a wider one it already has, on the input's device. A cast to the dtype
the value already has is no op at all and is removed by the export front end.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from lrpfx.builder import Builder
from lrpfx.ops.table import (
    Call,
    Contribution,
    Converted,
    OpKind,
    aten,
    defop,
    relevance,
    spell,
)
from lrpfx.runtime import kernel


@kernel(fresh=False)
def cast(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``x.to(*args, **kwargs)``: the canonical cast."""
    return x.to(*args, **kwargs)


@kernel(fresh=False)
def cast_like(r: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``r`` on the device of ``x`` and in its dtype, unless that is narrower: relevance is not
    rounded to a precision the model uses for a while (HuggingFace's RMSNorm computes in
    ``float32``; a ``float64`` model's relevance stays ``float64``)."""
    wider = torch.promote_types(r.dtype, x.dtype) == r.dtype
    return r.to(dtype=r.dtype if wider else x.dtype, device=x.device)


def _bind(*args: Any, **kwargs: Any) -> Converted:
    kwargs.pop("memory_format", None)  # a layout, not a value: nothing to route
    return Call(cast, args, kwargs)


defop(cast, kind=OpKind.RESHAPE, routes=True, keeps_nonneg=True)
spell(cast, "to", "type_as", aten.type_as.default, bind=_bind)  # type_as(o) is to(o)


@relevance(cast)
def _cast(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    """``R_x = R`` in the dtype of ``x`` (or a wider one)."""
    x = node.args[0]
    assert isinstance(x, fx.Node)
    return [(x, b.call(cast_like, rel, b[x], name=f"r_{b.name(node)}"))]
