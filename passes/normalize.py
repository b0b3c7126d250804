"""normalize: one spelling per op, and a graph that owns its constants.

Before: a traced GraphModule whose submodules are the user's modules (shared, never modified).
After:  every leaf module with a known spelling is a ``call_function`` on its canonical function
(the stanzas' ``spell`` declarations, read through ``lrpfx.spellings``), with its tensors lifted
into buffers of a fresh root module (the user's tensors detached, sharing storage; derived ones
new); functional, method and in-place spellings are the same canonical call, re-indexings
included (``view``, ``x.flatten(1)``, ``nn.Flatten`` become ``torch.reshape``/``flatten``/
``unflatten``); dropout, identity, ``contiguous`` are gone. Modules without a spelling stay
``call_module`` (``check`` reports them unless a user implementation exists). Each node keeps
its module path, class, spelling and source line in ``node.meta``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import fx, nn

from lrpfx import meta, spellings
from lrpfx.spellings import Call, Param, Unsupported


class _Keep:
    """The node is already canonical, or unknown: leave it as it is."""


KEEP = _Keep()


class _Owner:
    """The fresh root module of the canonical graph and its constants."""

    def __init__(self, source: fx.GraphModule) -> None:
        self.source = source
        self.root = nn.Module()
        self.modules = dict(source.named_modules())

    def constant(self, graph: fx.Graph, name: str, value: torch.Tensor) -> fx.Node:
        attr = meta.identifier(name)
        if not hasattr(self.root, attr):
            self.root.register_buffer(attr, value.detach())
        return graph.get_attr(attr)

    def keep_module(self, target: str) -> str:
        attr = meta.identifier(target)
        if not hasattr(self.root, attr):
            self.root.add_module(attr, self.modules[target])
        return attr


def _describe(node: fx.Node) -> str:
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    target = node.target
    if isinstance(target, torch._ops.OpOverload):  # torch.export's spelling
        return f"aten.{target._overloadpacket.__name__}"
    module = getattr(target, "__module__", None) or ""
    prefix = {"torch.nn.functional": "F", "torch": "torch", "_operator": "operator"}.get(module)
    name = getattr(target, "__name__", str(target))
    return f"{prefix}.{name}" if prefix else name


def _in_place(node: fx.Node, owner: _Owner) -> bool:
    if node.kwargs.get("inplace"):
        return True
    if node.op == "call_module":
        return bool(getattr(owner.modules[str(node.target)], "inplace", False))
    if node.op == "call_method":
        return str(node.target).endswith("_")
    return spellings.in_place(node.target)


def _out_of_place(graph: fx.Graph, node: fx.Node, new: fx.Node) -> None:
    """After an in-place op on ``x``, later readers of ``x`` read the op's result instead."""
    x = node.args[0]
    if not isinstance(x, fx.Node):
        return
    order = {n: i for i, n in enumerate(graph.nodes)}
    for user in list(x.users):
        if user is not node and user is not new and order[user] > order[node]:
            user.replace_input_with(x, new)


def _canonical(node: fx.Node, owner: _Owner) -> Call | Unsupported | _Keep | None:
    """The canonical call for ``node``; None = an identity to remove; KEEP = leave it."""
    if node.op == "call_module":
        module = owner.modules[str(node.target)]
        return spellings.convert_module(module)
    if node.op == "call_method":
        name = str(node.target)
        if name in spellings.IDENTITY_METHODS:
            return None
        fn = spellings.canonical_method(name)
        return spellings.bind(Call(fn, tuple(node.args[1:]), dict(node.kwargs))) if fn else KEEP
    if node.op != "call_function":
        return KEEP
    if node.target in spellings.DROPOUT_FUNCTIONS or node.target in spellings.IDENTITY_FUNCTIONS:
        return None
    kwargs = {k: v for k, v in node.kwargs.items() if k != "inplace"}
    fn = spellings.canonical_function(node.target)
    if fn is node.target and not node.kwargs.get("inplace") and not spellings.binds(fn):
        return KEEP
    return spellings.bind(Call(fn, tuple(node.args[1:]), kwargs))


def _record(node: fx.Node, owner: _Owner) -> None:
    if node.op == "call_module":
        node.meta[meta.PATH] = str(node.target)
        node.meta[meta.MODULE_TYPE] = type(owner.modules[str(node.target)])
        node.meta[meta.ORIGIN] = f"nn.{type(owner.modules[str(node.target)]).__name__}"
    elif node.op in ("call_function", "call_method"):
        node.meta[meta.ORIGIN] = _describe(node)


def _lift(graph: fx.Graph, node: fx.Node, owner: _Owner, args: tuple[Any, ...]) -> tuple[Any, ...]:
    path = node.meta.get(meta.PATH, node.name)
    return tuple(
        (owner.constant(graph, f"{path}.{a.name}", a.value) if a.value is not None else None)
        if isinstance(a, Param) else a
        for a in args
    )


def _rewrite(graph: fx.Graph, node: fx.Node, owner: _Owner) -> None:
    _record(node, owner)
    canonical = _canonical(node, owner)
    if isinstance(canonical, _Keep | Unsupported):
        if isinstance(canonical, Unsupported):
            node.meta[meta.UNSUPPORTED] = canonical.reason
        if node.op == "call_module":
            node.target = owner.keep_module(str(node.target))
        return
    x = node.args[0]
    if canonical is None:
        node.replace_all_uses_with(x)  # type: ignore[arg-type]
        graph.erase_node(node)
        return
    with graph.inserting_before(node):
        args = _lift(graph, node, owner, canonical.args)
        new = graph.call_function(canonical.fn, (x, *args), canonical.kwargs)
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    if _in_place(node, owner):
        _out_of_place(graph, node, new)
    graph.erase_node(node)


def _lift_get_attr(graph: fx.Graph, node: fx.Node, owner: _Owner) -> None:
    value: Any = owner.source
    for part in str(node.target).split("."):
        value = getattr(value, part)
    if isinstance(value, torch.Tensor):
        with graph.inserting_before(node):
            new = owner.constant(graph, str(node.target), value)
        node.replace_all_uses_with(new)
        graph.erase_node(node)


def normalize(gm: fx.GraphModule) -> fx.GraphModule:
    """Rewrite every known spelling into its canonical call (see the module docstring)."""
    owner = _Owner(gm)
    graph = copy.deepcopy(gm.graph)  # a graph of our own: the traced one refers to user modules
    for node in list(graph.nodes):
        if node.op == "get_attr":
            _lift_get_attr(graph, node, owner)
        else:
            _rewrite(graph, node, owner)
    graph.lint()
    return fx.GraphModule(owner.root, graph, gm.__class__.__name__)
