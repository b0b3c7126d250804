"""Ops that copy, window or resample values, and the maximum over dimensions.

- ``F.interpolate`` / ``nn.Upsample`` is linear in its input. ``nearest`` (and
  ``nearest-exact``) copies values: routing, the copies' relevance adds up at their source
  (no rule). The other modes weigh several inputs: the linear family with the ε-rule (Norm by
  the presets' default, as for average pools), ``R_in = x ⊙ Tᵀ(R / stabilize(z))`` with the
  transposed interpolation ``T``. ``antialias`` and ``mode='area'`` are refused.
- ``F.unfold`` / ``nn.Unfold`` (im2col) and ``Tensor.unfold`` (sliding windows) copy each entry
  into the windows that hold it: routing, ``R_in = fold(R)`` (copies added up).
  ``F.fold`` / ``nn.Fold`` (col2im) sums overlapping windows: a sum (the linear family, ε-rule),
  ``R_in = x ⊙ unfold(R / stabilize(fold(x)))``.
- ``reflect`` / ``replicate`` / ``circular`` pads live with the constant pad (``routing``).
- ``repeat_interleave(x, n, dim)`` with a number ``n``: copies, added up at their source.
- ``reshape_as`` / ``view_as``: a reshape; ``nn.ZeroPad*d``, ``nn.ConstantPad*d``,
  ``nn.ReflectionPad*d``, ``nn.ReplicationPad*d``, ``nn.CircularPad*d``: ``F.pad``.
- ``amax(x, dim)`` and the maxima of ``x.max(dim)``: winner takes all (as a max-pool in
  ``"wta"`` mode): each maximum's relevance goes to the entries equal to it, shared equally
  between ties.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from lrpfx import kernels
from lrpfx.builder import Builder
from lrpfx.ops import routing
from lrpfx.ops.linear import LinearOp, linear_rule
from lrpfx.ops.table import (
    Call,
    Contribution,
    Converted,
    OpKind,
    Unsupported,
    defop,
    relevance,
    spell,
)
from lrpfx.rules import Epsilon, Flat, Norm

_COPIES = ("nearest", "nearest-exact")


def _weighs(node: fx.Node) -> bool:
    """Whether an interpolation weighs several inputs (takes a rule) rather than copying."""
    return len(node.args) == 6 and node.args[3] not in _COPIES


def _bind_interpolate(size: Any = None, scale_factor: Any = None, mode: str = "nearest",
                      align_corners: bool | None = None,
                      recompute_scale_factor: bool | None = None,
                      antialias: bool = False) -> Converted:
    if antialias or mode == "area":
        return Unsupported(f"F.interpolate with mode={mode!r}, antialias={antialias}; use "
                           "adaptive average pooling for 'area', or no antialiasing")
    return Call(F.interpolate, (size, scale_factor, mode, align_corners, recompute_scale_factor))


def _upsample(m: nn.Upsample) -> Converted:
    return _bind_interpolate(m.size, m.scale_factor, m.mode, m.align_corners,
                             m.recompute_scale_factor)


defop(F.interpolate, kind=OpKind.AVGPOOL, keeps_nonneg=True, rule_when=_weighs)
spell(F.interpolate, F.upsample, modules={nn.Upsample: _upsample}, bind=_bind_interpolate)


def _transpose(b: Builder, node: fx.Node, s: fx.Node) -> fx.Node:
    x, _, scale_factor, mode, align_corners, recompute = node.args
    return b.call(kernels.interpolate_transpose, s, b[x], scale_factor, mode, align_corners,
                  recompute, name=f"c_{b.name(node)}")


relevance(F.interpolate, rule=(Epsilon, Norm, Flat))(linear_rule(LinearOp(
    forward=lambda b, n, x, w, bias: b.call(F.interpolate, x, *b.map(n.args[1:]),
                                            name=f"z_{b.name(n)}"),
    transpose=lambda b, n, s, w: _transpose(b, n, s),
)))


@relevance(F.interpolate)
def _copies(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    """Nearest: every output is a copy of one input; the copies' relevance adds up."""
    return [(node.args[0], _transpose(b, node, rel))]  # type: ignore[list-item]


# -- windows -----------------------------------------------------------------------------------
def _bind_im2col(kernel_size: Any, dilation: Any = 1, padding: Any = 0,
                 stride: Any = 1) -> Converted:
    return Call(F.unfold, (kernel_size, dilation, padding, stride))


defop(F.unfold, "unfold", kind=OpKind.ROUTING, routes=True)
spell(F.unfold, modules={nn.Unfold: lambda m: _bind_im2col(m.kernel_size, m.dilation, m.padding,
                                                           m.stride)}, bind=_bind_im2col)


@relevance(F.unfold)
def _im2col(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    """im2col: ``R_in = fold(R)``."""
    x = node.args[0]
    return [(x, b.call(kernels.im2col_transpose, rel, b[x], *b.map(node.args[1:]),  # type: ignore[list-item]
                       name=f"r_{b.name(node)}"))]


@relevance("unfold")
def _windows(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    """``x.unfold(d, size, step)``: each window back in place, the copies added up."""
    x = node.args[0]
    return [(x, b.call(kernels.unfold_transpose, rel, b[x], *b.map(node.args[1:]),  # type: ignore[list-item]
                       name=f"r_{b.name(node)}"))]


defop(F.fold, kind=OpKind.SUM)
spell(F.fold, modules={nn.Fold: lambda m: (m.output_size, m.kernel_size, m.dilation, m.padding,
                                           m.stride)},
      bind=lambda output_size, kernel_size, dilation=1, padding=0, stride=1: Call(
          F.fold, (output_size, kernel_size, dilation, padding, stride)))
relevance(F.fold, rule=(Epsilon, Norm, Flat))(linear_rule(LinearOp(
    forward=lambda b, n, x, w, bias: b.call(F.fold, x, *b.map(n.args[1:]), name=f"z_{b.name(n)}"),
    transpose=lambda b, n, s, w: b.call(F.unfold, s, *b.map(n.args[2:]), name=f"c_{b.name(n)}"),
)))


def _bind_repeat(repeats: Any, dim: Any = None, *, output_size: Any = None) -> Converted:
    if isinstance(repeats, (torch.Tensor, fx.Node)) and not _number(repeats):
        return Unsupported("repeat_interleave with a tensor of repeats; give one number")
    return Call(torch.repeat_interleave, (repeats, dim))


def _number(arg: Any) -> bool:
    """Whether a traced argument is Python integer arithmetic (``B // B_``), not a tensor."""
    return isinstance(arg, fx.Node) and (
        arg.op == "call_method" and arg.target in ("size", "numel", "dim")
        or arg.op == "call_function" and getattr(arg.target, "__module__", "") == "_operator"
        and all(_number(a) for a in arg.all_input_nodes) or arg.target is getattr)


defop(torch.repeat_interleave, kind=OpKind.ROUTING, routes=True, keeps_nonneg=True)
spell(torch.repeat_interleave, "repeat_interleave", bind=_bind_repeat)


@relevance(torch.repeat_interleave)
def _repeats(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    """Copies: each entry's relevance is the sum of its copies'."""
    x, repeats, dim = node.args
    return [(x, b.call(kernels.repeat_interleave_transpose, rel, b[x], b.map(repeats), dim,  # type: ignore[list-item]
                       name=f"r_{b.name(node)}"))]


# -- reshape_as, amax ------------------------------------------------------------------------------
defop("reshape_as", "view_as", kind=OpKind.RESHAPE, routes=True, keeps_nonneg=True)
relevance("reshape_as", "view_as")(routing._reshape)
_PADS = (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
         nn.ConstantPad3d)
spell(F.pad, modules={cls: lambda m: (tuple(m.padding), "constant", float(m.value))
                      for cls in _PADS})
_COPYING_PADS = {nn.ReflectionPad1d: "reflect", nn.ReflectionPad2d: "reflect",
                 nn.ReflectionPad3d: "reflect", nn.ReplicationPad1d: "replicate",
                 nn.ReplicationPad2d: "replicate", nn.ReplicationPad3d: "replicate",
                 nn.CircularPad1d: "circular", nn.CircularPad2d: "circular",
                 nn.CircularPad3d: "circular"}


def _copying_pad(mode: str) -> Callable[[Any], Converted]:
    return lambda m: Call(F.pad, (tuple(m.padding), mode, 0.0))


spell(F.pad, modules={cls: _copying_pad(mode) for cls, mode in _COPYING_PADS.items()})

defop(torch.amax, kind=OpKind.ROUTING, keeps_nonneg=True)
spell(torch.amax, "amax", bind=lambda dim=(), keepdim=False: Call(torch.amax, (dim, keepdim)))




def _bind_max(dim: Any = None, keepdim: bool = False) -> Converted:
    if isinstance(dim, fx.Node):
        return Unsupported("max of two tensors (elementwise); no relevance rule for it")
    if dim is None:
        return Call(torch.amax, ((), False))
    return Call(kernels.max_dim, (dim, keepdim))


defop(kernels.max_dim, kind=OpKind.ROUTING, pieces=True)
spell(kernels.max_dim, torch.max, "max", bind=_bind_max)
relevance(kernels.max_dim)(routing.pieces)


@relevance(torch.amax)
def _amax(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    """Winner takes all: ``R_i = [x_i = max] R / #ties``."""
    x, dim, keepdim = node.args
    return [(x, b.call(kernels.amax_transpose, rel, b[x], b[node], dim, keepdim,  # type: ignore[list-item]
                       name=f"r_{b.name(node)}"))]
