"""expand: a fused op becomes the canonical ops it computes, so each takes its own rule.

Before: a normalized graph.
After:  every ``F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale)``
is ``matmul(softmax(attention_mask(matmul(attention_scale(q), transpose(k, -2, -1)), mask), -1),
v)``, with ``attention_mask`` (a float mask added, a boolean one, the causal mask of
``is_causal`` included, selecting) only where there is a mask (``lrpfx.ops.attention``);
grouped-query attention (``enable_gqa=True``) repeats ``k`` and ``v`` over the query heads
first (``repeat_interleave``, as sdpa does). The new nodes keep the fused node's module path,
spelling and source line. Dropout is an identity at eval time.

Likewise a mean of squares written by hand (``x.pow(2).mean(d)``, ``torch.mean(x ** 2, d)``,
``x.square().mean(d)``, as timm's RMSNorm fallbacks write it) whose squares nothing else reads is
one ``mean_square(x, d, keepdim)``: a statistic, held constant (``lrpfx.ops.statistics``).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from lrpfx import kernels, meta
from lrpfx.ops.attention import arguments


def _attention(graph: fx.Graph, node: fx.Node) -> fx.Node | None:
    """The expanded attention of ``node`` (inserted before it), or None when refused."""
    a = arguments(*node.args, **node.kwargs)
    if not isinstance(a["gqa"], bool):
        node.meta[meta.UNSUPPORTED] = ("scaled_dot_product_attention with a computed "
                                       "enable_gqa; pass True or False")
        return None
    with graph.inserting_before(node):
        new = []
        if a["gqa"]:  # each key/value head serves q.size(-3) // k.size(-3) query heads
            heads = [graph.call_method("size", (a[x], -3)) for x in ("q", "k")]
            groups = graph.call_function(operator.floordiv, tuple(heads))
            a["k"], a["v"] = (graph.call_function(torch.repeat_interleave, (a[x], groups, -3))
                              for x in ("k", "v"))
            new = [*heads, groups, a["k"], a["v"]]
        q = graph.call_function(kernels.attention_scale, (a["q"], a["scale"]))
        kt = graph.call_function(torch.transpose, (a["k"], -2, -1))
        logits = graph.call_function(operator.matmul, (q, kt))
        new += [q, kt, logits]
        masks = [a["mask"]] if a["mask"] is not None else []
        if a["causal"]:
            masks.append(graph.call_function(kernels.causal_mask, (a["q"], a["k"])))
            new.append(masks[-1])
        for mask in masks:
            logits = graph.call_function(kernels.attention_mask, (logits, mask))
            new.append(logits)
        weights = graph.call_function(F.softmax, (logits, -1))
        out = graph.call_function(operator.matmul, (weights, a["v"]))
    for n in (*new, weights, out):
        n.meta = {k: v for k, v in node.meta.items() if k != "val"}
    return out


def _square_of(node: fx.Node) -> Any:
    """``x`` when ``node`` is ``x ** 2`` (in any spelling) read by means only, else None."""
    if not all(u.op == "call_function" and u.target is torch.mean for u in node.users):
        return None
    if node.op == "call_method" and node.target == "square" and len(node.args) == 1:
        return node.args[0]
    power = (node.op == "call_method" and node.target == "pow"
             or node.op == "call_function" and node.target in (operator.pow, torch.pow))
    return node.args[0] if power and node.args[1:] == (2,) and not node.kwargs else None


def _mean_squares(graph: fx.Graph) -> bool:
    """Every ``mean(x ** 2, d, keepdim)`` as ``mean_square(x, d, keepdim)``."""
    changed = False
    for node in list(graph.find_nodes(op="call_function", target=torch.mean)):
        square = node.args[0]
        x = _square_of(square) if isinstance(square, fx.Node) else None
        if not isinstance(x, fx.Node) or node.kwargs:
            continue
        with graph.inserting_before(node):
            new = graph.call_function(kernels.mean_square, (x, *node.args[1:]))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        if not square.users:  # type: ignore[union-attr]
            graph.erase_node(square)  # type: ignore[arg-type]
        changed = True
    return changed


def expand(gm: fx.GraphModule) -> fx.GraphModule:
    """Write out every fused op (see the module docstring)."""
    changed = _mean_squares(gm.graph)
    for node in list(gm.graph.find_nodes(op="call_function",
                                          target=F.scaled_dot_product_attention)):
        out = _attention(gm.graph, node)
        if out is not None:
            node.replace_all_uses_with(out)
            gm.graph.erase_node(node)
            changed = True
    if changed:
        gm.graph.lint()
        gm.recompile()
    return gm
