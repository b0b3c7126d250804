"""maxpool: record how relevance passes each max-pool.

Before: canonical ``max_pool{1,2,3}d`` nodes.
After:  each has ``meta["lrpfx.maxpool"]``: ``"avg"`` (the backward treats the pool as an average
over the same windows, as the LRP overview of Montavon et al. 2019 advises) or ``"wta"``
(winner-takes-all: the gradient of max, as Zennit, Captum and iNNvestigate do). The forward
stays a real max-pool either way.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import fx

from lrpfx import meta

MaxPoolMode = Literal["avg", "wta"]
MAX_POOLS = {F.max_pool1d, F.max_pool2d, F.max_pool3d}


def maxpool(gm: fx.GraphModule, mode: MaxPoolMode = "avg") -> fx.GraphModule:
    """Annotate every max-pool with ``mode`` (see the module docstring)."""
    if mode not in ("avg", "wta"):
        raise ValueError(f"maxpool must be 'avg' or 'wta', got {mode!r}")
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in MAX_POOLS:
            dilation = node.args[4]
            if mode == "avg" and any(d != 1 for d in dilation):
                node.meta[meta.UNSUPPORTED] = "maxpool='avg' with dilation; use maxpool='wta'"
            node.meta[meta.MAXPOOL] = mode
    return gm
