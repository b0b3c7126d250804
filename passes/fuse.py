"""fuse: an attention that ``expand`` wrote out is one ``F.scaled_dot_product_attention`` again
where its parts took rules that ``lrpfx.attention`` computes block by block.

Before: an annotated, checked graph.
After:  each chain ``matmul(softmax(attention_mask(...(matmul(attention_scale(q, scale),
transpose(k, -2, -1)), m)...), -1), v)`` whose parts took ε-rules on the two products (``Epsilon``
without ``scale`` or ``Norm``), ``SoftmaxTaylor``, ``Stop`` or ``Pass`` on the softmax and an
ε-rule on a float mask, is ``F.scaled_dot_product_attention(q, k, v, attn_mask=m,
is_causal=..., scale=scale)`` with the meta of the product with ``v`` and the parts' rules
together (``rules.Attention``). Its forward is then the model's own call, its backward never
holds a whole attention matrix. Left written out, each part explaining itself: a chain with a
node that is recorded, filtered or read elsewhere, or a mask that carries relevance.
"""

from __future__ import annotations

import operator
from collections.abc import Collection
from typing import Any, TypeGuard

import torch
import torch.nn.functional as F
from torch import fx

from lrpfx import kernels, meta
from lrpfx.ops.table import OpKind, carries
from lrpfx.rules import Attention, Epsilon, Norm, Pass, SoftmaxTaylor, Stop


def _is(node: object, target: Any) -> TypeGuard[fx.Node]:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target is target


def _user(node: fx.Node) -> fx.Node | None:
    """The one user of ``node``, or None."""
    return next(iter(node.users)) if len(node.users) == 1 else None


def _product(rule: Any) -> bool:
    return isinstance(rule, Norm) or isinstance(rule, Epsilon) and rule.scale is None


def _chain(scaled: fx.Node) -> list[fx.Node] | None:
    """The parts of the attention that starts at ``scaled = attention_scale(q, scale)``, first
    to last (``q``'s scale, ``kᵀ``, the scores, the masks, the softmax, the product with
    ``v``), or None when they are not one written-out attention."""
    scores = _user(scaled)
    if not _is(scores, operator.matmul) or scores.args[0] is not scaled:
        return None
    kt = scores.args[1]
    if not (_is(kt, torch.transpose) and kt.args[1:] == (-2, -1) and _user(kt) is scores):
        return None
    parts, top = [scaled, kt, scores], scores
    while _is(user := _user(top), kernels.attention_mask):
        top = user
        parts.append(top)
    softmax = _user(top)
    if not _is(softmax, F.softmax) or softmax.args[1:] != (-1,) or softmax.kwargs:
        return None
    out = _user(softmax)
    if not _is(out, operator.matmul) or out.args[0] is not softmax:
        return None
    return [*parts, softmax, out]


def _masks(parts: list[fx.Node]) -> tuple[Any, fx.Node | None] | None:
    """The explicit mask and the causal mask's node among ``parts`` (each or both None), or
    None when they are not one call's (two explicit masks, a mask that carries relevance)."""
    mask, causal = None, None
    for node in parts:
        if not _is(node, kernels.attention_mask):
            continue
        m = node.args[1]
        if causal is None and _is(m, kernels.causal_mask) and _user(m) is node:
            causal = m
        elif mask is None and causal is None and not carries(m):
            mask = m
        else:
            return None
    return mask, causal


def _rule(parts: list[fx.Node], mask: Any) -> Attention | None:
    """The parts' rules together, or None when ``lrpfx.attention`` does not compute them."""
    rules: dict[fx.Node, Any] = {node: node.meta.get(meta.RULE) for node in parts}
    scores, softmax, out = parts[2], parts[-2], parts[-1]
    explicit = [n for n in parts if _is(n, kernels.attention_mask) and n.args[1] is mask]
    mask_rule = rules[explicit[0]] if explicit else None
    if not (_product(rules[scores]) and _product(rules[out])
            and type(rules[softmax]) in (SoftmaxTaylor, Stop, Pass)
            and (mask_rule is None or _product(mask_rule))):
        return None
    return Attention(scores=rules[scores], softmax=rules[softmax], values=rules[out],
                     mask=mask_rule)


def _fuse(graph: fx.Graph, parts: list[fx.Node], keep: Collection[fx.Node]) -> bool:
    """Make ``parts`` one call, if it can be; whether it was."""
    scaled, kt, out = parts[0], parts[1], parts[-1]
    masks = _masks(parts)
    if (masks is None or not out.meta.get(meta.CONE) or any(n in keep for n in parts)
            or any(n.meta.get(meta.FILTER) is not None for n in parts)):
        return False
    rule = _rule(parts, masks[0])
    if rule is None:
        return False
    (q, scale), k, v = scaled.args, kt.args[0], out.args[1]
    mask, causal = masks
    with graph.inserting_before(out):
        fused = graph.call_function(F.scaled_dot_product_attention, (q, k, v), {
            "attn_mask": mask, "is_causal": causal is not None, "scale": scale})
    fused.meta = {**out.meta, meta.KIND: OpKind.ATTENTION, meta.RULE: rule}
    out.replace_all_uses_with(fused)
    for node in [*reversed(parts), *([] if causal is None else [causal])]:
        graph.erase_node(node)
    return True


def fuse(gm: fx.GraphModule, keep: Collection[fx.Node] = ()) -> fx.GraphModule:
    """Fuse every written-out attention that can be (see the module docstring); ``keep``: nodes
    that must stay (recorded ones)."""
    changed = False
    for scaled in list(gm.graph.find_nodes(op="call_function", target=kernels.attention_scale)):
        parts = _chain(scaled)
        changed |= parts is not None and _fuse(gm.graph, parts, keep)
    if changed:
        gm.graph.lint()
        gm.recompile()
    return gm
