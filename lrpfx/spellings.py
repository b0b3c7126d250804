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

from lrpfx import runtime as rt


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
    nn.GELU: lambda m: Call(F.gelu, (), {"approximate": m.approximate}),
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
    return Call(rt.affine, (Param("scale", scale), Param("shift", shift)))


def _pool_args(n: int, kernel: Any, stride: Any, padding: Any) -> tuple[Any, ...]:
    tup = _ntuple(n)
    kernel = tup(kernel)
    return kernel, tup(stride) if stride else kernel, tup(padding)


def max_pool_call(n: int, kernel_size: Any, stride: Any = None, padding: Any = 0,
                  dilation: Any = 1, ceil_mode: bool = False,
                  return_indices: bool = False) -> Converted:
    if return_indices:
        return Unsupported("return_indices=True")
    k, s, p = _pool_args(n, kernel_size, stride, padding)
    fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[n - 1]
    return Call(fn, (k, s, p, _ntuple(n)(dilation), ceil_mode))


def avg_pool_call(n: int, kernel_size: Any, stride: Any = None, padding: Any = 0,
                  ceil_mode: bool = False, count_include_pad: bool = True,
                  divisor_override: int | None = None) -> Converted:
    k, s, p = _pool_args(n, kernel_size, stride, padding)
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


# -- n-ary arithmetic, reductions, routing, normalization (the "any graph" ops) -------------------
# Canonical forms: ``operator.add/sub/mul/truediv``, ``torch.mean/sum(x, dims, keepdim)``,
# ``torch.cat/stack(tensors, dim)``, ``torch.chunk/split/unbind``, ``torch.permute(x, dims)``,
# ``torch.transpose``, ``torch.unsqueeze/squeeze``, ``torch.broadcast_to``, ``torch.narrow``,
# ``torch.select``, ``F.pad(x, pad, "constant", value)``, ``F.softmax(x, dim)``,
# ``F.layer_norm(x, shape, weight, bias, eps)``; stochastic depth is an identity at eval time.

def _dims(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """``permute(0, 2, 1)`` and ``permute((0, 2, 1))`` both mean the dims ``(0, 2, 1)``."""
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else args


def _reduce(fn: Callable[..., Any]) -> Callable[..., Converted]:
    def bind(dim: Any = None, keepdim: bool = False, *, dtype: Any = None,
             axis: Any = None) -> Converted:
        if dtype is not None:
            return Unsupported(f"{fn.__name__} with dtype={dtype}: cast before or after instead")
        dim = axis if dim is None else dim
        return Call(fn, (tuple(dim) if isinstance(dim, (list, tuple)) else dim, keepdim))
    return bind


def _with_dim(fn: Callable[..., Any], default: Any = 0) -> Callable[..., Converted]:
    """``fn(x, dim)``: the dimension positional (``dim=`` and ``axis=`` accepted)."""
    def bind(dim: Any = default, *, axis: Any = None) -> Converted:
        return Call(fn, (dim if axis is None else axis,))
    return bind


def _arithmetic(fn: Callable[..., Any]) -> Callable[..., Converted]:
    def bind(other: Any, *, alpha: Any = 1, rounding_mode: Any = None) -> Converted:
        if alpha != 1:
            return Unsupported(f"{fn.__name__} with alpha={alpha}: write the product explicitly")
        if rounding_mode is not None:
            return Unsupported(f"division with rounding_mode={rounding_mode!r}")
        return Call(fn, (other,))
    return bind


def _split(size: Any = None, dim: int = 0, *, split_size_or_sections: Any = None,
           split_size: Any = None) -> Converted:
    sizes = next(s for s in (size, split_size_or_sections, split_size) if s is not None)
    return Call(torch.split, (list(sizes) if isinstance(sizes, tuple) else sizes, dim))


def _pad(pad: Any, mode: str = "constant", value: float | None = None) -> Converted:
    if mode != "constant":
        return Unsupported(f"F.pad with mode={mode!r}; only 'constant' is supported")
    return Call(F.pad, (tuple(pad), "constant", 0.0 if value is None else value))


def _layer_norm(normalized_shape: Any, weight: Any = None, bias: Any = None,
                eps: float = 1e-5) -> Converted:
    return Call(F.layer_norm, (tuple(normalized_shape), weight, bias, eps))


def _softmax(dim: Any = None, _stacklevel: int = 3, dtype: Any = None) -> Converted:
    if dim is None or dtype is not None:
        return Unsupported("softmax needs an explicit dim and no dtype")
    return Call(F.softmax, (dim,))


#: canonical function -> binder of its arguments after the input into the canonical positions
BINDERS: dict[Callable[..., Any], Callable[..., Converted]] = {
    operator.add: _arithmetic(operator.add), operator.sub: _arithmetic(operator.sub),
    operator.mul: _arithmetic(operator.mul), operator.truediv: _arithmetic(operator.truediv),
    torch.mean: _reduce(torch.mean), torch.sum: _reduce(torch.sum),
    torch.cat: _with_dim(torch.cat), torch.stack: _with_dim(torch.stack),
    torch.unbind: _with_dim(torch.unbind),
    torch.chunk: lambda chunks, dim=0: Call(torch.chunk, (chunks, dim)),
    torch.split: _split,
    torch.permute: lambda *dims, **k: Call(torch.permute, (_dims(dims or (k["dims"],)),)),
    torch.transpose: lambda dim0, dim1: Call(torch.transpose, (dim0, dim1)),
    torch.unsqueeze: lambda dim: Call(torch.unsqueeze, (dim,)),
    torch.squeeze: lambda dim=None: Call(torch.squeeze, () if dim is None else (dim,)),
    torch.broadcast_to: lambda *size, **k: Call(torch.broadcast_to, (_dims(size or (k["size"],)),)),
    torch.narrow: lambda dim, start, length: Call(torch.narrow, (dim, start, length)),
    torch.select: lambda dim, index: Call(torch.select, (dim, index)),
    F.pad: _pad, F.layer_norm: _layer_norm, F.softmax: _softmax,
}


def bind(call: Call) -> Converted:
    """``call`` with its arguments in the canonical positions of its function."""
    binder = BINDERS.get(call.fn)
    return binder(*call.args, **call.kwargs) if binder else call


FUNCTION_ALIASES.update({
    torch.add: operator.add, operator.iadd: operator.add,
    torch.sub: operator.sub, torch.subtract: operator.sub, operator.isub: operator.sub,
    torch.mul: operator.mul, torch.multiply: operator.mul, operator.imul: operator.mul,
    torch.div: operator.truediv, torch.divide: operator.truediv,
    torch.true_divide: operator.truediv, operator.itruediv: operator.truediv,
    torch.concat: torch.cat, torch.concatenate: torch.cat,
    torch.swapaxes: torch.transpose, torch.swapdims: torch.transpose,
    torch.softmax: F.softmax, torch.special.softmax: F.softmax,
})
METHOD_ALIASES.update({
    "add": operator.add, "add_": operator.add, "sub": operator.sub, "sub_": operator.sub,
    "mul": operator.mul, "mul_": operator.mul, "div": operator.truediv, "div_": operator.truediv,
    "multiply": operator.mul, "subtract": operator.sub, "divide": operator.truediv,
    "mean": torch.mean, "sum": torch.sum, "chunk": torch.chunk, "split": torch.split,
    "unbind": torch.unbind, "permute": torch.permute, "transpose": torch.transpose,
    "swapaxes": torch.transpose, "swapdims": torch.transpose, "unsqueeze": torch.unsqueeze,
    "squeeze": torch.squeeze, "expand": torch.broadcast_to, "narrow": torch.narrow,
    "select": torch.select, "softmax": F.softmax, "hardswish": F.hardswish,
})
MODULES.update({
    nn.LayerNorm: lambda m: (
        Call(F.layer_norm, (tuple(m.normalized_shape), Param("weight", m.weight),
                            Param("bias", m.bias), m.eps))
        if type(m).forward is nn.LayerNorm.forward
        else Unsupported(f"{type(m).__qualname__} overrides LayerNorm.forward; do not mark it "
                         "as a leaf module, so its forward is traced")
    ),
    nn.Softmax: lambda m: _softmax(m.dim),
})
try:  # torchvision's stochastic depth is the identity at eval time
    from torchvision.ops import stochastic_depth as _stochastic_depth
    DROPOUT_FUNCTIONS.add(_stochastic_depth)
except ImportError:  # pragma: no cover  (torchvision is a dependency)
    pass
