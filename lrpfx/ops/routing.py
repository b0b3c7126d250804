"""The routing family: ops that move values without mixing them. Relevance is moved back exactly
(the transpose of a 0/1 matrix), with explicit tensor ops, never autograd.

- ``cat(xs, d)``: ``R`` split along ``d`` in the sizes of ``xs``; ``stack``: ``R.unbind(d)``;
- ``x[idx]``, ``narrow``, ``select``: ``R`` written into zeros shaped like ``x`` at ``idx``
  (duplicate advanced indices add up);
- ``chunk``/``split``/``tensor_split``/``unbind`` pieces: each ``getitem`` of the tuple writes
  its piece into zeros shaped like the input, and the pieces add up at the input;
- ``permute``: the inverse permutation; ``transpose``: the same transpose;
  ``unsqueeze``/``squeeze``: a reshape; ``broadcast_to``/``expand_as``: a sum over the broadcast
  dims; ``pad``: a crop (padded constants keep their relevance), or for the copying modes
  (reflect, replicate, circular) the copies' relevance added up;
- ``slice_scatter(x, src, d, start, end, step)`` (a write into a slice, as ``torch.export``
  writes ``x[..., 1:] += y``): the slice's relevance to ``src``, the rest to ``x``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from lrpfx import kernels
from lrpfx import runtime as rt
from lrpfx.builder import Builder
from lrpfx.ops.table import (
    Call,
    Contribution,
    Converted,
    OpKind,
    Unsupported,
    aten,
    carries,
    defop,
    relevance,
    spell,
    unsupported,
)

_PIECES: dict[Any, Callable[..., torch.Tensor]] = {
    torch.chunk: kernels.chunk_transpose, torch.split: kernels.split_transpose,
    torch.tensor_split: kernels.tensor_split_transpose,
    torch.unbind: kernels.select_transpose,  # piece i of unbind(x, d) is select(x, d, i)
    kernels.max_dim: kernels.max_dim_transpose,  # (maxima, indices) of x.max(d)
}

ROUTING, RESHAPE = OpKind.ROUTING, OpKind.RESHAPE
defop(torch.reshape, torch.flatten, torch.unflatten, kind=RESHAPE, routes=True, keeps_nonneg=True)
defop(torch.unsqueeze, torch.squeeze, kind=RESHAPE, routes=True)
defop(torch.permute, torch.transpose, torch.broadcast_to, "expand_as", operator.getitem,
      torch.roll, kind=ROUTING, routes=True)
defop(torch.cat, torch.stack, torch.narrow, torch.select, F.pad, torch.slice_scatter,
      kind=ROUTING)
defop(torch.chunk, torch.split, torch.tensor_split, torch.unbind, kind=ROUTING, pieces=True)
defop("size", "dim", "numel", getattr, kind=OpKind.SHAPE, shape_query=True)
defop(torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like, "new_zeros",
      "new_ones", "new_empty", "new_full", kind=OpKind.SHAPE, constant=True)


def _dims(args: tuple[Any, ...]) -> Any:
    """``view(2, 3)`` and ``view((2, 3))`` both mean the shape ``(2, 3)``; ``expand(x.shape)``
    means the traced shape itself."""
    if len(args) == 1 and _whole_shape(args[0]):
        return args[0]
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else args


def _whole_shape(arg: Any) -> bool:
    """Whether ``arg`` is a traced whole ``torch.Size``: ``x.shape``, ``x.size()``, a slice of
    one (``x.shape[:-1]``) or one joined to a tuple (``x.shape[:-1] + (-1,)``)."""
    if not isinstance(arg, fx.Node):
        return False
    if arg.op == "call_method":
        return bool(arg.target == "size" and len(arg.args) == 1)
    if arg.target is getattr:
        return bool(arg.args[1] == "shape")
    if arg.target is operator.getitem:
        return isinstance(arg.args[1], slice) and _whole_shape(arg.args[0])
    if arg.target is operator.add:
        return any(_whole_shape(a) for a in arg.args) and all(
            _whole_shape(a) or isinstance(a, tuple) for a in arg.args)
    return False


def _with_dim(fn: Callable[..., Any], default: Any = 0) -> Callable[..., Converted]:
    """``fn(x, dim)``: the dimension positional (``dim=`` and ``axis=`` accepted)."""
    def bind(dim: Any = default, *, axis: Any = None) -> Converted:
        return Call(fn, (dim if axis is None else axis,))
    return bind


def _split(size: Any = None, dim: int = 0, *, split_size_or_sections: Any = None,
           split_size: Any = None) -> Converted:
    sizes = next(s for s in (size, split_size_or_sections, split_size) if s is not None)
    return Call(torch.split, (list(sizes) if isinstance(sizes, tuple) else sizes, dim))


def _tensor_split(sections: Any = None, dim: int = 0, *, indices: Any = None,
                  tensor_indices_or_sections: Any = None) -> Converted:
    given = next(s for s in (sections, indices, tensor_indices_or_sections) if s is not None)
    return Call(torch.tensor_split, (list(given) if isinstance(given, tuple) else given, dim))


def _bind_pad(pad: Any, mode: str = "constant", value: float | None = None) -> Converted:
    if mode not in ("constant", "reflect", "replicate", "circular"):
        return Unsupported(f"F.pad with mode={mode!r}")
    return Call(F.pad, (tuple(pad), mode, 0.0 if value is None else value))


spell(torch.reshape, "view", "reshape", aten.view.default, aten.reshape.default,
      aten._unsafe_view.default,
      bind=lambda *shape, **k: Call(torch.reshape, (_dims(shape or (k["shape"],)),)))
spell(torch.flatten, "flatten", aten.flatten.using_ints,
      modules={nn.Flatten: lambda m: (m.start_dim, m.end_dim)},
      bind=lambda start_dim=0, end_dim=-1: Call(torch.flatten, (start_dim, end_dim)))
spell(torch.unflatten, "unflatten",
      modules={nn.Unflatten: lambda m: (m.dim, tuple(m.unflattened_size))},
      bind=lambda dim, sizes: Call(torch.unflatten, (dim, sizes)))
spell(torch.cat, torch.concat, torch.concatenate, aten.cat.default, bind=_with_dim(torch.cat))
spell(torch.stack, aten.stack.default, bind=_with_dim(torch.stack))
spell(torch.unbind, "unbind", aten.unbind.int, bind=_with_dim(torch.unbind))
spell(torch.chunk, "chunk", aten.chunk.default,
      bind=lambda chunks, dim=0: Call(torch.chunk, (chunks, dim)))
spell(torch.split, "split", aten.split.Tensor, aten.split_with_sizes.default, bind=_split)
spell(torch.tensor_split, "tensor_split", bind=_tensor_split)
spell(torch.permute, "permute", aten.permute.default,
      bind=lambda *dims, **k: Call(torch.permute, (_dims(dims or (k["dims"],)),)))
spell(torch.transpose, torch.swapaxes, torch.swapdims, "transpose", "swapaxes", "swapdims",
      aten.transpose.int,
      bind=lambda dim0, dim1: Call(torch.transpose, (dim0, dim1)))
spell(torch.unsqueeze, "unsqueeze", aten.unsqueeze.default,
      bind=lambda dim: Call(torch.unsqueeze, (dim,)))
spell(torch.squeeze, "squeeze", aten.squeeze.dim, aten.squeeze.dims,
      bind=lambda dim=None: Call(torch.squeeze, () if dim is None else (dim,)))
spell(torch.broadcast_to, "expand", aten.expand.default,
      bind=lambda *size, **k: Call(torch.broadcast_to, (_dims(size or (k["size"],)),)))
spell(torch.narrow, "narrow", aten.narrow.default,
      bind=lambda dim, start, length: Call(torch.narrow, (dim, start, length)))
spell(torch.select, "select", aten.select.int,
      bind=lambda dim, index: Call(torch.select, (dim, index)))
spell(F.pad, aten.pad.default, bind=_bind_pad)
spell(torch.slice_scatter, aten.slice_scatter.default,
      bind=lambda src, dim=0, start=None, end=None, step=1: Call(
          torch.slice_scatter, (src, dim, start, end, step)))
spell(torch.roll, "roll", aten.roll.default,
      bind=lambda shifts, dims=None: Call(torch.roll, (shifts, dims)))


@relevance(torch.reshape, torch.flatten, torch.unflatten, torch.unsqueeze, torch.squeeze)
def _reshape(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    """A re-indexing: relevance goes back to where each element came from."""
    x = node.args[0]
    assert isinstance(x, fx.Node)
    return [(x, b.method("reshape_as", rel, b[x], name=f"r_{b.name(node)}"))]


@relevance(torch.cat)
def _cat(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    """``cat(xs, d)``: each input gets its slice of ``R``; constants keep theirs."""
    xs, dim = node.args
    if not isinstance(xs, (list, tuple)):
        raise unsupported(node, "cat of a tuple-valued node; index its pieces: cat([t[0], t[1]])")
    pieces = b.call(kernels.split_as, rel, b.map(list(xs)), dim, name=f"r_{b.name(node)}")
    return [(x, b.call(operator.getitem, pieces, i, name=f"r_{b.name(node)}"))
            for i, x in enumerate(xs) if carries(x)]


@relevance(torch.stack)
def _stack(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    """``stack(xs, d)``: ``R.unbind(d)``, one slice per input."""
    xs, dim = node.args
    if not isinstance(xs, (list, tuple)):
        raise unsupported(node, "stack of a tuple-valued node; index it: stack([t[0], t[1]])")
    pieces = b.call(torch.unbind, rel, dim, name=f"r_{b.name(node)}")
    return [(x, b.call(operator.getitem, pieces, i, name=f"r_{b.name(node)}"))
            for i, x in enumerate(xs) if carries(x)]


@relevance(torch.chunk, torch.split, torch.tensor_split, torch.unbind)
def pieces(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    """The pieces' relevance reaches the input through their ``getitem`` nodes (see below)."""
    return []


@relevance(operator.getitem)
def _getitem(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    """``x[idx]``: ``R`` back at ``idx``; a piece of chunk/split/unbind back in its place."""
    x, index = node.args
    assert isinstance(x, fx.Node)
    tag = b.name(node)
    if not carries(x):
        return []
    if x.op == "call_function" and x.target in _PIECES:
        base = x.args[0]
        assert isinstance(base, fx.Node)
        r = b.call(_PIECES[x.target], rel, b[base], *b.map(x.args[1:]), index, name=f"r_{tag}")
        return [(base, r)]
    return [(x, b.call(kernels.index_transpose, rel, b[x], b.map(index), name=f"r_{tag}"))]


@relevance(torch.narrow, torch.select)
def _narrow(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    x = node.args[0]
    assert isinstance(x, fx.Node)
    fn = kernels.narrow_transpose if node.target is torch.narrow else kernels.select_transpose
    return [(x, b.call(fn, rel, b[x], *b.map(node.args[1:]), name=f"r_{b.name(node)}"))]


@relevance(torch.permute)
def _permute(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    """``permute(x, p)``: ``R`` permuted by the inverse of ``p``."""
    x, dims = node.args
    assert isinstance(x, fx.Node) and isinstance(dims, (list, tuple))
    order = [int(d) % len(dims) for d in dims]  # type: ignore[arg-type]
    inverse = tuple(sorted(range(len(order)), key=order.__getitem__))
    return [(x, b.call(torch.permute, rel, inverse, name=f"r_{b.name(node)}"))]


@relevance(torch.transpose)
def _transpose(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    """``transpose(x, d0, d1)`` is its own inverse."""
    x, d0, d1 = node.args
    assert isinstance(x, fx.Node)
    return [(x, b.call(torch.transpose, rel, d0, d1, name=f"r_{b.name(node)}"))]


@relevance(torch.roll)
def _roll(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    """``roll(x, shifts, dims)``: ``R`` rolled back by ``-shifts``."""
    x, shifts, dims = node.args
    assert isinstance(x, fx.Node)
    back = -shifts if isinstance(shifts, int) else tuple(-int(s) for s in shifts)  # type: ignore[arg-type, union-attr]
    return [(x, b.call(torch.roll, rel, back, dims, name=f"r_{b.name(node)}"))]


@relevance(torch.broadcast_to, "expand_as")
def _expand(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    """An expanded value is read several times: its relevance is the sum of the copies'."""
    x = node.args[0]
    assert isinstance(x, fx.Node)
    return [(x, b.call(rt.unbroadcast, rel, b[x], name=f"r_{b.name(node)}"))]


@relevance(F.pad)
def _pad(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    """Constant: the crop back. Reflect, replicate, circular: the copies' relevance added up."""
    x, pad, mode = node.args[:3]
    assert isinstance(x, fx.Node)
    if mode == "constant":
        return [(x, b.call(kernels.pad_transpose, rel, b.map(pad), name=f"r_{b.name(node)}"))]
    return [(x, b.call(kernels.pad_copies_transpose, rel, b[x], b.map(pad), mode,
                       name=f"r_{b.name(node)}"))]


@relevance(torch.slice_scatter)
def _slice_scatter(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    """``x`` with a slice replaced by ``src``: each entry's relevance goes where it came from."""
    x, src, *where = node.args
    tag = b.name(node)
    out = []
    if carries(x):
        out.append((x, b.call(kernels.slice_zeroed, rel, *where, name=f"r_{tag}")))
    if carries(src):
        out.append((src, b.call(kernels.slice_of, rel, *where, name=f"r_{tag}")))
    return out  # type: ignore[return-value]
