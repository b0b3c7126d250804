"""The builder the op implementations emit into: a new ``fx.Graph`` plus its constants."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import fx

from lrpfx import meta
from lrpfx import runtime as rt
from lrpfx.rules import Mod


def like(node: fx.Node, *indices: int) -> fx.Node:
    """State that ``node``'s result has the shape and dtype of ``node.args[i]`` for each index
    (``lrpfx.program.inplace`` may then write it into such an operand)."""
    node.meta[meta.LIKE] = indices
    return node


class Builder:
    """Emits the nodes of the explain program.

    Attributes:
        source: the canonical, annotated GraphModule being explained.
        graph: the graph being built.
        env: forward node of ``source`` -> its value in the new graph.
        saved: extra forward values kept for the backward (e.g. max-pool indices).
        constants: buffers of the program; weight modifications are computed here, once.
        relevance_dtype: None, or once the backward is being emitted with a wider relevance
            dtype (``widen``): the dtype the backward reads forward values and constants in.
    """

    def __init__(self, source: fx.GraphModule) -> None:
        self.source = source
        self.graph = fx.Graph()
        self.env: dict[fx.Node, fx.Node] = {}
        self.saved: dict[fx.Node, Any] = {}
        self.constants: dict[str, torch.Tensor] = {}
        self.relevance_dtype: torch.dtype | None = None
        self._attrs: dict[tuple[str, str, torch.dtype | None], fx.Node] = {}
        self._widened: dict[fx.Node, fx.Node] = {}
        self._names: set[str] = {"output"}

    def fresh(self, base: str) -> str:
        """An unused node name: ``base``, else ``base_v2``, ``base_v3``, ...

        (fx itself would renumber ``features_0`` into ``features_1``, which reads as another
        module.)
        """
        name, k = base, 1
        while name in self._names:
            k += 1
            name = f"{base}_v{k}"
        self._names.add(name)
        return name

    def widen(self, dtype: torch.dtype) -> None:
        """From now on (the backward), read floating-point forward values and constants in
        ``dtype`` where they are narrower (a bfloat16 model's relevance accumulated in float32):
        each value is cast once, where the backward first reads it (``runtime.widen``), each
        constant (weight modifications included) computed in ``dtype`` at compile time."""
        self.relevance_dtype = dtype

    # -- forward values ------------------------------------------------------------------------
    def __getitem__(self, node: Any) -> fx.Node:
        """The new-graph value of a forward node (an fx argument that is a node); in a widened
        backward, that value cast to the relevance dtype (sizes and shapes as they are)."""
        assert isinstance(node, fx.Node), f"expected a node, got {node!r}"
        value = self.env[node]
        if self.relevance_dtype is None or node.meta.get(meta.SHAPE):
            return value
        if node.op == "get_attr":
            return self.attr(node)
        if node not in self._widened:
            self._widened[node] = self.call(rt.widen, value, self.relevance_dtype,
                                            name=f"{self.name(node)}_wide")
        return self._widened[node]

    def name(self, node: fx.Node) -> str:
        """The name of a forward node's value in the new graph, for naming derived nodes
        (``z_features_0``; a Sequential's ``_0`` gives ``z_0``)."""
        return self.env[node].name.lstrip("_")

    def map(self, arg: Any) -> Any:
        """Map a (nested) argument of a forward node to the new graph."""
        return fx.map_arg(arg, lambda n: self[n])

    def copy(self, node: fx.Node) -> fx.Node:
        """Copy a forward node into the new graph under its readable name."""
        if node.op == "get_attr":
            return self.attr(node)
        name = self.fresh(meta.display_name(node))
        args, kwargs = self.map(node.args), self.map(node.kwargs)
        if node.op == "placeholder":
            return self.graph.create_node("placeholder", name, args, kwargs, name=name)
        return self.graph.create_node(node.op, node.target, args, kwargs, name=name)

    # -- constants -----------------------------------------------------------------------------
    def tensor(self, node: fx.Node) -> torch.Tensor:
        """The compile-time value of a ``get_attr`` node of the canonical graph (in a widened
        backward, in the relevance dtype where it is narrower)."""
        return self._wide(self._constant(node))

    def attr(self, node: fx.Node, mod: Mod | None = None) -> fx.Node:
        """A ``get_attr`` of the constant ``node`` modified by ``mod``, computed once (in a
        widened backward, from the constant in the relevance dtype)."""
        raw = self._constant(node)
        value = self._wide(raw)
        wide = value.dtype if value is not raw else None
        suffix = mod.name if mod else ""
        key = (str(node.target), suffix, wide)
        if key not in self._attrs:
            value = mod(value) if mod else value
            parts = (meta.identifier(str(node.target)), suffix,
                     str(wide).removeprefix("torch.") if wide else "")
            name = self.fresh(meta.identifier("_".join(p for p in parts if p)))
            self.constants[name] = value
            self._attrs[key] = self.graph.create_node("get_attr", name, name=name)
        return self._attrs[key]

    def _constant(self, node: fx.Node) -> torch.Tensor:
        value: Any = self.source
        for part in str(node.target).split("."):
            value = getattr(value, part)
        return value.detach()

    def constant(self, value: torch.Tensor, name: str) -> fx.Node:
        """A new buffer of the program holding ``value``."""
        name = self.fresh(name)
        self.constants[name] = self._wide(value)
        return self.graph.create_node("get_attr", name, name=name)

    def _wide(self, value: torch.Tensor) -> torch.Tensor:
        return value if self.relevance_dtype is None else rt.widen(value, self.relevance_dtype)

    # -- emission ------------------------------------------------------------------------------
    def call(self, fn: Callable[..., Any] | str, *args: Any, name: str, **kwargs: Any) -> fx.Node:
        """Emit ``fn(*args, **kwargs)`` as a node called ``name``."""
        return self.graph.create_node("call_function", fn, args, kwargs, name=self.fresh(name))

    def method(self, method: str, *args: Any, name: str) -> fx.Node:
        """Emit ``args[0].method(*args[1:])`` as a node called ``name``."""
        return self.graph.create_node("call_method", method, args, {}, name=self.fresh(name))
