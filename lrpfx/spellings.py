"""Every spelling of an op in scope, mapped onto one canonical function call.

``normalize`` reads these tables. A module converter returns the canonical function and its
arguments after the input (``Param`` marks a tensor to lift into the program), or ``None`` when
the module is an identity at eval time. A ``Unsupported`` result keeps the module and says why.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _ntuple

from lrpfx.ops import functional as lf


@dataclass(frozen=True)
class Param:
    """A tensor argument of a canonical call, lifted as a buffer named ``<module path>.<name>``."""

    name: str
    value: torch.Tensor | None


@dataclass(frozen=True)
class Call:
    """A canonical call ``fn(x, *args, **kwargs)``."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Unsupported:
    reason: str


Converted = Call | Unsupported | None

# modules that vanish at eval time
IDENTITIES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
              nn.FeatureAlphaDropout)
DROPOUT_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
                     F.feature_alpha_dropout}
IDENTITY_METHODS = {"contiguous", "clone", "detach"}
IDENTITY_FUNCTIONS = {torch.clone, torch.detach}

# activations: module -> canonical function and its arguments
_ACTIVATION_MODULES: dict[type[nn.Module], Callable[[Any], Call]] = {
    nn.ReLU: lambda m: Call(torch.relu, ()),
    nn.ReLU6: lambda m: Call(F.relu6, ()),
    nn.Hardtanh: lambda m: Call(F.hardtanh, (m.min_val, m.max_val)),
    nn.Sigmoid: lambda m: Call(torch.sigmoid, ()),
    nn.Tanh: lambda m: Call(torch.tanh, ()),
    nn.SiLU: lambda m: Call(F.silu, ()),
    nn.GELU: lambda m: Call(F.gelu, (m.approximate,)),
    nn.ELU: lambda m: Call(F.elu, (m.alpha,)),
    nn.SELU: lambda m: Call(F.selu, ()),
    nn.CELU: lambda m: Call(F.celu, (m.alpha,)),
    nn.LeakyReLU: lambda m: Call(F.leaky_relu, (m.negative_slope,)),
    nn.Hardswish: lambda m: Call(F.hardswish, ()),
    nn.Hardsigmoid: lambda m: Call(F.hardsigmoid, ()),
    nn.Softplus: lambda m: Call(F.softplus, (m.beta, m.threshold)),
    nn.Mish: lambda m: Call(F.mish, ()),
    nn.LogSigmoid: lambda m: Call(F.logsigmoid, ()),
    nn.Softsign: lambda m: Call(F.softsign, ()),
    nn.Tanhshrink: lambda m: Call(F.tanhshrink, ()),
}

# function and method spellings -> canonical function (in-place forms included)
FUNCTION_ALIASES: dict[Any, Callable[..., Any]] = {
    F.relu: torch.relu, torch.relu_: torch.relu, F.relu_: torch.relu,
    torch.sigmoid_: torch.sigmoid, F.sigmoid: torch.sigmoid,
    torch.tanh_: torch.tanh, F.tanh: torch.tanh,
    F.elu_: F.elu, F.leaky_relu_: F.leaky_relu, F.hardtanh_: F.hardtanh, F.celu_: F.celu,
    torch.selu_: F.selu, torch.selu: F.selu,
}
METHOD_ALIASES: dict[str, Callable[..., Any]] = {
    "relu": torch.relu, "relu_": torch.relu, "sigmoid": torch.sigmoid,
    "sigmoid_": torch.sigmoid, "tanh": torch.tanh, "tanh_": torch.tanh,
}
IN_PLACE_FUNCTIONS = {torch.relu_, F.relu_, torch.sigmoid_, torch.tanh_, F.elu_, F.leaky_relu_,
                      F.hardtanh_, F.celu_, torch.selu_, operator.iadd, operator.isub,
                      operator.imul, operator.itruediv}


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


def _batchnorm(m: nn.modules.batchnorm._BatchNorm) -> Converted:
    if m.running_mean is None or m.running_var is None:
        return Unsupported("track_running_stats=False: normalizes with batch statistics")
    scale, shift = batchnorm_affine(
        m.running_mean.detach(), m.running_var.detach(),
        None if m.weight is None else m.weight.detach(),
        None if m.bias is None else m.bias.detach(), m.eps,
    )
    return Call(lf.affine, (Param("scale", scale), Param("shift", shift)))


def _pool_args(n: int, kernel: Any, stride: Any, padding: Any) -> tuple[Any, ...]:
    tup = _ntuple(n)
    kernel = tup(kernel)
    return kernel, tup(stride) if stride else kernel, tup(padding)


def max_pool_call(n: int, kernel: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
                  ceil_mode: bool = False, return_indices: bool = False) -> Converted:
    if return_indices:
        return Unsupported("return_indices=True")
    k, s, p = _pool_args(n, kernel, stride, padding)
    fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[n - 1]
    return Call(fn, (k, s, p, _ntuple(n)(dilation), ceil_mode))


def avg_pool_call(n: int, kernel: Any, stride: Any = None, padding: Any = 0,
                  ceil_mode: bool = False, count_include_pad: bool = True,
                  divisor_override: int | None = None) -> Converted:
    k, s, p = _pool_args(n, kernel, stride, padding)
    fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[n - 1]
    if n == 1:  # avg_pool1d has no divisor_override
        return Call(fn, (k, s, p, ceil_mode, count_include_pad))
    return Call(fn, (k, s, p, ceil_mode, count_include_pad, divisor_override))


MODULES: dict[type[nn.Module], Callable[[Any], Converted]] = {
    **_ACTIVATION_MODULES,
    nn.Linear: lambda m: Call(F.linear, (Param("weight", m.weight), Param("bias", m.bias))),
    nn.Conv1d: _conv, nn.Conv2d: _conv, nn.Conv3d: _conv,
    nn.BatchNorm1d: _batchnorm, nn.BatchNorm2d: _batchnorm, nn.BatchNorm3d: _batchnorm,
    nn.MaxPool1d: lambda m: max_pool_call(1, m.kernel_size, m.stride, m.padding, m.dilation,
                                          m.ceil_mode, m.return_indices),
    nn.MaxPool2d: lambda m: max_pool_call(2, m.kernel_size, m.stride, m.padding, m.dilation,
                                          m.ceil_mode, m.return_indices),
    nn.MaxPool3d: lambda m: max_pool_call(3, m.kernel_size, m.stride, m.padding, m.dilation,
                                          m.ceil_mode, m.return_indices),
    nn.AvgPool1d: lambda m: avg_pool_call(1, m.kernel_size, m.stride, m.padding, m.ceil_mode,
                                          m.count_include_pad),
    nn.AvgPool2d: lambda m: avg_pool_call(2, m.kernel_size, m.stride, m.padding, m.ceil_mode,
                                          m.count_include_pad, m.divisor_override),
    nn.AvgPool3d: lambda m: avg_pool_call(3, m.kernel_size, m.stride, m.padding, m.ceil_mode,
                                          m.count_include_pad, m.divisor_override),
    nn.AdaptiveAvgPool1d: lambda m: Call(F.adaptive_avg_pool1d, (m.output_size,)),
    nn.AdaptiveAvgPool2d: lambda m: Call(F.adaptive_avg_pool2d, (m.output_size,)),
    nn.AdaptiveAvgPool3d: lambda m: Call(F.adaptive_avg_pool3d, (m.output_size,)),
}

# functional pooling spellings: function -> (dims, canonicalizer)
POOL_FUNCTIONS: dict[Any, Callable[..., Converted]] = {
    F.max_pool1d: lambda *a, **k: max_pool_call(1, *a, **k),
    F.max_pool2d: lambda *a, **k: max_pool_call(2, *a, **k),
    F.max_pool3d: lambda *a, **k: max_pool_call(3, *a, **k),
    F.avg_pool1d: lambda *a, **k: avg_pool_call(1, *a, **k),
    F.avg_pool2d: lambda *a, **k: avg_pool_call(2, *a, **k),
    F.avg_pool3d: lambda *a, **k: avg_pool_call(3, *a, **k),
}


def convert_module(module: nn.Module) -> Converted | Unsupported:
    """The canonical call of a leaf module, by exact class first, then by subclass."""
    converter = MODULES.get(type(module))
    if converter is None:
        converter = next((c for cls, c in MODULES.items() if isinstance(module, cls)), None)
    if isinstance(module, IDENTITIES):
        return None
    if converter is None:
        return Unsupported(f"no relevance implementation for {type(module).__qualname__}")
    return converter(module)
