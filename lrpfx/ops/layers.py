"""The layers of the linear family, one stanza each: convolutions, dense layers, eval-mode
BatchNorm (``affine``), average pools. Each states its facts, its spellings and its rows; the
rows run the linear recipe (``lrpfx.ops.linear``) with the op's forward and transpose.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.utils import _ntuple

from lrpfx import runtime as rt
from lrpfx.builder import Builder
from lrpfx.ops.linear import LinearOp, linear_rule
from lrpfx.ops.table import (
    Call,
    Converted,
    OpKind,
    Param,
    Unsupported,
    aten,
    defop,
    pass_through,
    relevance,
    spell,
)
from lrpfx.rules import AlphaBeta, Epsilon, Flat, Gamma, Norm, Pass, WSquare, ZBox, ZPlus

LAYER_RULES = (Epsilon, Norm, ZPlus, AlphaBeta, Gamma, ZBox, Flat, WSquare)
POOL_RULES = (Epsilon, Norm)


def _rest(b: Builder, node: fx.Node, start: int) -> tuple[Any, ...]:
    return tuple(b.map(a) for a in node.args[start:])


# -- convolutions: conv(x, w, b, stride, padding, dilation, groups) ------------------------------
def _conv(m: nn.modules.conv._ConvNd) -> Converted:
    n = len(m.kernel_size)
    if m.padding_mode != "zeros":
        return Unsupported(f"padding_mode={m.padding_mode!r}; only 'zeros' is supported")
    padding: Any = m.padding
    if padding == "valid":
        padding = (0,) * n
    elif padding == "same":
        total = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size, strict=True)]
        if any(t % 2 for t in total):
            return Unsupported("padding='same' with an even receptive field (asymmetric padding)")
        padding = tuple(t // 2 for t in total)
    fn = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
    return Call(fn, (Param("weight", m.weight), Param("bias", m.bias), tuple(m.stride),
                     tuple(padding), tuple(m.dilation), m.groups))


def _conv_call(n: int) -> Callable[..., Converted]:
    """``F.conv{n}d`` in any spelling (positional, keywords, ints or tuples) in canonical form."""
    fn, tup = (F.conv1d, F.conv2d, F.conv3d)[n - 1], _ntuple(n)

    def bind(weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
             groups: int = 1) -> Converted:
        if isinstance(padding, str):
            return Unsupported(f"{fn.__name__} with padding={padding!r}: give the padding as "
                               "numbers (or use the nn.Conv module, whose padding is resolved)")
        return Call(fn, (weight, bias, tup(stride), tup(padding), tup(dilation), groups))

    return bind


defop(F.conv1d, F.conv2d, F.conv3d, kind=OpKind.CONV)
spell(F.conv1d, aten.conv1d.default, bind=_conv_call(1), modules={nn.Conv1d: _conv})
spell(F.conv2d, aten.conv2d.default, bind=_conv_call(2), modules={nn.Conv2d: _conv})
spell(F.conv3d, aten.conv3d.default, bind=_conv_call(3), modules={nn.Conv3d: _conv})
relevance(F.conv1d, F.conv2d, F.conv3d, rule=LAYER_RULES)(linear_rule(LinearOp(
    forward=lambda b, n, x, w, bias: b.call(n.target, x, w, bias, *_rest(b, n, 3),
                                            name=f"z_{b.name(n)}"),
    transpose=lambda b, n, s, w: b.call(rt.conv_transpose, s, b[n.args[0]], w, *_rest(b, n, 3),
                                        name=f"c_{b.name(n)}"),
    weight=1, bias=2,
)))

# -- transposed convolutions: conv_transpose(x, w, b, stride, padding, output_padding, groups,
#    dilation); their transpose is the convolution with the same weight
def _conv_transpose(m: nn.modules.conv._ConvTransposeNd) -> Converted:
    if m.padding_mode != "zeros":
        return Unsupported(f"padding_mode={m.padding_mode!r}; only 'zeros' is supported")
    fn = CONV_TRANSPOSES[len(m.kernel_size) - 1]
    return Call(fn, (Param("weight", m.weight), Param("bias", m.bias), tuple(m.stride),
                     tuple(m.padding), tuple(m.output_padding), m.groups, tuple(m.dilation)))


def _conv_transpose_call(n: int) -> Callable[..., Converted]:
    fn, tup = CONV_TRANSPOSES[n - 1], _ntuple(n)

    def bind(weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
             output_padding: Any = 0, groups: int = 1, dilation: Any = 1) -> Converted:
        return Call(fn, (weight, bias, tup(stride), tup(padding), tup(output_padding), groups,
                         tup(dilation)))

    return bind


def _deconv_transpose(b: Builder, n: fx.Node, s: fx.Node, w: Any) -> fx.Node:
    stride, padding, _, groups, dilation = (b.map(a) for a in n.args[3:8])
    conv = (F.conv1d, F.conv2d, F.conv3d)[CONV_TRANSPOSES.index(n.target)]
    return b.call(conv, s, w, None, stride, padding, dilation, groups, name=f"c_{b.name(n)}")


CONV_TRANSPOSES = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)
defop(*CONV_TRANSPOSES, kind=OpKind.CONV)
for _n, _deconv in enumerate((nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), 1):
    spell(CONV_TRANSPOSES[_n - 1], bind=_conv_transpose_call(_n),
          modules={_deconv: _conv_transpose})
relevance(*CONV_TRANSPOSES, rule=LAYER_RULES)(linear_rule(LinearOp(
    forward=lambda b, n, x, w, bias: b.call(n.target, x, w, bias, *_rest(b, n, 3),
                                            name=f"z_{b.name(n)}"),
    transpose=_deconv_transpose, weight=1, bias=2,
)))

# -- dense: linear(x, w, b) ------------------------------------------------------------------------
defop(F.linear, kind=OpKind.DENSE)
spell(F.linear, aten.linear.default,
      modules={nn.Linear: lambda m: (Param("weight", m.weight), Param("bias", m.bias))},
      bind=lambda weight, bias=None: Call(F.linear, (weight, bias)))
relevance(F.linear, rule=LAYER_RULES)(linear_rule(LinearOp(
    forward=lambda b, n, x, w, bias: b.call(F.linear, x, w, bias, name=f"z_{b.name(n)}"),
    transpose=lambda b, n, s, w: b.call(rt.linear_transpose, s, w, name=f"c_{b.name(n)}"),
    weight=1, bias=2,
)))


# -- eval-mode BatchNorm: affine(x, scale, shift) per channel; folded into a conv/dense before it
def batchnorm_affine(
    mean: torch.Tensor, var: torch.Tensor, weight: torch.Tensor | None,
    bias: torch.Tensor | None, eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as ``x * scale + shift``: the pure tensor math."""
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    return scale, shift


def _batchnorm(m: nn.modules.batchnorm._BatchNorm) -> tuple[Any, ...] | Converted:
    if m.running_mean is None or m.running_var is None:
        return Unsupported("track_running_stats=False: normalizes with batch statistics")
    scale, shift = batchnorm_affine(
        m.running_mean.detach(), m.running_var.detach(),
        None if m.weight is None else m.weight.detach(),
        None if m.bias is None else m.bias.detach(), m.eps,
    )
    return (Param("scale", scale), Param("shift", shift))


defop(rt.affine, kind=OpKind.BATCHNORM)
spell(rt.affine, modules={nn.BatchNorm1d: _batchnorm, nn.BatchNorm2d: _batchnorm,
                          nn.BatchNorm3d: _batchnorm})
relevance(rt.affine, rule=LAYER_RULES)(linear_rule(LinearOp(
    forward=lambda b, n, x, w, bias: b.call(rt.affine, x, w, bias, name=f"z_{b.name(n)}"),
    transpose=lambda b, n, s, w: b.call(rt.affine, s, w, None, name=f"c_{b.name(n)}"),
    weight=1, bias=2,
)))


relevance(rt.affine, rule=Pass)(pass_through)  # an unfolded BatchNorm (the presets' default)


# -- average pools: avg_pool(x, kernel, stride, padding, ceil, count_include_pad[, divisor]) ----
def pool_windows(n: int, kernel: Any, stride: Any, padding: Any) -> tuple[Any, ...]:
    """Kernel, stride and padding of an ``n``-d pool as ``n``-tuples (stride: the kernel)."""
    tup = _ntuple(n)
    kernel = tup(kernel)
    return kernel, tup(stride) if stride else kernel, tup(padding)


def _avg_pool(n: int) -> Callable[..., Converted]:
    fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[n - 1]

    def bind(kernel_size: Any, stride: Any = None, padding: Any = 0, ceil_mode: bool = False,
             count_include_pad: bool = True, divisor_override: int | None = None) -> Converted:
        k, s, p = pool_windows(n, kernel_size, stride, padding)
        if n == 1:  # avg_pool1d has no divisor_override
            return Call(fn, (k, s, p, ceil_mode, count_include_pad))
        return Call(fn, (k, s, p, ceil_mode, count_include_pad, divisor_override))

    return bind


def _avg_pool_module(n: int) -> Callable[[Any], Converted]:
    def convert(m: Any) -> Converted:
        return _avg_pool(n)(m.kernel_size, m.stride, m.padding, m.ceil_mode,
                            m.count_include_pad, getattr(m, "divisor_override", None))
    return convert


AVG_POOLS = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)
ADAPTIVE_POOLS = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)
defop(*AVG_POOLS, *ADAPTIVE_POOLS, kind=OpKind.AVGPOOL, keeps_nonneg=True)
for _n, _module in enumerate((nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d), start=1):
    spell(AVG_POOLS[_n - 1], getattr(aten, f"avg_pool{_n}d").default,
          *((torch.avg_pool1d,) if _n == 1 else ()), bind=_avg_pool(_n),
          modules={_module: _avg_pool_module(_n)})
for _n, (_fn, _module) in enumerate(zip(ADAPTIVE_POOLS, (
        nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d), strict=True), start=1):
    spell(_fn, getattr(aten, f"adaptive_avg_pool{_n}d").default,
          *((torch.adaptive_avg_pool1d,) if _n == 1 else ()),
          modules={_module: lambda m: (m.output_size,)})
relevance(*AVG_POOLS, rule=POOL_RULES)(linear_rule(LinearOp(
    forward=lambda b, n, x, w, bias: b.call(n.target, x, *_rest(b, n, 1), name=f"z_{b.name(n)}"),
    transpose=lambda b, n, s, w: b.call(rt.avg_pool_transpose, s, b[n.args[0]], *_rest(b, n, 1),
                                        name=f"c_{b.name(n)}"),
)))
relevance(*ADAPTIVE_POOLS, rule=POOL_RULES)(linear_rule(LinearOp(
    forward=lambda b, n, x, w, bias: b.call(n.target, x, *_rest(b, n, 1), name=f"z_{b.name(n)}"),
    transpose=lambda b, n, s, w: b.call(rt.adaptive_avg_pool_transpose, s, b[n.args[0]],
                                        name=f"c_{b.name(n)}"),
)))
