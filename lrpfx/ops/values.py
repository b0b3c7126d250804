"""Compile-time questions about the values of a canonical graph.

The n-ary and routing stanzas must know, per argument, whether it carries relevance (a tensor
computed from the input), is a constant (a number, a parameter, a buffer: it absorbs relevance
like a bias), or is shape arithmetic (``x.size(0) // 2``: integers, no relevance at all). They
also look at the producer of a factor to recognise gates (``sigmoid(·) * x``).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

#: ops whose result is an integer, a ``torch.Size`` or a dtype, never a tensor
SHAPE_QUERIES = {"size", "dim", "numel"}
SHAPE_ATTRIBUTES = {"shape", "ndim", "dtype", "device"}
#: single-input ops that move values without changing them: a gate stays a gate through them
ROUTING = {
    torch.reshape, torch.flatten, torch.unflatten, torch.unsqueeze, torch.squeeze,
    torch.broadcast_to, torch.permute, torch.transpose, operator.getitem, "expand_as",
}
#: producers whose output is a gate in ``gate * signal`` (values in [0, 1] that weight a signal)
GATES = {torch.sigmoid, F.hardsigmoid, F.softmax}


def is_shape(arg: Any) -> bool:
    """True when ``arg`` is shape arithmetic: a size query or integers computed from sizes."""
    if not isinstance(arg, fx.Node):
        return False
    if arg.op == "call_method":
        return arg.target in SHAPE_QUERIES
    if arg.op != "call_function":
        return False
    if arg.target is getattr:
        return arg.args[1] in SHAPE_ATTRIBUTES
    if getattr(arg.target, "__module__", None) == "_operator":
        nodes = [a for a in arg.args if isinstance(a, fx.Node)]
        return bool(nodes) and all(is_shape(a) for a in nodes)
    return False


def depends_on_input(arg: Any) -> bool:
    """True when ``arg`` is a node computed (transitively) from a placeholder."""
    if not isinstance(arg, fx.Node):
        return False
    seen: set[fx.Node] = set()
    stack = [arg]
    while stack:
        node = stack.pop()
        if node.op == "placeholder":
            return True
        if node in seen:
            continue
        seen.add(node)
        stack.extend(node.all_input_nodes)
    return False


def carries(arg: Any) -> bool:
    """True when ``arg`` is a tensor computed from the input: it receives relevance."""
    return isinstance(arg, fx.Node) and not is_shape(arg) and depends_on_input(arg)


def source(node: fx.Node) -> fx.Node:
    """The node ``node`` was routed from (through reshapes, permutes, expands, indexing)."""
    while node.op in ("call_function", "call_method") and node.target in ROUTING:
        x = node.args[0]
        if not isinstance(x, fx.Node):
            break
        node = x
    return node


def is_gate(arg: Any) -> bool:
    """True when ``arg`` comes out of a sigmoid, hard sigmoid or softmax (maybe reshaped)."""
    return isinstance(arg, fx.Node) and source(arg).target in GATES
