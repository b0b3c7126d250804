"""Max-pools: a real max-pool forward; relevance through it as through an average pool of the
same windows (``"avg"``, the LRP overview's advice: the z-rule of that pool) or to each window's
argmax (``"wta"``, winner-takes-all: the gradient of max, as Zennit does). ``passes.maxpool``
writes the mode into ``meta["lrpfx.maxpool"]``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.utils import _ntuple

from lrpfx import meta
from lrpfx import runtime as rt
from lrpfx.builder import Builder
from lrpfx.ops.layers import POOL_RULES, pool_windows
from lrpfx.ops.linear import LinearOp, linear_rule
from lrpfx.ops.table import (
    Call,
    Contribution,
    Converted,
    OpKind,
    Unsupported,
    aten,
    defop,
    relevance,
    spell,
)

# a max-pool read as an average pool of the same windows (forward stays a max-pool)
_MAX_AS_AVG = LinearOp(
    forward=lambda b, n, x, w, bias: b.call(
        rt.avg_pool, x, *_max_pool_windows(b, n), name=f"z_{b.name(n)}"
    ),
    transpose=lambda b, n, s, w: b.call(
        rt.avg_pool_transpose, s, b[n.args[0]], *_max_pool_windows(b, n), True, None,
        name=f"c_{b.name(n)}",
    ),
    output_is_z=False,
)


def _max_pool_windows(b: Builder, n: fx.Node) -> tuple[Any, ...]:
    """kernel, stride, padding, ceil_mode of a canonical max-pool (x, k, s, p, dilation, ceil)."""
    x, kernel, stride, padding, _dilation, ceil_mode = n.args
    return kernel, stride, padding, ceil_mode


_MAX_POOL_WITH_INDICES = {
    F.max_pool1d: F.max_pool1d_with_indices,
    F.max_pool2d: F.max_pool2d_with_indices,
    F.max_pool3d: F.max_pool3d_with_indices,
}


def _max_pool_forward(b: Builder, node: fx.Node) -> fx.Node:
    """Keep the argmax indices when relevance is routed winner-takes-all."""
    if node.meta.get(meta.MAXPOOL) != "wta":
        return b.copy(node)
    pooled = b.call(_MAX_POOL_WITH_INDICES[node.target], *b.map(node.args),  # type: ignore[index]
                    name=f"{meta.display_name(node)}_with_indices")
    indices = b.call(operator.getitem, pooled, 1, name=f"indices_{meta.display_name(node)}")
    # the input's shape, not the input: the backward needs no more, and the input is freed
    size = b.method("size", b[node.args[0]], name=f"size_{meta.display_name(node)}")
    b.saved[node] = (indices, size)
    return b.call(operator.getitem, pooled, 0, name=meta.display_name(node))


def _max_pool(n: int) -> Callable[..., Converted]:
    fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[n - 1]

    def bind(kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
             ceil_mode: bool = False, return_indices: bool = False) -> Converted:
        if return_indices:
            return Unsupported("return_indices=True")
        k, s, p = pool_windows(n, kernel_size, stride, padding)
        return Call(fn, (k, s, p, _ntuple(n)(dilation), ceil_mode))

    return bind


def _max_pool_module(n: int) -> Callable[[Any], Converted]:
    def convert(m: Any) -> Converted:
        return _max_pool(n)(m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode,
                            m.return_indices)
    return convert


for _n, _fn, _module in ((1, F.max_pool1d, nn.MaxPool1d), (2, F.max_pool2d, nn.MaxPool2d),
                         (3, F.max_pool3d, nn.MaxPool3d)):
    spell(_fn, getattr(torch, f"max_pool{_n}d"), getattr(aten, f"max_pool{_n}d").default,
          bind=_max_pool(_n),
          modules={_module: _max_pool_module(_n)})
defop(*_MAX_POOL_WITH_INDICES, kind=OpKind.MAXPOOL, keeps_nonneg=True, forward=_max_pool_forward,
      rule_when=lambda node: node.meta.get(meta.MAXPOOL) != "wta")
relevance(*_MAX_POOL_WITH_INDICES, rule=POOL_RULES)(linear_rule(_MAX_AS_AVG))


@relevance(*_MAX_POOL_WITH_INDICES)
def _winner_takes_all(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    """``"wta"``: each output's relevance to the argmax of its window."""
    indices, size = b.saved[node]
    routed = b.call(rt.scatter_to_indices, rel, size, indices, name=f"r_{b.name(node)}")
    return [(node.args[0], routed)]  # type: ignore[list-item]
