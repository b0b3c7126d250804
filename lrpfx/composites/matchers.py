"""Matchers: which nodes a composite entry applies to, from what the graph knows of each node
(its op family, the module class it came from, its qualified name, its position)."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import fx, nn

from lrpfx import meta
from lrpfx.ops.table import EQUIVALENT, OpKind

LAYER_KINDS = (OpKind.CONV, OpKind.DENSE)


@dataclass(frozen=True)
class Context:
    """What matchers may ask of the graph: each node's op family and the execution order."""

    kinds: Mapping[fx.Node, OpKind]
    order: Sequence[fx.Node]

    def layers(self, kinds: Sequence[OpKind]) -> list[fx.Node]:
        """Nodes of the given kinds, in execution order."""
        return [n for n in self.order if self.kinds.get(n) in kinds]


class Matcher:
    """Base class of matchers: ``matches(node, context) -> bool``."""

    #: in a dict composite, entries are tried by specificity (names before classes)
    specificity = 0

    def matches(self, node: fx.Node, ctx: Context) -> bool:
        raise NotImplementedError


def _kinds(names: Sequence[OpKind | str]) -> tuple[OpKind, ...]:
    known = ", ".join(k.value for k in OpKind)
    for name in names:
        if name not in OpKind._value2member_map_:
            raise ValueError(f"unknown op kind {name!r}; the kinds are: {known}")
    return tuple(OpKind(name) for name in names)


@dataclass(frozen=True)
class Kind(Matcher):
    """Nodes whose op belongs to one of ``kinds`` (``OpKind`` members or their names; an
    unknown name is a ``ValueError`` here, not a matcher that silently matches nothing)."""

    kinds: tuple[OpKind, ...]

    def __init__(self, *kinds: OpKind | str) -> None:
        object.__setattr__(self, "kinds", _kinds(kinds))

    def matches(self, node: fx.Node, ctx: Context) -> bool:
        return ctx.kinds.get(node) in self.kinds


@dataclass(frozen=True)
class Type(Matcher):
    """Nodes from a module of class ``cls`` (subclasses too), or a call of its function form."""

    cls: type[nn.Module]

    def matches(self, node: fx.Node, ctx: Context) -> bool:
        origin = node.meta.get(meta.MODULE_TYPE)
        if origin is not None:
            return issubclass(origin, self.cls)
        return node.target in EQUIVALENT.get(self.cls, ())  # the function it is spelled as


@dataclass(frozen=True)
class Name(Matcher):
    """Nodes whose module path matches a glob (``"features.0"``, ``"classifier.*"``)."""

    pattern: str
    specificity = 2

    def matches(self, node: fx.Node, ctx: Context) -> bool:
        path = node.meta.get(meta.PATH)
        return path is not None and fnmatch.fnmatchcase(path, self.pattern)


@dataclass(frozen=True)
class Position(Matcher):
    """Layers of ``kinds`` at positions ``start <= i < stop`` of the execution order.

    The positions slice the list of layers as Python does: ``Position(0, 1)`` is the first
    layer, ``Position(-1)`` the last, ``Position(3, 10)`` the fourth to the tenth.
    """

    start: int | None = None
    stop: int | None = None
    kinds: tuple[OpKind, ...] = LAYER_KINDS
    specificity = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", _kinds(self.kinds))

    def matches(self, node: fx.Node, ctx: Context) -> bool:
        return node in ctx.layers(self.kinds)[self.start : self.stop]


def First(*kinds: OpKind | str) -> Position:  # noqa: N802  (reads as a matcher class)
    """The first layer of ``kinds`` (conv or dense by default) in execution order."""
    return Position(0, 1, _kinds(kinds) or LAYER_KINDS)


Key = Matcher | type[nn.Module] | str


def as_matcher(key: Key) -> Matcher:
    """A dict key as a matcher: a module class, a name glob or a matcher."""
    if isinstance(key, Matcher):
        return key
    if isinstance(key, str):
        return Name(key)
    if isinstance(key, type) and issubclass(key, nn.Module):
        return Type(key)
    raise TypeError(f"composite keys are nn.Module classes, name globs or matchers; got {key!r}")
