"""maxpool: record how relevance passes each max-pool.

Before: canonical ``max_pool{1,2,3}d`` nodes.
After:  each has ``meta["lrpfx.maxpool"]``: ``"avg"`` (the backward treats the pool as an average
over the same windows, as the LRP overview of Montavon et al. 2019 advises) or ``"wta"``
(winner-takes-all: the gradient of max, as Zennit, Captum and iNNvestigate do). The forward
stays a real max-pool either way.
"""

from __future__ import annotations

from typing import Literal

from torch import fx

from lrpfx import meta
from lrpfx.ops import table
from lrpfx.ops.table import OpKind

MaxPoolMode = Literal["avg", "wta"]


def maxpool(gm: fx.GraphModule, mode: MaxPoolMode = "avg") -> fx.GraphModule:
    """Annotate every max-pool with ``mode`` (see the module docstring)."""
    if mode not in ("avg", "wta"):
        raise ValueError(f"maxpool must be 'avg' or 'wta', got {mode!r}")
    for node in gm.graph.nodes:
        if node.op == "call_function" and table.kind_of(node.target) is OpKind.MAXPOOL:
            dilation = node.args[4]
            if mode == "avg" and any(d != 1 for d in dilation):
                node.meta[meta.UNSUPPORTED] = "maxpool='avg' with dilation; use maxpool='wta'"
            node.meta[meta.MAXPOOL] = mode
    return gm
