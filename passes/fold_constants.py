"""fold_constants: values computed from constants alone become constants of the program.

Before: a normalized graph (parameters and buffers lifted into ``get_attr`` nodes).
After:  every call whose inputs are all constants (``get_attr`` nodes, numbers, other such
calls; never anything computed from the explained input, not even its shape) and whose value
a non-constant node reads is evaluated once, here, into a new buffer: a weight standardised in
``forward`` (NFNets), a mask, a position table of fixed size. The op that reads it then sees a
constant operand, as if the model had stored the computed tensor: a convolution with a computed
weight is a convolution like any other, with its rules, its folding of a BatchNorm after it and
its modified weights computed at compile time. The model's tensors are only read (in-place
calls are never evaluated); a later write to them is caught by the explainer's staleness check.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx

from lrpfx import meta


def _in_place(node: fx.Node) -> bool:
    name = str(node.target) if node.op == "call_method" else getattr(node.target, "__name__", "")
    return (name.endswith("_") and not name.endswith("__")) or node.kwargs.get("inplace") is True


def _evaluate(gm: fx.GraphModule, node: fx.Node, values: dict[fx.Node, Any]) -> Any:
    """The value of a constant node, or ``None`` when it cannot be computed here."""
    if node.op == "get_attr":
        return operator.attrgetter(str(node.target))(gm)
    if node.op not in ("call_function", "call_method") or _in_place(node):
        return None
    args = fx.map_arg(node.args, values.__getitem__)
    kwargs = fx.map_arg(node.kwargs, values.__getitem__)
    try:
        with torch.no_grad():
            if node.op == "call_method":
                return getattr(args[0], str(node.target))(*args[1:], **kwargs)
            return node.target(*args, **kwargs)  # type: ignore[operator]
    except Exception:  # noqa: BLE001  (left to run in the program, which will say what fails)
        return None


def fold_constants(gm: fx.GraphModule) -> fx.GraphModule:
    """Evaluate the constant calls that non-constant nodes read (see the module docstring)."""
    values: dict[fx.Node, Any] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder" or any(a not in values for a in node.all_input_nodes):
            continue
        value = _evaluate(gm, node, values)
        if value is not None:
            values[node] = value
    folded = False
    for node, value in values.items():
        if node.op == "get_attr" or not isinstance(value, torch.Tensor):
            continue
        if all(user in values for user in node.users):
            continue  # read by constants only: folded with them
        name = f"{meta.display_name(node)}_folded"
        while hasattr(gm, name):
            name += "_"
        gm.register_buffer(name, value.detach())
        with gm.graph.inserting_before(node):
            constant = gm.graph.get_attr(name)
        constant.meta = dict(node.meta)
        node.replace_all_uses_with(constant)
        folded = True
    if folded:
        gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.recompile()
    return gm
