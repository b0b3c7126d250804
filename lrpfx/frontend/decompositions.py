"""Modules traced as the canonical ops they compute, instead of as one opaque node.

A decomposition is a plain function ``(tracer, module, path, *args, **kwargs)`` run by the
tracer on symbolic values in place of the module's call (``@decomposes(cls)``). Every node it
makes gets the module's path in ``meta["lrpfx.path"]`` (``"encoder.layers.0.self_attention"``,
with a suffix per part: ``.q_proj``, ``.softmax``, ``.out_proj``), so composites reach its parts
by name and each call site stays its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import fx, nn

from lrpfx import meta

Decomposition = Callable[..., Any]
DECOMPOSITIONS: dict[type[nn.Module], Decomposition] = {}


def decomposes(cls: type[nn.Module]) -> Callable[[Decomposition], Decomposition]:
    """Register the decorated function as the decomposition of modules of class ``cls``."""

    def register(fn: Decomposition) -> Decomposition:
        DECOMPOSITIONS[cls] = fn
        return fn

    return register


def _tag(value: Any, path: str) -> Any:
    """Give the node behind a proxy the module path ``path``."""
    node = getattr(value, "node", None)
    if isinstance(node, fx.Node):
        node.meta[meta.PATH] = path
    return value


def _attr(tracer: fx.Tracer, path: str) -> Any:
    return tracer.create_proxy("get_attr", path, (), {})


@decomposes(nn.MultiheadAttention)
def multi_head_attention(
    tracer: fx.Tracer, m: nn.MultiheadAttention, path: str, query: Any, key: Any, value: Any,
    key_padding_mask: Any = None, need_weights: bool = True, attn_mask: Any = None,
    average_attn_weights: bool = True, is_causal: bool = False,
) -> tuple[Any, Any]:
    """``nn.MultiheadAttention`` at eval time: the q/k/v projections, ``softmax(q kᵀ/√d) v``
    per head, the output projection. Masks, extra key/value biases and zero attention are not
    decomposed (a ``TraceError`` says so)."""
    unsupported = [name for name, value_ in (("key_padding_mask", key_padding_mask),
                                             ("attn_mask", attn_mask)) if value_ is not None]
    unsupported += ["is_causal"] * bool(is_causal)
    unsupported += ["add_bias_kv"] * (m.bias_k is not None) + ["add_zero_attn"] * m.add_zero_attn
    if unsupported or not m._qkv_same_embed_dim:
        what = ", ".join(unsupported) or "kdim/vdim other than embed_dim"
        raise NotImplementedError(f"lrpfx decomposes nn.MultiheadAttention without {what}")
    if not m.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    e, h = m.embed_dim, m.num_heads
    weight = _attr(tracer, f"{path}.in_proj_weight")
    bias = None if m.in_proj_bias is None else _attr(tracer, f"{path}.in_proj_bias")
    heads = []
    for i, (name, x) in enumerate((("q_proj", query), ("k_proj", key), ("v_proj", value))):
        part = slice(i * e, (i + 1) * e)
        b = None if bias is None else bias[part]
        projected = _tag(F.linear(x, weight[part], b), f"{path}.{name}")
        batch, length = projected.shape[0], projected.shape[1]
        heads.append(projected.reshape(batch, length, h, e // h).transpose(1, 2))
    q, k, v = heads
    scores = _tag(q @ k.transpose(-2, -1), f"{path}.scores") / math.sqrt(e // h)
    attention = _tag(F.softmax(scores, -1), f"{path}.softmax")
    mixed = _tag(attention @ v, f"{path}.mix")
    batch, length = mixed.shape[0], mixed.shape[2]
    mixed = mixed.transpose(1, 2).reshape(batch, length, e)
    out_bias = None if m.out_proj.bias is None else _attr(tracer, f"{path}.out_proj.bias")
    out = _tag(F.linear(mixed, _attr(tracer, f"{path}.out_proj.weight"), out_bias),
               f"{path}.out_proj")
    if not m.batch_first:
        out = out.transpose(0, 1)
    weights = None
    if need_weights:
        weights = attention.mean(1) if average_attn_weights else attention
    return out, weights


def decompose(tracer: fx.Tracer, m: nn.Module, args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> Any:
    """Run the decomposition of ``m`` on symbolic ``args``."""
    return DECOMPOSITIONS[type(m)](tracer, m, tracer.path_of_module(m), *args, **kwargs)
