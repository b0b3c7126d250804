"""Runtime kernels of the norms, attention and resampling ops (``lrpfx.ops.norms``,
``lrpfx.ops.attention``, ``lrpfx.ops.resample``): plain tensor functions the generated program
calls, declared with ``lrpfx.runtime.kernel`` like the others."""

from __future__ import annotations

import torch

from lrpfx.runtime import kernel


def _per_channel(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-channel vector shaped to broadcast along dimension 1 of ``like``."""
    return t.reshape((1, -1) + (1,) * (like.dim() - 2))


@kernel(fresh=True)
def channel_shift(y: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``y − bias`` with ``bias`` per channel (dimension 1)."""
    return y - _per_channel(bias, y)


@kernel(fresh=True)
def group_norm_transpose(s: torch.Tensor, x: torch.Tensor, groups: int,
                         weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """``Wᵀ s`` for ``W = diag(w / σ_g) (I − 1/N_g)``, the Jacobian of GroupNorm at constant
    σ (per sample and group ``g`` of channels)."""
    t = s if weight is None else s * _per_channel(weight, s)
    grouped = x.reshape(x.shape[0], groups, -1)
    sigma = torch.sqrt(grouped.var(-1, unbiased=False, keepdim=True) + eps)
    t = t.reshape(grouped.shape) / sigma
    return (t - t.mean(-1, keepdim=True)).reshape(x.shape)


@kernel(fresh=True)
def attention_scale(q: torch.Tensor, scale: float | None) -> torch.Tensor:
    """``q`` times the attention scale: ``scale``, else ``1 / sqrt(q.size(-1))`` (as
    ``F.scaled_dot_product_attention`` scales ``q kᵀ``)."""
    return q * (scale if scale is not None else q.size(-1) ** -0.5)


@kernel(fresh=True)
def causal_mask(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The lower-triangular mask of ``is_causal=True``: query ``i`` sees keys ``j <= i``."""
    return torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).tril()


@kernel(fresh=True)
def attention_mask(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The attention logits with ``mask`` applied as ``F.scaled_dot_product_attention`` does:
    a boolean mask keeps where True (``-inf`` elsewhere), a float mask is added."""
    if mask.dtype == torch.bool:
        return logits.masked_fill(~mask, float("-inf"))
    return logits + mask


@kernel(fresh=True)
def finite_ratio(r: torch.Tensor, z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``r / stabilize(z)``, zero where ``z`` is infinite (a masked attention logit)."""
    eps = torch.where(z >= 0, epsilon, -epsilon).to(z.dtype)
    return torch.where(torch.isinf(z), 0.0, r / (z + eps))


@kernel(fresh=True)
def mask_share(r: torch.Tensor, logits: torch.Tensor, z: torch.Tensor, mask: torch.Tensor,
               epsilon: float) -> torch.Tensor:
    """The logits' relevance through ``z = attention_mask(logits, mask)``: a boolean mask
    selects (``R`` where kept, 0 where masked), a float mask is a sum (``logits · R /
    stabilize(z)``, 0 where ``z`` is infinite)."""
    if mask.dtype == torch.bool:
        return torch.where(mask, r, 0.0)
    return logits * finite_ratio(r, z, epsilon)
