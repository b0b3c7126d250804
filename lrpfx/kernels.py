"""Runtime kernels beyond the linear family (``lrpfx.runtime``): the transposes of matrix
products, ``einsum`` and the softmax rule (``lrpfx.ops.bilinear``, ``lrpfx.ops.softmax``), of
re-indexings (``lrpfx.ops.routing``), and the kernels of the norms, attention and resampling ops
(``lrpfx.ops.norms``, ``lrpfx.ops.attention``, ``lrpfx.ops.resample``): plain tensor functions
the generated program calls, declared with ``lrpfx.runtime.kernel`` like the others."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from lrpfx.runtime import kernel, shape_of


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


_UPSAMPLE = {("nearest", 1): "upsample_nearest1d", ("nearest", 2): "upsample_nearest2d",
             ("nearest", 3): "upsample_nearest3d",
             ("nearest-exact", 1): "_upsample_nearest_exact1d",
             ("nearest-exact", 2): "_upsample_nearest_exact2d",
             ("nearest-exact", 3): "_upsample_nearest_exact3d",
             ("linear", 1): "upsample_linear1d", ("bilinear", 2): "upsample_bilinear2d",
             ("bicubic", 2): "upsample_bicubic2d", ("trilinear", 3): "upsample_trilinear3d"}


@kernel(fresh=True)
def interpolate_transpose(r: torch.Tensor, x: torch.Tensor, scale_factor: Any, mode: str,
                          align_corners: bool | None, recompute_scale_factor: bool | None
                          ) -> torch.Tensor:
    """The transpose of ``F.interpolate(·, ..., mode)`` (linear in its input) applied to ``r``
    (shaped like its output), shaped like ``x``."""
    n = x.dim() - 2
    backward = getattr(torch.ops.aten, f"{_UPSAMPLE[mode, n]}_backward")
    scales: list[float | None] = [None] * n
    if scale_factor is not None and not recompute_scale_factor:
        factors = scale_factor if isinstance(scale_factor, (tuple, list)) else [scale_factor] * n
        scales = [float(f) for f in factors]
    args: list[Any] = [r, list(r.shape[2:]), list(x.shape)]
    if "nearest" not in mode:
        args.append(bool(align_corners))
    return backward(*args, *scales)


@kernel(fresh=True)
def unfold_transpose(r: torch.Tensor, x: torch.Tensor, dimension: int, size: int, step: int
                     ) -> torch.Tensor:
    """The transpose of ``x.unfold(dimension, size, step)``: each window back in place, the
    copies of an element added up."""
    return torch.ops.aten.unfold_backward(r, list(x.shape), dimension, size, step)


@kernel(fresh=True)
def amax_transpose(r: torch.Tensor, x: torch.Tensor, out: torch.Tensor, dim: Any,
                   keepdim: bool) -> torch.Tensor:
    """The winner-takes-all transpose of ``amax(x, dim, keepdim)``: each maximum's relevance to
    the entries that reach it, shared equally between ties."""
    dims = [d % x.dim() for d in ([dim] if isinstance(dim, int) else dim or range(x.dim()))]
    if not keepdim:
        for d in sorted(dims):
            out, r = out.unsqueeze(d), r.unsqueeze(d)
    winners = (x == out).to(r.dtype)
    return winners * (r / winners.sum(dims, keepdim=True))


@kernel(fresh=True)
def im2col_transpose(r: torch.Tensor, x: torch.Tensor, kernel_size: Any, dilation: Any,
                     padding: Any, stride: Any) -> torch.Tensor:
    """The transpose of ``F.unfold(x, ...)`` (im2col): ``F.fold`` back to ``x``'s shape."""
    return torch.nn.functional.fold(r, tuple(x.shape[-2:]), kernel_size, dilation, padding, stride)


@kernel(fresh=True)
def mean_square(x: torch.Tensor, dim: Any, keepdim: bool) -> torch.Tensor:
    """``mean(x², dim, keepdim)``: the square of an RMS norm's normalizer."""
    return x.square().mean(dim, keepdim)


@kernel(fresh=True)
def repeat_interleave_transpose(r: torch.Tensor, x: torch.Tensor, repeats: int,
                                dim: int | None) -> torch.Tensor:
    """The transpose of ``x.repeat_interleave(repeats, dim)``: the copies of each entry added."""
    if dim is None:
        return r.reshape(-1, repeats).sum(1).reshape(x.shape)
    d = dim % x.dim()
    return r.reshape(*x.shape[:d], x.shape[d], repeats, *x.shape[d + 1:]).sum(d + 1)


@kernel(fresh=True)
def pad_copies_transpose(r: torch.Tensor, x: torch.Tensor, pad: Any, mode: str) -> torch.Tensor:
    """The transpose of ``F.pad(x, pad, mode)`` for the copying modes (reflect, replicate,
    circular): every padded entry is a copy of one entry of ``x``, so each entry's relevance is
    the sum of its copies'. Where each copy comes from is read off the same pad of the entries'
    indices (exact in float64 up to 2⁵³ entries)."""
    n = len(pad) // 2
    spatial = x.shape[-n:]
    index = torch.arange(spatial.numel(), dtype=torch.float64, device=r.device)
    source = F.pad(index.reshape(1, 1, *spatial), list(pad), mode).long().flatten()
    flat = r.flatten(-n)
    out = flat.new_zeros(*flat.shape[:-1], spatial.numel()).index_add_(-1, source, flat)
    return out.reshape(x.shape)


@kernel(fresh=True)
def max_dim(x: torch.Tensor, dim: int, keepdim: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``x.max(dim, keepdim)``: the maxima and their indices (the canonical ``max`` over a
    dimension; over all of them it is ``amax``)."""
    return torch.max(x, dim, keepdim)  # type: ignore[return-value]


@kernel(fresh=True)
def max_dim_transpose(r: torch.Tensor, x: torch.Tensor, dim: int, keepdim: bool, i: int
                      ) -> torch.Tensor:
    """Piece ``i`` of ``max_dim``: the maxima's relevance to the entries equal to them (winner
    takes all, ties shared, as ``amax``); the indices (piece 1) are integers: none."""
    if i != 0:
        return torch.zeros_like(x)
    return amax_transpose(r, x, x.amax(dim, keepdim), dim, keepdim)


# -- matrix products, einsum, softmax ----------------------------------------------------------
@kernel(fresh=True)
def matmul_lhs_transpose(s: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The transpose of ``(·) @ b`` applied to ``s``: ``s @ bᵀ`` (last two dimensions)."""
    _matrices(s, b)
    return torch.matmul(s, b.transpose(-1, -2))


@kernel(fresh=True)
def matmul_rhs_transpose(a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The transpose of ``a @ (·)`` applied to ``s``: ``aᵀ @ s`` (last two dimensions)."""
    _matrices(a, s)
    return torch.matmul(a.transpose(-1, -2), s)


def _einsum_terms(equation: str, *operands: torch.Tensor) -> tuple[list[str], str]:
    """The terms of a two-operand ``einsum`` equation with explicit output and one letter per
    dimension (``...`` spelled out in unused letters, right-aligned as broadcasting aligns)."""
    equation = equation.replace(" ", "")
    inputs, arrow, out = equation.partition("->")
    terms = inputs.split(",")
    if not arrow:  # implicit output: the letters used once, in alphabetical order
        letters = "".join(terms).replace(".", "")
        out = ("..." if "..." in inputs else "") + "".join(
            sorted(c for c in set(letters) if letters.count(c) == 1))
    free = iter(c for c in "ZYXWVUTSRQPONMLKJIHGFEDCBAzyxwvutsrqponmlkjihgfedcba"
                if c not in equation)
    pairs = list(zip(terms, operands, strict=True))
    spread = [t.dim() - len(term.replace("...", "")) for term, t in pairs]  # dims in each "..."
    fill = "".join(next(free) for _ in range(max(spread, default=0)))
    terms = [term.replace("...", fill[len(fill) - n:])
             for term, n in zip(terms, spread, strict=True)]
    return terms, out.replace("...", fill)


@kernel(fresh=True)
def einsum_transpose(s: torch.Tensor, equation: str, a: torch.Tensor, b: torch.Tensor,
                     which: int) -> torch.Tensor:
    """The transpose of ``einsum(equation, a, b)`` in operand ``which`` (0: ``a``, 1: ``b``)
    applied to ``s``, shaped like that operand (no index repeated within one operand)."""
    (ta, tb), out = _einsum_terms(equation, a, b)
    target, other, operand = (ta, tb, a) if which == 0 else (tb, ta, b)
    kept = "".join(c for c in target if c in out or c in other)
    g = torch.einsum(f"{out},{other}->{kept}", s, b if which == 0 else a)
    for i, c in enumerate(target):  # indices summed within the operand alone: broadcast back
        if c not in kept:
            g = g.unsqueeze(i)
    g = g.sum_to_size([1 if n == 1 else m for m, n in zip(g.shape, operand.shape, strict=True)])
    return g.expand_as(operand).contiguous()


def _matrices(*operands: torch.Tensor) -> None:
    if any(t.dim() < 2 for t in operands):
        raise ValueError("lrpfx explains matrix products of matrices (and batches of them); "
                         "unsqueeze a vector operand of @ / torch.matmul into a matrix first")


@kernel(fresh=True)
def softmax_taylor(r: torch.Tensor, x: torch.Tensor, s: torch.Tensor, dim: int) -> torch.Tensor:
    """``x ⊙ (r − s Σ_dim r)``: the softmax's deep-Taylor rule (``-inf`` inputs get 0)."""
    return x.masked_fill(torch.isinf(x), 0.0) * (r - s * r.sum(dim, keepdim=True))


# -- routing: the transposes of re-indexings -----------------------------------------------------
@kernel(fresh=False, shapes=(1,))
def split_as(r: torch.Tensor, xs: Sequence[torch.Tensor | torch.Size], dim: int
             ) -> tuple[torch.Tensor, ...]:
    """The transpose of ``torch.cat(xs, dim)``: ``r`` cut into pieces shaped like ``xs``."""
    return torch.split(r, [shape_of(x)[dim] for x in xs], dim)


def _basic(index: Any) -> bool:
    """True for basic indexing (ints, slices, None, Ellipsis): the result is a view."""
    items = index if isinstance(index, tuple) else (index,)
    return all(i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in items)


@kernel(fresh=False, shapes=(1,))
def index_transpose(r: torch.Tensor, x: torch.Tensor | torch.Size, index: Any) -> torch.Tensor:
    """The transpose of ``x[index]``: zeros shaped like ``x`` with ``r`` added at ``index``."""
    shape = shape_of(x)
    out = r.new_zeros(shape)
    if _basic(index):
        out[index] = r
        return out
    positions = torch.arange(shape.numel(), device=r.device).view(shape)[index]
    return out.view(-1).index_add_(0, positions.reshape(-1), r.reshape(-1)).view(shape)


def _placed(r: torch.Tensor, x: torch.Tensor,
            part: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Zeros shaped like ``x`` with ``r`` written into ``part`` of them (the view of ``x`` a
    re-indexing took)."""
    out = torch.zeros_like(x)
    part(out).copy_(r)
    return out


@kernel(fresh=False)
def chunk_transpose(r: torch.Tensor, x: torch.Tensor, chunks: int, dim: int, i: int
                    ) -> torch.Tensor:
    """Piece ``i`` of ``torch.chunk(x, chunks, dim)`` back in place: zeros elsewhere."""
    return _placed(r, x, lambda out: torch.chunk(out, chunks, dim)[i])


@kernel(fresh=False)
def split_transpose(r: torch.Tensor, x: torch.Tensor, sizes: int | list[int], dim: int, i: int
                    ) -> torch.Tensor:
    """Piece ``i`` of ``torch.split(x, sizes, dim)`` back in place: zeros elsewhere."""
    return _placed(r, x, lambda out: torch.split(out, sizes, dim)[i])


@kernel(fresh=False)
def tensor_split_transpose(r: torch.Tensor, x: torch.Tensor, sections: int | list[int],
                           dim: int, i: int) -> torch.Tensor:
    """Piece ``i`` of ``torch.tensor_split(x, sections, dim)`` back in place: zeros elsewhere."""
    return _placed(r, x, lambda out: torch.tensor_split(out, sections, dim)[i])


@kernel(fresh=False)
def narrow_transpose(r: torch.Tensor, x: torch.Tensor, dim: int, start: int, length: int
                     ) -> torch.Tensor:
    """The transpose of ``torch.narrow(x, dim, start, length)``."""
    return _placed(r, x, lambda out: out.narrow(dim, start, length))


def slice_index(rank: int, dim: int, start: Any = None, end: Any = None, step: Any = 1
                ) -> tuple[slice, ...]:
    """The index of ``x[index]`` that takes ``x``'s slice ``start:end:step`` along ``dim`` (of
    ``rank`` dimensions)."""
    return (*[slice(None)] * (dim % rank), slice(start, end, step))


@kernel(fresh=False)
def slice_of(r: torch.Tensor, dim: int, start: int | None, end: int | None, step: int
             ) -> torch.Tensor:
    """``r``'s slice along ``dim`` (a view): the part of ``slice_scatter(x, src, ...)`` that
    came from ``src``."""
    return r[slice_index(r.dim(), dim, start, end, step)]


@kernel(fresh=True)
def slice_zeroed(r: torch.Tensor, dim: int, start: int | None, end: int | None, step: int
                 ) -> torch.Tensor:
    """``r`` with its slice along ``dim`` zero: the part of ``slice_scatter(x, src, ...)`` that
    came from ``x``."""
    out = r.clone()
    out[slice_index(r.dim(), dim, start, end, step)] = 0
    return out


@kernel(fresh=False)
def select_transpose(r: torch.Tensor, x: torch.Tensor, dim: int, index: int) -> torch.Tensor:
    """The transpose of ``torch.select(x, dim, index)``, and of piece ``index`` of
    ``torch.unbind(x, dim)``, which is the same slice."""
    return _placed(r, x, lambda out: out.select(dim, index))


@kernel(fresh=False)
def pad_transpose(r: torch.Tensor, pad: Sequence[int]) -> torch.Tensor:
    """The transpose of a constant ``F.pad``: the crop (negative pad) of the same amounts."""
    return F.pad(r, [-p for p in pad])
