"""The relevance of one fused attention ``o = softmax(q kᵀ · scale ⊕ mask) v``, block by block.

``passes.fuse`` makes an attention whose parts take the rules below one node again; its backward
is ``relevance`` here: the same formulas as the parts' own rows (``ops.bilinear``,
``ops.softmax``, ``ops.attention``), on a block of query rows at a time, so that no whole
``L × S`` matrix is ever held (the forward is ``F.scaled_dot_product_attention`` itself). For
query rows ``I`` (the weights ``P_I`` recomputed from ``q_I`` and ``k``)::

    s   = R / stabilize(o, ε_v)                  (· ½ when both P and v receive)
    R_P = P_I ⊙ (s_I vᵀ)                          R_v += Σ_I P_Iᵀ s_I   (then ⊙ v)
    R_M = softmax rule (M the masked scores):     M ⊙ (R_P − P Σ R_P)  (AttnLRP), R_P (Pass)
    R_L = the masks' rows in reverse order        (a boolean mask selects; a float one: ε)
    t   = R_L / stabilize(L, ε_s)                 (· ½ when both q and k receive)
    R_q = q_I · scale ⊙ (t k)                     R_k += Σ_I tᵀ (q_I · scale)  (then ⊙ k)

A ``Stop`` softmax (CP-LRP) sends everything through ``v``, with no block loop over the scores'
relevance. ``BLOCK_ELEMENTS`` bounds the elements of one block's score matrix (all batch and
head dimensions together); a block has at least one row.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F

from lrpfx import kernels
from lrpfx import runtime as rt
from lrpfx.runtime import kernel

#: the most elements of one block's ``q kᵀ`` (batch × heads × rows × keys): 4 Mi, 16 MiB float32
BLOCK_ELEMENTS = 1 << 22

SoftmaxRule = Literal["taylor", "pass", "stop"]
# a mask's rule: (ε, ignore_bias) of its sum with the scores (a boolean mask selects)
MaskRule = tuple[float, bool]


def _rows(length: int, keys: int, batch: torch.Size) -> Iterator[slice]:
    """The query row blocks: each at most ``BLOCK_ELEMENTS`` scores (one row at least)."""
    step = max(1, BLOCK_ELEMENTS // max(1, batch.numel() * keys))
    for start in range(0, length, step):
        yield slice(start, min(start + step, length))


def _block_mask(mask: torch.Tensor, rows: slice, length: int) -> torch.Tensor:
    """The rows of ``mask`` (``(..., L, S)``, broadcastable) that block ``rows`` reads."""
    if mask.dim() < 2 or mask.size(-2) == 1:
        return mask
    assert mask.size(-2) == length, f"a mask of {mask.size(-2)} rows for {length} queries"
    return mask[..., rows, :]


def _causal(rows: slice, keys: int, device: torch.device) -> torch.Tensor:
    """The rows of ``is_causal``'s mask: query ``i`` sees keys ``j <= i``."""
    i = torch.arange(rows.start, rows.stop, device=device)
    return torch.arange(keys, device=device) <= i[:, None]


def _masks(mask: torch.Tensor | None, causal: bool, rows: slice, length: int, keys: int,
           device: torch.device) -> list[torch.Tensor]:
    """The masks block ``rows`` applies to its scores, in order."""
    masks = [] if mask is None else [_block_mask(mask, rows, length)]
    return [*masks, _causal(rows, keys, device)] if causal else masks


def _scores_relevance(r: torch.Tensor, logits: torch.Tensor, masked: list[torch.Tensor],
                      weights: torch.Tensor, masks: list[torch.Tensor], softmax: SoftmaxRule,
                      mask_rule: MaskRule) -> torch.Tensor:
    """The relevance of the scores ``q kᵀ · scale`` from that of the weights (``r``):
    the softmax's rule, then each mask's in reverse order (``masked[i]``: after mask ``i``)."""
    top = masked[-1] if masked else logits
    if softmax == "taylor":
        r = kernels.softmax_taylor(r, top, weights, -1)
    epsilon, ignore_bias = mask_rule
    for i in reversed(range(len(masks))):
        before = masked[i - 1] if i else logits
        if masks[i].dtype != torch.bool and ignore_bias:
            continue  # a constant float mask ignored: the scores keep the relevance
        r = kernels.mask_share(r, before, masked[i], masks[i], epsilon)
    return r


@kernel(fresh=False)
def relevance(r: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              out: torch.Tensor, mask: torch.Tensor | None, causal: bool, scale: float | None,
              softmax: SoftmaxRule, values_epsilon: float, scores_epsilon: float,
              mask_rule: MaskRule, receives: tuple[bool, bool, bool]
              ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """``(R_q, R_k, R_v)`` of ``out = F.scaled_dot_product_attention(q, k, v, mask, causal,
    scale)`` given ``r``, its output's relevance (None for an operand that does not receive)."""
    gets_q, gets_k, gets_v = receives
    weights_receive = softmax != "stop" and (gets_q or gets_k)
    s = r / rt.stabilize(out, values_epsilon)
    if weights_receive and gets_v:
        s = s * 0.5  # the uniform share of each operand
    qs = kernels.attention_scale(q, scale)
    kt = k.transpose(-2, -1)
    length, keys = q.size(-2), k.size(-2)
    masks_batch = () if mask is None else mask.shape[:-2]
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], masks_batch)
    rq = (q.new_empty((*batch, length, q.size(-1))) if gets_q and weights_receive else None)
    acc_v: torch.Tensor | None = None
    acc_k: torch.Tensor | None = None
    for rows in _rows(length, keys, batch):
        q_rows, s_rows = qs[..., rows, :], s[..., rows, :]
        logits = q_rows @ kt
        masks = _masks(mask, causal, rows, length, keys, q.device)
        masked: list[torch.Tensor] = []
        for m in masks:
            masked.append(kernels.attention_mask(masked[-1] if masked else logits, m))
        weights = F.softmax(masked[-1] if masked else logits, -1)
        if gets_v:
            part = weights.transpose(-2, -1) @ s_rows
            acc_v = part if acc_v is None else acc_v + part
        if not weights_receive:
            continue
        r_weights = weights * (s_rows @ v.transpose(-2, -1))
        r_scores = _scores_relevance(r_weights, logits, masked, weights, masks, softmax,
                                     mask_rule)
        t = r_scores / rt.stabilize(logits, scores_epsilon)
        if gets_q and gets_k:
            t = t * 0.5
        if rq is not None:
            rq[..., rows, :] = q_rows * (t @ k)
        if gets_k:
            part = t.transpose(-2, -1) @ q_rows
            acc_k = part if acc_k is None else acc_k + part
    return (None if rq is None else rt.unbroadcast(rq, q),
            None if acc_k is None else rt.unbroadcast(k * acc_k, k),
            None if acc_v is None else rt.unbroadcast(v * acc_v, v))
