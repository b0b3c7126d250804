"""The builder the op implementations emit into: a new ``fx.Graph`` plus its constants."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import fx

from lrpfx import meta
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
    """

    def __init__(self, source: fx.GraphModule) -> None:
        self.source = source
        self.graph = fx.Graph()
        self.env: dict[fx.Node, fx.Node] = {}
        self.saved: dict[fx.Node, Any] = {}
        self.constants: dict[str, torch.Tensor] = {}
        self._attrs: dict[tuple[str, str], fx.Node] = {}
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

    # -- forward values ------------------------------------------------------------------------
    def __getitem__(self, node: Any) -> fx.Node:
        """The new-graph value of a forward node (an fx argument that is a node)."""
        assert isinstance(node, fx.Node), f"expected a node, got {node!r}"
        return self.env[node]

    def name(self, node: fx.Node) -> str:
        """The name of a forward node's value in the new graph, for naming derived nodes
        (``z_features_0``; a Sequential's ``_0`` gives ``z_0``)."""
        return self.env[node].name.lstrip("_")

    def map(self, arg: Any) -> Any:
        """Map a (nested) argument of a forward node to the new graph."""
        return fx.map_arg(arg, lambda n: self.env[n])

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
        """The compile-time value of a ``get_attr`` node of the canonical graph."""
        value: Any = self.source
        for part in str(node.target).split("."):
            value = getattr(value, part)
        return value.detach()

    def attr(self, node: fx.Node, mod: Mod | None = None) -> fx.Node:
        """A ``get_attr`` of the constant ``node`` modified by ``mod``, computed once."""
        suffix = mod.name if mod else ""
        key = (str(node.target), suffix)
        if key not in self._attrs:
            value = self.tensor(node)
            value = mod(value) if mod else value
            base = meta.identifier(str(node.target))
            name = self.fresh(meta.identifier(f"{base}_{suffix}") if suffix else base)
            self.constants[name] = value
            self._attrs[key] = self.graph.create_node("get_attr", name, name=name)
        return self._attrs[key]

    def constant(self, value: torch.Tensor, name: str) -> fx.Node:
        """A new buffer of the program holding ``value``."""
        name = self.fresh(name)
        self.constants[name] = value
        return self.graph.create_node("get_attr", name, name=name)

    # -- emission ------------------------------------------------------------------------------
    def call(self, fn: Callable[..., Any] | str, *args: Any, name: str, **kwargs: Any) -> fx.Node:
        """Emit ``fn(*args, **kwargs)`` as a node called ``name``."""
        return self.graph.create_node("call_function", fn, args, kwargs, name=self.fresh(name))

    def method(self, method: str, *args: Any, name: str) -> fx.Node:
        """Emit ``args[0].method(*args[1:])`` as a node called ``name``."""
        return self.graph.create_node("call_method", method, args, {}, name=self.fresh(name))
