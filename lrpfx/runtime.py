"""Every function the generated program calls, in one vocabulary.

Plain tensor functions; the program's ``.code`` names them (``lrpfx_runtime_stabilize``), so it
reads as the math it does. Each declares its own facts with ``@kernel`` for the program passes
(``lrpfx.program``): whether its result is a new tensor (``fresh``: it shares no memory with its
arguments), which variant writes into its first argument (``inplace``) and which arguments it
reads for their shape alone (``shapes``: there it takes a ``torch.Size`` as well).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

from lrpfx import outputs
from lrpfx.targets import Seed, Target, logit

Fn = TypeVar("Fn", bound=Callable[..., Any])


@dataclass(frozen=True)
class Kernel:
    """The facts of a runtime function: ``fresh`` (its result is a new tensor), ``inplace``
    (the variant writing its result into its first argument, or None) and ``shapes`` (the
    positions of the arguments it reads for their shape alone, which take a ``torch.Size``
    too)."""

    fresh: bool
    inplace: Callable[..., Any] | None = None
    shapes: tuple[int, ...] = ()


def kernel(*, fresh: bool, inplace: Callable[..., Any] | None = None,
           shapes: tuple[int, ...] = ()) -> Callable[[Fn], Fn]:
    """Declare a runtime function's facts (see ``Kernel``)."""

    def declare(fn: Fn) -> Fn:
        fn.__lrpfx_kernel__ = Kernel(fresh, inplace, shapes)  # type: ignore[attr-defined]
        return fn

    return declare


def shape_of(x: torch.Tensor | torch.Size) -> torch.Size:
    """The shape of a tensor, or the shape itself (an argument declared in ``shapes``)."""
    return x if isinstance(x, torch.Size) else x.shape


def kernel_of(target: Any) -> Kernel | None:
    """The facts of ``target`` when it is a runtime function, else None."""
    facts = getattr(target, "__lrpfx_kernel__", None)
    return facts if isinstance(facts, Kernel) else None


# -- layers and their transposes -----------------------------------------------------------------
@kernel(fresh=True)
def affine(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
    """``x * scale + shift`` along the channel dimension 1 (an eval-mode BatchNorm)."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    y = x * scale.reshape(shape)
    return y if shift is None else y + shift.reshape(shape)


def _signed_epsilon(z: torch.Tensor, epsilon: float | torch.Tensor) -> torch.Tensor:
    """``epsilon * sign0(z)``: exactly ``±epsilon`` in ``z``'s dtype (``sign0(0) = +1``)."""
    if isinstance(epsilon, torch.Tensor):
        eps = epsilon.to(z.dtype)
        return torch.where(z >= 0, eps, -eps)
    eps = torch.full((), epsilon, dtype=z.dtype, device=z.device)
    # 2ε·[z ≥ 0] − ε: the same bits as where(z >= 0, ε, −ε) (2ε − ε is exact), 1.8× faster
    return (z >= 0).to(z.dtype).mul_(2 * eps).sub_(eps)


@kernel(fresh=True)
def stabilize_(z: torch.Tensor, epsilon: float | torch.Tensor) -> torch.Tensor:
    """``stabilize`` written into ``z`` (an intermediate nothing reads afterwards)."""
    return z.add_(_signed_epsilon(z, epsilon))


@kernel(fresh=True, inplace=stabilize_)
def stabilize(z: torch.Tensor, epsilon: float | torch.Tensor) -> torch.Tensor:
    """``z + epsilon * sign0(z)`` with ``sign0(0) = +1``."""
    return _signed_epsilon(z, epsilon).add_(z)  # a new tensor, the sum commutes bit for bit


@kernel(fresh=True)
def conv_transpose(s: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: Sequence[int],
                   padding: Sequence[int], dilation: Sequence[int], groups: int) -> torch.Tensor:
    """The transpose of ``conv(·, weight)`` applied to ``s``, shaped like ``x``."""
    return torch.ops.aten.convolution_backward(
        s, x, weight, None, stride, padding, dilation, False, [0] * len(stride), groups,
        [True, False, False],
    )[0]


@kernel(fresh=True)
def linear_transpose(s: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The transpose of ``F.linear(·, weight)`` applied to ``s``."""
    return torch.matmul(s, weight)


def _as_2d(
    fn_2d: Callable[..., torch.Tensor], s: torch.Tensor, x: torch.Tensor, *args: object
) -> torch.Tensor:
    """Run a 2-d pooling backward on 1-d data by adding a unit height."""
    return fn_2d(s.unsqueeze(-2), x.unsqueeze(-2), *args).squeeze(-2)


def _pad_first(x: torch.Tensor, kernel_size: Sequence[int], padding: Sequence[int],
               ceil_mode: bool) -> bool:
    """Whether to pad before an average pool: torch's refuse an input smaller than the window
    even where the padding makes up for it (S3D's 3×3×3 max-pools on 2 frames, read as
    averages); zeros counted in the average, padding first is the same pool."""
    return not ceil_mode and any(p and size < k for size, k, p in
                                 zip(x.shape[2:], kernel_size, padding, strict=False))


def _pads(padding: Sequence[int]) -> list[int]:
    """``F.pad``'s form of a pool's symmetric padding (last dimension first)."""
    return [p for q in reversed(padding) for p in (q, q)]


@kernel(fresh=True)
def avg_pool_transpose(s: torch.Tensor, x: torch.Tensor, kernel_size: Sequence[int],
                       stride: Sequence[int], padding: Sequence[int], ceil_mode: bool,
                       count_include_pad: bool = True, divisor_override: int | None = None
                       ) -> torch.Tensor:
    """The transpose of ``avg_pool{1,2,3}d`` applied to ``s``, shaped like ``x``."""
    if count_include_pad and _pad_first(x, kernel_size, padding, ceil_mode):
        pads = _pads(padding)
        c = avg_pool_transpose(s, F.pad(x, pads), kernel_size, stride, [0] * len(padding),
                               ceil_mode, True, divisor_override)
        return F.pad(c, [-p for p in pads])  # the crop of the zeros added
    aten = torch.ops.aten
    args = (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    spatial = x.dim() - 2
    if spatial == 3:
        return aten.avg_pool3d_backward(s, x, *args)
    if spatial == 2:
        return aten.avg_pool2d_backward(s, x, *args)
    k, st, p = ([1, *kernel_size], [1, *stride], [0, *padding])
    return _as_2d(aten.avg_pool2d_backward, s, x, k, st, p, ceil_mode, count_include_pad, None)


@kernel(fresh=True)
def adaptive_avg_pool_transpose(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The transpose of ``adaptive_avg_pool{1,2,3}d`` applied to ``s``, shaped like ``x``."""
    aten = torch.ops.aten
    spatial = x.dim() - 2
    if spatial == 3:
        return aten._adaptive_avg_pool3d_backward(s, x)
    if spatial == 2:
        return aten._adaptive_avg_pool2d_backward(s, x)
    return _as_2d(aten._adaptive_avg_pool2d_backward, s, x)


@kernel(fresh=True)
def avg_pool(x: torch.Tensor, kernel_size: Sequence[int], stride: Sequence[int],
             padding: Sequence[int], ceil_mode: bool) -> torch.Tensor:
    """Average pooling of any dimension 1-3 (max-pool windows treated as averages)."""
    if _pad_first(x, kernel_size, padding, ceil_mode):
        x, padding = F.pad(x, _pads(padding)), [0] * len(padding)
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[x.dim() - 3]
    return pool(x, list(kernel_size), list(stride), list(padding), ceil_mode, True)


@kernel(fresh=True)
def scatter_to_indices(r: torch.Tensor, size: Sequence[int], indices: torch.Tensor) -> torch.Tensor:
    """Winner-takes-all routing of a max-pool: each output's relevance goes to its argmax.

    ``size`` is the pool input's shape (the program keeps the shape, not the input itself).
    """
    flat = r.new_zeros(size).flatten(2)
    return flat.scatter_add_(2, indices.flatten(2), r.flatten(2)).view(size)


@kernel(fresh=False)
def ones_sample(x: torch.Tensor) -> torch.Tensor:
    """Ones shaped like one sample of ``x`` (batch 1): a constant input is the same for every
    sample, so a layer's output on it is computed once and broadcast."""
    return x.new_ones((1, *x.shape[1:]))


@kernel(fresh=False)
def expand_sample(value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A constant input (a bound) as one sample shaped like ``x``'s samples; a bound given per
    sample keeps the batch."""
    per_sample = value.dim() == x.dim() and value.shape[0] != 1
    return value.expand_as(x) if per_sample else value.expand((1, *x.shape[1:]))


@kernel(fresh=True)
def channel_sum(s: torch.Tensor) -> torch.Tensor:
    """``s`` summed over its channels (dimension 1), keeping the dimension."""
    return s.sum(1, keepdim=True)


@kernel(fresh=False)
def one_channel(x: torch.Tensor) -> torch.Tensor:
    """The first channel of ``x`` as a view (its shape with one channel)."""
    return x.narrow(1, 0, 1)


@kernel(fresh=False)
def ones_spatial(x: torch.Tensor) -> torch.Tensor:
    """Ones of one sample and one channel with the spatial shape of ``x``."""
    return x.new_ones((1, 1, *x.shape[2:]))


@kernel(fresh=True)
def repeat_channels(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A one-channel ``c`` copied into every channel of a tensor shaped like ``x``."""
    return c.expand_as(x).contiguous()


# -- reductions and broadcasting -----------------------------------------------------------------
@kernel(fresh=False, shapes=(1,))
def unbroadcast(r: torch.Tensor, like: torch.Tensor | torch.Size) -> torch.Tensor:
    """The transpose of broadcasting ``like`` to ``r``'s shape: sum over the broadcast dims."""
    shape = shape_of(like)
    return r if r.shape == shape else r.sum_to_size(shape)


def _dims(x: torch.Tensor, dim: int | Sequence[int] | None) -> list[int]:
    if dim is None:
        return list(range(x.dim()))
    return sorted(d % x.dim() for d in ([dim] if isinstance(dim, int) else dim))


@kernel(fresh=False)
def sum_transpose(s: torch.Tensor, x: torch.Tensor, dim: int | Sequence[int] | None,
                  keepdim: bool) -> torch.Tensor:
    """The transpose of ``torch.sum(·, dim, keepdim)`` applied to ``s``, shaped like ``x``."""
    if not keepdim:
        for d in _dims(x, dim):
            s = s.unsqueeze(d)
    return s.expand_as(x)


@kernel(fresh=False)
def mean_transpose(s: torch.Tensor, x: torch.Tensor, dim: int | Sequence[int] | None,
                   keepdim: bool) -> torch.Tensor:
    """The transpose of ``torch.mean(·, dim, keepdim)`` applied to ``s``, shaped like ``x``."""
    dims = _dims(x, dim)
    return sum_transpose(s, x, dim, keepdim) / math.prod(x.shape[d] for d in dims)


@kernel(fresh=False)
def std_epsilon(z: torch.Tensor, factor: float) -> torch.Tensor:
    """``factor · sqrt(mean(z²)) + 1e-9`` per sample, shaped to broadcast against ``z``
    (the ε of ``Epsilon(factor, scale="std")``)."""
    rms = z.detach().flatten(1).square().mean(1).sqrt()
    return (factor * rms + 1e-9).reshape((-1,) + (1,) * (z.dim() - 1))


@kernel(fresh=False)
def layer_norm_transpose(
    s: torch.Tensor, x: torch.Tensor, normalized_shape: Sequence[int],
    weight: torch.Tensor | None, eps: float,
) -> torch.Tensor:
    """``Wᵀ s`` for ``W = diag(w / σ) (I − 1/N)``, the Jacobian of LayerNorm at constant σ."""
    dims = tuple(range(-len(normalized_shape), 0))
    sigma = torch.sqrt(x.var(dims, unbiased=False, keepdim=True) + eps)
    t = s / sigma if weight is None else s * weight / sigma
    return t - t.mean(dims, keepdim=True)


# -- the output relevance, filters, layout -------------------------------------------------------
@kernel(fresh=False)
def output_relevance(
    output: Any, target: Target, relevance: Any
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """The relevance at the output (``lrpfx.targets``): the target logit, a given tensor, or a
    seed function of the output; for a dict / tuple / list output, one relevance per tensor of
    it (``lrpfx.outputs.leaves`` order)."""
    if not isinstance(output, torch.Tensor):
        return outputs.seed_leaves(output, target, _seeded_structure(relevance), _checked)
    if relevance is None:
        return logit(output, target)
    if callable(relevance) and not isinstance(relevance, torch.Tensor):
        return _seeded(relevance, output, target)
    if relevance.shape != output.shape:
        raise ValueError(f"output_relevance has shape {tuple(relevance.shape)}, the model "
                         f"output {tuple(output.shape)}; give one value per output entry")
    return relevance


def _call(seed: Seed, output: Any, target: Target) -> Any:
    """``seed(output, target)``, a failure named."""
    name = getattr(seed, "__name__", None) or repr(seed)
    try:
        return seed(output, target)
    except Exception as error:
        raise ValueError(f"output_relevance {name} failed on the model output of "
                         f"{outputs.describe(outputs.shapes(output))}: "
                         f"{type(error).__name__}: {error}") from error


def _seeded_structure(seed: Any) -> Any:
    """A seed of a structured output, its failures named (a structure of tensors as it is)."""
    if callable(seed) and not isinstance(seed, torch.Tensor):
        return lambda output, target: _call(seed, output, target)
    return seed


def _seeded(seed: Seed, output: torch.Tensor, target: Target) -> torch.Tensor:
    """``seed(output, target)``, checked as an ``output_relevance`` tensor is."""
    return _checked(_call(seed, output, target), output,
                    getattr(seed, "__name__", None) or repr(seed))


def finite(t: torch.Tensor) -> bool:
    """Whether every entry of ``t`` is finite: one reduction (``aminmax`` carries a NaN or an
    infinity to its result), 20× faster than ``isfinite(t).all()`` on large tensors."""
    if not t.is_floating_point() or t.numel() == 0:
        return True
    low, high = torch.aminmax(t)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def _checked(r: Any, output: torch.Tensor, name: str) -> torch.Tensor:
    """``r``, the relevance of ``output`` called ``name`` in messages, if it fits it."""
    if not isinstance(r, torch.Tensor) or not r.is_floating_point():
        got = f"dtype {r.dtype}" if isinstance(r, torch.Tensor) else type(r).__name__
        raise TypeError(f"output_relevance {name} must return a floating-point tensor shaped "
                        f"like the model output, got {got}")
    if r.shape != output.shape or r.dtype != output.dtype or r.device != output.device:
        raise ValueError(f"output_relevance {name} returned {tuple(r.shape)} {r.dtype} on "
                         f"{r.device}; the model output is {tuple(output.shape)} {output.dtype} "
                         f"on {output.device}: give one value per output entry")
    # under torch.compile a Python bool of a tensor breaks the graph: there the explainer's
    # check of the result (diagnose.finite) names a non-finite seed instead
    if not torch.compiler.is_compiling() and not finite(r):
        raise ValueError(f"output_relevance {name} returned NaN/Inf values")
    return r


@kernel(fresh=False)
def top_k(relevance: torch.Tensor, percent: float) -> torch.Tensor:
    """Keep the largest ``percent`` % of the entries of each sample (dimension 0), zero the rest.

    ``k = max(1, ⌊percent/100 · n⌋)`` entries survive per sample, ``n`` its number of entries
    (ties at the threshold are broken by ``torch.topk``, so exactly ``k`` are kept).
    """
    flat = relevance.flatten(1)
    k = max(1, math.floor(flat.shape[1] * percent / 100 + 1e-9))
    if k >= flat.shape[1]:
        return relevance
    values, indices = flat.topk(k, dim=1)
    return torch.zeros_like(flat).scatter(1, indices, values).view_as(relevance)


@kernel(fresh=False)
def widen(x: Any, dtype: torch.dtype) -> Any:
    """``x`` in ``dtype`` when it is a floating-point tensor of a narrower dtype (bfloat16 or
    float16 in float32: ``compile(..., relevance_dtype=)``), else ``x`` itself (integers,
    masks, wider tensors, sizes, None)."""
    if (isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != dtype
            and torch.promote_types(x.dtype, dtype) == dtype):
        return x.to(dtype)
    if isinstance(x, tuple | list):  # the seeds of a structured output
        return type(x)(widen(part, dtype) for part in x)
    return x


@kernel(fresh=False)
def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` channels-last when it is a batch of images; anything else as it is."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


@kernel(fresh=False)
def contiguous(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the usual (row-major) layout."""
    return x.contiguous()
