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

A ``Stop`` softmax (CP-LRP) sends everything through ``v``: a block computes its weights only.
Keys that no query of a block sees (after a causal block's last row; those a boolean mask hides
from all its rows) are left out of its products, so a causal attention does half the work.
``BLOCK_ELEMENTS`` bounds the elements of one block's score matrix (all batch and head
dimensions together); a block has at least one row. Equal to the parts explained one by one
within 1e-12 in float64 (``tests/test_fused_attention.py``). Measured (8 heads, 2048 × 2048,
head size 64, a causal boolean mask, float32, 2 threads): 182 ms, where sdpa's forward and
backward with the same mask take 288 ms (blocks of 4 Mi scores: 207 ms; of 256 Ki: 258 ms).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F

from lrpfx import kernels
from lrpfx import runtime as rt
from lrpfx.runtime import kernel

#: the most elements of one block's ``q kᵀ`` (batch × heads × rows × keys): 1 Mi, 4 MiB float32
BLOCK_ELEMENTS = 1 << 20

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


def _causal(rows: slice, keys: slice, device: torch.device) -> torch.Tensor:
    """Block ``rows × keys`` of ``is_causal``'s mask: query ``i`` sees keys ``j <= i``."""
    i = torch.arange(rows.start, rows.stop, device=device)
    return torch.arange(keys.start, keys.stop, device=device) <= i[:, None]


def _seen(mask: torch.Tensor | None, causal: bool, rows: slice, keys: int) -> slice:
    """The keys that queries ``rows`` may see (``mask``: their rows of it): all but those that
    a boolean mask or ``is_causal`` hides from every one of them (a causal block stops at its
    last row: the scores of the keys after are never computed). All keys when no key is seen
    (a row that sees none is NaN, as the parts', ``F.softmax`` of ``-inf`` only) and under
    ``torch.compile`` for a mask (the range would depend on the mask's values)."""
    start, stop = 0, min(keys, rows.stop) if causal else keys
    if mask is not None and mask.dtype == torch.bool and not torch.compiler.is_compiling():
        seen = (mask.flatten(0, -2).any(0) if mask.dim() > 1 else mask)[:stop].nonzero()
        if not len(seen):
            return slice(0, keys)
        start, stop = int(seen[0]), int(seen[-1]) + 1
    return slice(start, stop)


def _masks(mask: torch.Tensor | None, causal: bool, rows: slice, keys: slice,
           device: torch.device) -> list[torch.Tensor]:
    """The masks of block ``rows × keys``, in order (``mask``: its rows of the mask)."""
    masks = [] if mask is None else [mask[..., keys]]
    return [*masks, _causal(rows, keys, device)] if causal else masks


def _ratio(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``z / stabilize(z, ε)``, as ``|z| / (|z| + ε)``: the same number (negation is exact)."""
    a = z.abs()
    return a.div_(a + epsilon)


def _scores(x: torch.Tensor, weights: torch.Tensor, logits: torch.Tensor,
            masked: list[torch.Tensor], masks: list[torch.Tensor], softmax: SoftmaxRule,
            epsilon: float, mask_rule: MaskRule) -> torch.Tensor:
    """``t = R_L / stabilize(L, ε)`` of a block's scores ``L = q kᵀ · scale`` (before the
    share of ``q`` and ``k``), from ``x = s vᵀ`` (``R_P = P ⊙ x``; ``x`` is overwritten).

    Boolean masks (or none) and ``SoftmaxTaylor``: ``R_L = L ⊙ P ⊙ (x − Σ_j R_P)`` where a
    mask keeps (``P = 0`` where it does not: no ``-inf`` is read), so ``t = P ⊙ (x − Σ_j R_P)
    ⊙ L / stabilize(L)``. Otherwise each part's formula in turn (``kernels``)."""
    if all(m.dtype == torch.bool for m in masks):
        if softmax == "taylor":
            total = (weights * x).sum(-1, keepdim=True)
            return x.sub_(total).mul_(weights).mul_(_ratio(logits, epsilon))
        return x.mul_(weights).div_(rt.stabilize(logits, epsilon))
    r = x.mul_(weights)
    top = masked[-1]
    if softmax == "taylor":
        r = kernels.softmax_taylor(r, top, weights, -1)
    mask_epsilon, ignore_bias = mask_rule
    for i in reversed(range(len(masks))):
        before = masked[i - 1] if i else logits
        if masks[i].dtype != torch.bool and ignore_bias:
            continue  # a constant float mask ignored: the scores keep the relevance
        r = kernels.mask_share(r, before, masked[i], masks[i], mask_epsilon)
    return r.div_(rt.stabilize(logits, epsilon))


def _causal_mask(mask: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether ``mask`` is exactly ``is_causal``'s (a boolean, every row of it)."""
    if (mask.dtype != torch.bool or mask.dim() < 2
            or mask.shape[-2:] != (q.size(-2), k.size(-2))):
        return False
    return bool(torch.equal(mask, kernels.causal_mask(q, k).expand_as(mask)))


@kernel(fresh=True)
def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
            causal: bool, scale: float | None) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v, mask, is_causal=causal, scale=scale)``; on CPU
    a boolean mask that is exactly the causal one (a language model's without padding, as
    ``torch.export`` keeps it) is given as ``is_causal=True``, as HuggingFace does outside
    export: flash attention then skips the blocks above the diagonal (2048 tokens: 85 → 44 ms
    a layer), with the same values (tested)."""
    if (mask is not None and q.device.type == "cpu" and not torch.compiler.is_compiling()
            and _causal_mask(mask, q, k)):
        mask, causal = None, True
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                          scale=scale)


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
    kt, vt = k.transpose(-2, -1).contiguous(), v.transpose(-2, -1).contiguous()
    length, keys = q.size(-2), k.size(-2)
    masks_batch = () if mask is None else mask.shape[:-2]
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], masks_batch)
    rq = q.new_empty((*batch, length, q.size(-1))) if gets_q and weights_receive else None
    # Σ_I s_Iᵀ P_I and Σ_I (q_I · scale)ᵀ t_I, then R_v = v ⊙ acc_vᵀ and R_k = k ⊙ acc_kᵀ
    acc_v = v.new_zeros((*batch, v.size(-1), keys)) if gets_v else None
    acc_k = k.new_zeros((*batch, k.size(-1), keys)) if gets_k and weights_receive else None
    for rows in _rows(length, keys, batch):
        mask_rows = None if mask is None else _block_mask(mask, rows, length)
        cols = _seen(mask_rows, causal, rows, keys)
        q_rows, s_rows = qs[..., rows, :], s[..., rows, :]
        logits = q_rows @ kt[..., cols]
        masks = _masks(mask_rows, causal, rows, cols, q.device)
        masked: list[torch.Tensor] = []
        for m in masks:
            masked.append(kernels.attention_mask(masked[-1] if masked else logits, m))
        weights = F.softmax(masked[-1] if masked else logits, -1)
        if acc_v is not None:
            acc_v[..., cols] += s_rows.transpose(-2, -1) @ weights
        if not weights_receive:
            continue
        t = _scores(s_rows @ vt[..., cols], weights, logits, masked, masks, softmax,
                    scores_epsilon, mask_rule)
        if rq is not None:
            rq[..., rows, :] = q_rows * (t @ k[..., cols, :])
        if acc_k is not None:
            acc_k[..., cols] += q_rows.transpose(-2, -1) @ t
    half = 0.5 if gets_q and gets_k else 1.0  # the uniform share, exact on the small results
    return (None if rq is None else rt.unbroadcast(rq.mul_(half), q),
            None if acc_k is None else rt.unbroadcast(k * acc_k.transpose(-2, -1) * half, k),
            None if acc_v is None else rt.unbroadcast(v * acc_v.transpose(-2, -1), v))
