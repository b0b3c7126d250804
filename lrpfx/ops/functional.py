"""Runtime helpers that the generated program calls.

They are plain tensor functions; the generated code names them, so they read as the math they do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


def affine(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
    """``x * scale + shift`` along the channel dimension 1 (an eval-mode BatchNorm)."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    y = x * scale.reshape(shape)
    return y if shift is None else y + shift.reshape(shape)


def _signed_epsilon(z: torch.Tensor, epsilon: float | torch.Tensor) -> torch.Tensor:
    """``epsilon * sign0(z)``: exactly ``±epsilon`` in ``z``'s dtype (``sign0(0) = +1``)."""
    if isinstance(epsilon, torch.Tensor):
        eps = epsilon.to(z.dtype)
    else:
        eps = torch.full((), epsilon, dtype=z.dtype, device=z.device)
    return torch.where(z >= 0, eps, -eps)


def stabilize(z: torch.Tensor, epsilon: float | torch.Tensor) -> torch.Tensor:
    """``z + epsilon * sign0(z)`` with ``sign0(0) = +1``."""
    return z + _signed_epsilon(z, epsilon)


def stabilize_(z: torch.Tensor, epsilon: float | torch.Tensor) -> torch.Tensor:
    """``stabilize`` written into ``z`` (an intermediate nothing reads afterwards)."""
    return z.add_(_signed_epsilon(z, epsilon))


def _fits(a: torch.Tensor, b: torch.Tensor | float) -> bool:
    """``a ∘ b`` has ``a``'s shape and dtype, so it can be written into ``a``."""
    if not isinstance(b, torch.Tensor):
        return True
    return a.dtype == b.dtype and a.shape == torch.broadcast_shapes(a.shape, b.shape)


# ``a ∘ b`` written into ``a`` (or into ``b``: ``*_second``) when the shapes allow; the program
# calls these where that operand is an intermediate nothing reads afterwards (lrpfx.inplace)
def mul_into(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.mul_(b) if _fits(a, b) else a * b


def add_into(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.add_(b) if _fits(a, b) else a + b


def sub_into(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.sub_(b) if _fits(a, b) else a - b


def div_into(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.div_(b) if _fits(a, b) else a / b


def sub_into_second(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.sub(a, b, out=b) if _fits(b, a) else a - b


def div_into_second(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.div(a, b, out=b) if _fits(b, a) else a / b


def conv_transpose(
    s: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> torch.Tensor:
    """The transpose of ``conv(·, weight)`` applied to ``s``, shaped like ``x``."""
    return torch.ops.aten.convolution_backward(
        s, x, weight, None, stride, padding, dilation, False, [0] * len(stride), groups,
        [True, False, False],
    )[0]


def linear_transpose(s: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The transpose of ``F.linear(·, weight)`` applied to ``s``."""
    return torch.matmul(s, weight)


def _as_2d(
    fn_2d: Callable[..., torch.Tensor], s: torch.Tensor, x: torch.Tensor, *args: object
) -> torch.Tensor:
    """Run a 2-d pooling backward on 1-d data by adding a unit height."""
    return fn_2d(s.unsqueeze(-2), x.unsqueeze(-2), *args).squeeze(-2)


def avg_pool_transpose(
    s: torch.Tensor,
    x: torch.Tensor,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    ceil_mode: bool,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> torch.Tensor:
    """The transpose of ``avg_pool{1,2,3}d`` applied to ``s``, shaped like ``x``."""
    aten = torch.ops.aten
    args = (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    spatial = x.dim() - 2
    if spatial == 3:
        return aten.avg_pool3d_backward(s, x, *args)
    if spatial == 2:
        return aten.avg_pool2d_backward(s, x, *args)
    k, st, p = ([1, *kernel_size], [1, *stride], [0, *padding])
    return _as_2d(aten.avg_pool2d_backward, s, x, k, st, p, ceil_mode, count_include_pad, None)


def adaptive_avg_pool_transpose(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The transpose of ``adaptive_avg_pool{1,2,3}d`` applied to ``s``, shaped like ``x``."""
    aten = torch.ops.aten
    spatial = x.dim() - 2
    if spatial == 3:
        return aten._adaptive_avg_pool3d_backward(s, x)
    if spatial == 2:
        return aten._adaptive_avg_pool2d_backward(s, x)
    return _as_2d(aten._adaptive_avg_pool2d_backward, s, x)


def avg_pool(
    x: torch.Tensor,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    ceil_mode: bool,
) -> torch.Tensor:
    """Average pooling of any dimension 1-3 (max-pool windows treated as averages)."""
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[x.dim() - 3]
    return pool(x, list(kernel_size), list(stride), list(padding), ceil_mode, True)


def scatter_to_indices(r: torch.Tensor, size: Sequence[int], indices: torch.Tensor) -> torch.Tensor:
    """Winner-takes-all routing of a max-pool: each output's relevance goes to its argmax.

    ``size`` is the pool input's shape (the program keeps the shape, not the input itself).
    """
    flat = r.new_zeros(size).flatten(2)
    return flat.scatter_add_(2, indices.flatten(2), r.flatten(2)).view(size)


def ones_sample(x: torch.Tensor) -> torch.Tensor:
    """Ones shaped like one sample of ``x`` (batch 1): a constant input is the same for every
    sample, so a layer's output on it is computed once and broadcast."""
    return x.new_ones((1, *x.shape[1:]))


def expand_sample(value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A constant input (a bound) as one sample shaped like ``x``'s samples; a bound given per
    sample keeps the batch."""
    per_sample = value.dim() == x.dim() and value.shape[0] != 1
    return value.expand_as(x) if per_sample else value.expand((1, *x.shape[1:]))


def channel_sum(s: torch.Tensor) -> torch.Tensor:
    """``s`` summed over its channels (dimension 1), keeping the dimension."""
    return s.sum(1, keepdim=True)


def one_channel(x: torch.Tensor) -> torch.Tensor:
    """The first channel of ``x`` as a view (its shape with one channel)."""
    return x.narrow(1, 0, 1)


def ones_spatial(x: torch.Tensor) -> torch.Tensor:
    """Ones of one sample and one channel with the spatial shape of ``x``."""
    return x.new_ones((1, 1, *x.shape[2:]))


def repeat_channels(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A one-channel ``c`` copied into every channel of a tensor shaped like ``x``."""
    return c.expand_as(x).contiguous()


def output_relevance(
    output: torch.Tensor, target: torch.Tensor | None, relevance: torch.Tensor | None
) -> torch.Tensor:
    """The relevance at the output: ``relevance`` if given, else ``output * one_hot(target)``.

    ``target`` holds one class index per sample along dimension 1; ``None`` takes the argmax.
    """
    if relevance is not None:
        return relevance
    if target is None:
        target = output.argmax(1)
    index = target.reshape((-1, 1) + (1,) * (output.dim() - 2)).expand(
        (output.shape[0], 1) + tuple(output.shape[2:])
    )
    return torch.zeros_like(output).scatter(1, index, output.gather(1, index))
