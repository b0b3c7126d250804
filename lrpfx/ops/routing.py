"""The routing family: ops that move values without mixing them. Relevance is moved back exactly
(the transpose of a 0/1 matrix), with explicit tensor ops, never autograd.

- ``cat(xs, d)``: ``R`` split along ``d`` in the sizes of ``xs``; ``stack``: ``R.unbind(d)``;
- ``x[idx]``, ``narrow``, ``select``: ``R`` written into zeros shaped like ``x`` at ``idx``
  (duplicate advanced indices add up);
- ``chunk``/``split``/``unbind`` pieces: each ``getitem`` of the tuple writes its piece into
  zeros shaped like the input, and the pieces add up at the input;
- ``permute``: the inverse permutation; ``transpose``: the same transpose;
  ``unsqueeze``/``squeeze``: a reshape; ``broadcast_to``/``expand_as``: a sum over the broadcast
  dims; ``pad``: a crop (padded constants keep their relevance).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from lrpfx.builder import Builder
from lrpfx.ops.nary import unbroadcast, unsupported
from lrpfx.ops.registry import Contribution, register
from lrpfx.ops.values import carries, is_shape

TUPLE_OPS = (torch.chunk, torch.split, torch.unbind)


def split_as(r: torch.Tensor, xs: Sequence[torch.Tensor], dim: int) -> tuple[torch.Tensor, ...]:
    """The transpose of ``torch.cat(xs, dim)``: ``r`` cut into pieces shaped like ``xs``."""
    return torch.split(r, [x.shape[dim] for x in xs], dim)


def _basic(index: Any) -> bool:
    """True for basic indexing (ints, slices, None, Ellipsis): the result is a view."""
    items = index if isinstance(index, tuple) else (index,)
    return all(i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in items)


def index_transpose(r: torch.Tensor, x: torch.Tensor, index: Any) -> torch.Tensor:
    """The transpose of ``x[index]``: zeros shaped like ``x`` with ``r`` added at ``index``."""
    out = torch.zeros(x.shape, dtype=r.dtype, device=r.device)
    if _basic(index):
        out[index] = r
        return out
    positions = torch.arange(x.numel(), device=x.device).view(x.shape)[index]
    return out.view(-1).index_add_(0, positions.reshape(-1), r.reshape(-1)).view(x.shape)


def chunk_transpose(r: torch.Tensor, x: torch.Tensor, chunks: int, dim: int, i: int
                    ) -> torch.Tensor:
    """Piece ``i`` of ``torch.chunk(x, chunks, dim)`` back in place: zeros elsewhere."""
    out = torch.zeros_like(x)
    torch.chunk(out, chunks, dim)[i].copy_(r)
    return out


def split_transpose(r: torch.Tensor, x: torch.Tensor, sizes: int | list[int], dim: int, i: int
                    ) -> torch.Tensor:
    """Piece ``i`` of ``torch.split(x, sizes, dim)`` back in place: zeros elsewhere."""
    out = torch.zeros_like(x)
    torch.split(out, sizes, dim)[i].copy_(r)
    return out


def unbind_transpose(r: torch.Tensor, x: torch.Tensor, dim: int, i: int) -> torch.Tensor:
    """Slice ``i`` of ``torch.unbind(x, dim)`` back in place: zeros elsewhere."""
    out = torch.zeros_like(x)
    out.select(dim, i).copy_(r)
    return out


def narrow_transpose(r: torch.Tensor, x: torch.Tensor, dim: int, start: int, length: int
                     ) -> torch.Tensor:
    """The transpose of ``torch.narrow(x, dim, start, length)``."""
    out = torch.zeros_like(x)
    out.narrow(dim, start, length).copy_(r)
    return out


def select_transpose(r: torch.Tensor, x: torch.Tensor, dim: int, index: int) -> torch.Tensor:
    """The transpose of ``torch.select(x, dim, index)``."""
    out = torch.zeros_like(x)
    out.select(dim, index).copy_(r)
    return out


def pad_transpose(r: torch.Tensor, pad: Sequence[int]) -> torch.Tensor:
    """The transpose of a constant ``F.pad``: the crop (negative pad) of the same amounts."""
    return F.pad(r, [-p for p in pad])


_PIECES: dict[Any, Callable[..., torch.Tensor]] = {
    torch.chunk: chunk_transpose, torch.split: split_transpose, torch.unbind: unbind_transpose,
}


@register(torch.cat, kind="routing")
def _cat(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    """``cat(xs, d)``: each input gets its slice of ``R``; constants keep theirs."""
    xs, dim = node.args
    if not isinstance(xs, (list, tuple)):
        raise unsupported(node, "cat of a tuple-valued node; index its pieces: cat([t[0], t[1]])")
    pieces = b.call(split_as, rel, b.map(list(xs)), dim, name=f"r_{b.name(node)}")
    return [(x, b.call(operator.getitem, pieces, i, name=f"r_{b.name(node)}"))
            for i, x in enumerate(xs) if carries(x)]


@register(torch.stack, kind="routing")
def _stack(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    """``stack(xs, d)``: ``R.unbind(d)``, one slice per input."""
    xs, dim = node.args
    if not isinstance(xs, (list, tuple)):
        raise unsupported(node, "stack of a tuple-valued node; index it: stack([t[0], t[1]])")
    pieces = b.call(torch.unbind, rel, dim, name=f"r_{b.name(node)}")
    return [(x, b.call(operator.getitem, pieces, i, name=f"r_{b.name(node)}"))
            for i, x in enumerate(xs) if carries(x)]


@register(*TUPLE_OPS, kind="routing")
def _pieces(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    """The pieces' relevance reaches the input through their ``getitem`` nodes (see below)."""
    return []


@register(operator.getitem, kind="routing")
def _getitem(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    """``x[idx]``: ``R`` back at ``idx``; a piece of chunk/split/unbind back in its place."""
    x, index = node.args
    assert isinstance(x, fx.Node)
    tag = b.name(node)
    if is_shape(x) or not carries(x):
        return []
    if x.op == "call_function" and x.target in _PIECES:
        base = x.args[0]
        assert isinstance(base, fx.Node)
        r = b.call(_PIECES[x.target], rel, b[base], *b.map(x.args[1:]), index, name=f"r_{tag}")
        return [(base, r)]
    return [(x, b.call(index_transpose, rel, b[x], b.map(index), name=f"r_{tag}"))]


@register(torch.narrow, torch.select, kind="routing")
def _narrow(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    x = node.args[0]
    assert isinstance(x, fx.Node)
    fn = narrow_transpose if node.target is torch.narrow else select_transpose
    return [(x, b.call(fn, rel, b[x], *b.map(node.args[1:]), name=f"r_{b.name(node)}"))]


@register(torch.permute, kind="routing")
def _permute(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    """``permute(x, p)``: ``R`` permuted by the inverse of ``p``."""
    x, dims = node.args
    assert isinstance(x, fx.Node) and isinstance(dims, (list, tuple))
    order = [int(d) % len(dims) for d in dims]  # type: ignore[arg-type]
    inverse = tuple(sorted(range(len(order)), key=order.__getitem__))
    return [(x, b.call(torch.permute, rel, inverse, name=f"r_{b.name(node)}"))]


@register(torch.transpose, kind="routing")
def _transpose(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    """``transpose(x, d0, d1)`` is its own inverse."""
    x, d0, d1 = node.args
    assert isinstance(x, fx.Node)
    return [(x, b.call(torch.transpose, rel, d0, d1, name=f"r_{b.name(node)}"))]


@register(torch.unsqueeze, torch.squeeze, kind="reshape")
def _unsqueeze(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    x = node.args[0]
    assert isinstance(x, fx.Node)
    return [(x, b.method("reshape_as", rel, b[x], name=f"r_{b.name(node)}"))]


@register(torch.broadcast_to, "expand_as", kind="routing")
def _expand(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    """An expanded value is read several times: its relevance is the sum of the copies'."""
    x = node.args[0]
    assert isinstance(x, fx.Node)
    return [(x, b.call(unbroadcast, rel, b[x], name=f"r_{b.name(node)}"))]


@register(F.pad, kind="routing")
def _pad(b: Builder, node: fx.Node, rel: fx.Node, rule: None) -> list[Contribution]:
    x, pad = node.args[:2]
    assert isinstance(x, fx.Node)
    return [(x, b.call(pad_transpose, rel, pad, name=f"r_{b.name(node)}"))]
