"""In-place writes another name would see: found in the traced graph, and refused.

``normalize`` makes every in-place op out of place, by letting later readers of the written
tensor read the new value. That is exact unless the written memory is also reached another way:
through a view of it (or a tensor it is a view of) created before the write and read after it,
or because it is a parameter or buffer of the model. ``refuse_hidden_writes`` finds those writes
on the graph as traced (eager semantics: before ``normalize``) and raises one
``UnsupportedOperationError`` that lists them all.
"""

from __future__ import annotations

import functools
import inspect
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from lrpfx.diagnostics import where
from lrpfx.errors import UnsupportedOperationError

# augmented assignments on tensors, which the tracer records as the in-place ops they are
AUGMENTED = {"__iadd__": operator.iadd, "__isub__": operator.isub, "__imul__": operator.imul,
             "__itruediv__": operator.itruediv}
# ops whose result may share memory with their first argument (conservative: a copy counts too)
_ALIAS_METHODS = {
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "transpose", "permute",
    "t", "squeeze", "unsqueeze", "expand", "expand_as", "narrow", "select", "unbind", "chunk",
    "split", "tensor_split", "as_strided", "detach", "contiguous", "unfold", "diagonal",
    "movedim", "moveaxis", "swapaxes", "swapdims", "to", "type", "type_as", "float", "double",
    "half", "bfloat16", "__getitem__",
}
_ALIAS_FUNCTIONS = {
    torch.flatten, torch.reshape, torch.transpose, torch.permute, torch.squeeze, torch.unsqueeze,
    torch.narrow, torch.select, torch.chunk, torch.split, torch.unbind, torch.t, torch.movedim,
    torch.swapaxes, torch.detach, torch.unflatten, torch.tensor_split, operator.getitem,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
}
_ALIAS_MODULES = (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                  nn.Dropout3d, nn.AlphaDropout)


def _writes(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` writes its first argument in place (eager semantics)."""
    if node.op == "call_method":
        name = str(node.target)
        return name.endswith("_") and not name.endswith("__") and name != "requires_grad_"
    if node.op == "call_module":
        return getattr(modules.get(str(node.target)), "inplace", False) is True
    if node.op != "call_function" or not callable(node.target):
        return False
    name = getattr(node.target, "__name__", "")
    if node.target in AUGMENTED.values() or (name.endswith("_") and not name.endswith("__")):
        return True
    signature = _signature(node.target)
    if signature is None or "inplace" not in signature.parameters:
        return node.kwargs.get("inplace") is True
    try:
        bound = signature.bind(*node.args, **node.kwargs)
    except TypeError:  # an unusual call: only an explicit keyword says
        return node.kwargs.get("inplace") is True
    return bound.arguments.get("inplace") is True


@functools.cache
def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    """``fn``'s signature, once per function (None for builtins without one)."""
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def _aliases(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node``'s value may share memory with its first argument."""
    if node.op == "call_method":
        return str(node.target) in _ALIAS_METHODS
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), _ALIAS_MODULES)
    return node.op == "call_function" and node.target in _ALIAS_FUNCTIONS


def refuse_hidden_writes(graph: fx.Graph, modules: dict[str, nn.Module]) -> None:
    """Refuse in-place writes that ``normalize`` cannot turn out of place.

    ``normalize`` makes ``a.relu_()`` out of place by letting later readers of ``a`` read the
    result. That is exact unless the written memory is also reached another way: through a
    view of ``a`` (or a tensor ``a`` is a view of) created before the write and read after
    it, or because it is a parameter or buffer of the model.
    """
    order = {n: i for i, n in enumerate(graph.nodes)}

    def linked(n: fx.Node) -> bool:
        return (_aliases(n, modules) or _writes(n, modules)) and bool(n.args) and isinstance(
            n.args[0], fx.Node)

    problems = []
    for node in graph.nodes:
        if not _writes(node, modules) or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        written = node.args[0]
        base = written
        while linked(base):
            base = base.args[0]  # type: ignore[assignment]
        if base.op == "get_attr":
            problems.append((node, f"writes the model's own tensor {base.target!r} in place"))
            continue
        family, stack = set(), [base]
        while stack:  # every view of the base, and views of views
            n = stack.pop()
            family.add(n)
            stack.extend(u for u in n.users if linked(u) and u.args[0] is n and u not in family)
        stale = sorted(
            (n for n in family if n is not written and order[n] < order[node]
             and any(order[u] > order[node] for u in n.users)),
            key=order.__getitem__,
        )
        if stale:
            names = ", ".join(repr(n.name) for n in stale)
            problems.append((node, f"writes {written.name!r} in place, and {names} (the same "
                                   "memory under another name) is read afterwards"))
    if problems:
        lines = [f"{where(node)}: {why}" for node, why in problems]
        raise UnsupportedOperationError(
            lines, "Fix: write these ops out of place (y = x.relu() instead of x.relu_(), "
            "y = x + z instead of x += z, nn.ReLU() instead of nn.ReLU(inplace=True)); lrpfx "
            "runs every op out of place and cannot reproduce writes seen through another name.")
