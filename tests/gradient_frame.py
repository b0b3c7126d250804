"""AttnLRP in the other frame: input × a modified gradient, for any model, by autograd.

The model runs eagerly, as the user wrote it, under a ``TorchFunctionMode`` that changes the
backward of a few functions and nothing in the forward (Achtibat et al. 2024, §3; the way LXT
computes relevance):

- a product of two tensors that both depend on the input (``a * b``, ``a @ b``, ``bmm``,
  ``einsum``, and the two products inside ``scaled_dot_product_attention``): the gradient is
  halved (the uniform rule), ``½ y + ½ y.detach()``;
- LayerNorm: its standard deviation is held constant; RMSNorm and ``F.normalize``: their
  normalizer is held constant, and so is any ``rsqrt`` of a computed value (HuggingFace's
  RMSNorm, ``x * torch.rsqrt(x.pow(2).mean(-1) + eps)``, writes its normalizer so);
- a BatchNorm that cannot be folded into the convolution before it (there is none, or that
  convolution's output is read elsewhere too): the identity rule (a folded one is part of one
  affine map with its convolution: plain gradient);
- elementwise activations (GELU, SiLU, sigmoid, tanh, hardswish): the identity rule, gradient
  ``f(x) / x``;
- everything else (linear maps, sums, softmax, routing, rotary embeddings, casts): the plain
  gradient, which with ε → 0 is the ε-rule, the softmax's deep-Taylor rule and the routing of
  relevance.

``language_model_relevance`` runs a HuggingFace model from its token embeddings
(``inputs_embeds``) and returns their relevance; HuggingFace's activation modules (GPT-2's
``NewGELUActivation``, written out in products and ``tanh``) take the identity rule as a whole,
as LXT patches them.

Nothing of lrpfx is imported: no tracing, no op table, no code generation is shared.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

Tensor = torch.Tensor

PRODUCTS = {torch.mul, Tensor.mul, Tensor.__mul__, Tensor.__rmul__, torch.matmul, Tensor.matmul,
            Tensor.__matmul__, Tensor.__rmatmul__, torch.bmm, Tensor.bmm, torch.einsum}
ACTIVATIONS = {F.gelu, F.silu, F.hardswish, torch.sigmoid, Tensor.sigmoid, torch.tanh,
               Tensor.tanh, F.tanh, F.sigmoid}


def _computed(value: Any) -> bool:
    return isinstance(value, Tensor) and value.requires_grad


def _halved(y: Tensor) -> Tensor:
    return 0.5 * y + 0.5 * y.detach()


def _identity(x: Tensor, y: Tensor) -> Tensor:
    """``y = f(x)`` forward, gradient ``f(x) / x`` (0 where ``x = 0``): the identity rule."""
    return x * torch.where(x == 0, 0.0, y / x).detach()


def _layer_norm(x: Tensor, shape: Any, weight: Tensor | None = None, bias: Tensor | None = None,
                eps: float = 1e-5) -> Tensor:
    dims = tuple(range(-len(shape), 0))
    mean = x.mean(dims, keepdim=True)
    sigma = torch.sqrt(x.var(dims, unbiased=False, keepdim=True) + eps).detach()
    y = (x - mean) / sigma
    return y * (1 if weight is None else weight) + (0 if bias is None else bias)


def _attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None,
               dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
               enable_gqa: bool = False) -> Tensor:
    assert dropout_p == 0.0 and not (is_causal and attn_mask is not None)
    if enable_gqa:  # each key/value head serves q.shape[-3] // k.shape[-3] query heads
        groups = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(groups, -3), v.repeat_interleave(groups, -3)
    if is_causal:
        attn_mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool,
                               device=q.device).tril()
    scores = q @ k.transpose(-2, -1)
    scores = (_halved(scores) if _computed(q) and _computed(k) else scores) * (
        scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, -math.inf) if attn_mask.dtype == torch.bool \
            else scores + attn_mask
    attention = F.softmax(scores, -1)
    out = attention @ v
    return _halved(out) if _computed(attention) and _computed(v) else out


def _multi_head_attention(query: Tensor, key: Tensor, value: Tensor, e: int, num_heads: int,
                          in_proj_weight: Tensor, in_proj_bias: Tensor | None, *args: Any,
                          **kwargs: Any) -> tuple[Tensor, None]:
    """``F.multi_head_attention_forward`` without masks at eval time (sequence first), its
    products through ``_attention``: the function is one call to the mode, so its inside is
    written here."""
    out_weight, out_bias = args[4], args[5]  # after bias_k, bias_v, add_zero_attn, dropout_p
    assert not any(kwargs.get(k) is not None for k in ("key_padding_mask", "attn_mask"))
    length, batch = query.shape[:2]
    heads = [F.linear(t, in_proj_weight[i * e:(i + 1) * e],
                      None if in_proj_bias is None else in_proj_bias[i * e:(i + 1) * e])
             for i, t in enumerate((query, key, value))]
    q, k, v = (t.reshape(t.shape[0], batch, num_heads, e // num_heads).permute(1, 2, 0, 3)
               for t in heads)
    mixed = _attention(q, k, v).permute(2, 0, 1, 3).reshape(length, batch, e)
    return F.linear(mixed, out_weight, out_bias), None


class ModifiedGradient(TorchFunctionMode):
    """Inside it, autograd computes AttnLRP's modified gradient (see the module docstring)."""

    def __init__(self, reads: dict[int, int] | None = None) -> None:
        super().__init__()
        self.counting = reads is None
        self.reads = {} if reads is None else reads  # convolution call -> reads of its output
        self.convolutions: dict[int, int] = {}  # id of a convolution output -> its call number
        self.keep: list[Tensor] = []  # those outputs, alive so that their ids stay theirs

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.layer_norm:
            return _layer_norm(*args, **kwargs)
        if func in (F.rms_norm, F.normalize):  # no centering: the normalizer held constant
            y = func(*args, **kwargs)
            return _identity(args[0], y) if _computed(args[0]) else y
        if func is F.scaled_dot_product_attention:
            return _attention(*args, **kwargs)
        if func is F.multi_head_attention_forward:
            return _multi_head_attention(*args, **kwargs)
        if func in (torch.rsqrt, Tensor.rsqrt):  # a normalizer: held constant
            return func(*args, **kwargs).detach()
        y = func(*args, **kwargs)
        for a in [*args, *kwargs.values()] if self.counting and _computed(y) else ():
            if id(a) in self.convolutions:  # a read of the value (not of its shape)
                call = self.convolutions[id(a)]
                self.reads[call] = self.reads.get(call, 0) + 1
        if func in (F.conv1d, F.conv2d, F.conv3d):
            self.convolutions[id(y)] = len(self.keep)
            self.keep.append(y)
        if func is F.batch_norm and _computed(args[0]) and not self._folds(args[0]):
            return _identity(args[0], y)
        operands = args[1:] if func is torch.einsum else args
        if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
            operands = tuple(operands[0])
        if func in PRODUCTS and sum(map(_computed, operands)) >= 2:
            return _halved(y)
        if func in ACTIVATIONS and _computed(args[0]):
            return _identity(args[0], y)
        return y

    def _folds(self, x: Tensor) -> bool:
        """A BatchNorm is folded into the convolution before it when it alone reads its output
        (the two are one affine map: plain gradient); otherwise it passes relevance."""
        call = self.convolutions.get(id(x))
        return call is not None and self.reads.get(call, 0) == 1


def input_times_modified_gradient(model: nn.Module, x: Tensor, target: int) -> Tensor:
    """AttnLRP's relevance of ``model``'s logit ``target`` at ``x`` (ε → 0), per sample."""
    model = copy.deepcopy(model).eval().requires_grad_(False)
    x = x.detach().clone().requires_grad_(True)
    with ModifiedGradient() as first:  # counts the reads of each convolution's output
        model(x)
    with ModifiedGradient(first.reads):
        out = model(x)
    (grad,) = torch.autograd.grad(out[:, target].sum(), x)
    return (x * grad).detach()


def frame_language_model(model: nn.Module, share_tensors: bool = False) -> nn.Module:
    """An eval copy of a HuggingFace ``model``, parameters frozen, whose activation modules
    take the identity rule as a whole (written out in products and ``tanh`` as GPT-2's
    ``NewGELUActivation`` is, as LXT patches them). ``share_tensors``: the copy holds the
    model's own parameters and buffers (and freezes them) instead of copies."""
    memo: dict[int, Any] = {id(t): t for t in [*model.parameters(), *model.buffers()]} if (
        share_tensors) else {}
    model = copy.deepcopy(model, memo).eval().requires_grad_(False)
    for module in model.modules():
        if type(module).__module__ == "transformers.activations":
            module.register_forward_hook(lambda m, args, y: _identity(args[0], y))
    return model


def language_model_relevance(model: nn.Module, inputs: dict[str, Tensor], seed: Tensor) -> Tensor:
    """AttnLRP's relevance (ε → 0) of the token embeddings of a HuggingFace model called with
    ``inputs`` (``input_ids``, ``attention_mask``, ...), for the output relevance
    ``logits ⊙ seed``: ``(batch, seq, hidden)``."""
    model = frame_language_model(model)
    others = {k: v for k, v in inputs.items() if k != "input_ids"}
    embeddings = model.get_input_embeddings()(inputs["input_ids"]).detach().requires_grad_(True)
    with ModifiedGradient() as first:
        model(inputs_embeds=embeddings, **others)
    with ModifiedGradient(first.reads):
        logits = model(inputs_embeds=embeddings, **others).logits
    (grad,) = torch.autograd.grad(logits, embeddings, seed)
    return (embeddings * grad).detach()
