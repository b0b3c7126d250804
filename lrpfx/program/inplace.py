"""Elementwise work in place where the program owns the operand.

Before: the explain graph, every node out of place. After: an elementwise node whose tensor
operand is *owned* (made by the program itself: not an input, a constant or a view of one) and
read last by that node (earlier readers made new tensors from it) writes its result into that
operand (``relu(a)`` becomes ``relu_(a)``, ``a * x`` becomes ``a.mul_(x)``, ``r / z`` becomes
``torch.div(r, z, out=z)``). Nothing reads the operand afterwards, so the values computed are
the same, bit for bit; what changes is that no new tensor is allocated (on CPU a fresh
allocation is a page fault per 4 KiB on first touch) and less memory is held.

Broadcasting could make a result larger than an operand: a tensor-tensor op becomes an in-place
method only when its emitter stated which operands have the result's shape and dtype
(``like(node, 0, 1)``; a tensor-number op has its tensor's); without that statement it calls a
helper (``mul_into``...) that checks the shapes when the program runs.

Which calls make new tensors, and which have in-place variants: for torch's own functions the
tables below; for lrpfx's runtime functions their ``@kernel`` declarations.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from lrpfx import meta
from lrpfx import runtime as rt
from lrpfx.runtime import kernel


def _fits(a: torch.Tensor, b: torch.Tensor | float) -> bool:
    """``a ∘ b`` has ``a``'s shape and dtype, so it can be written into ``a``."""
    if not isinstance(b, torch.Tensor):
        return True
    return a.dtype == b.dtype and a.shape == torch.broadcast_shapes(a.shape, b.shape)


# ``a ∘ b`` written into ``a`` (or into ``b``: ``*_second``) when the shapes allow; the program
# calls these where that operand is an intermediate nothing reads afterwards (``CHECKED``)
@kernel(fresh=True)
def mul_into(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.mul_(b) if _fits(a, b) else a * b


@kernel(fresh=True)
def add_into(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.add_(b) if _fits(a, b) else a + b


@kernel(fresh=True)
def sub_into(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.sub_(b) if _fits(a, b) else a - b


@kernel(fresh=True)
def div_into(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.div_(b) if _fits(a, b) else a / b


@kernel(fresh=True)
def sub_into_second(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.sub(a, b, out=b) if _fits(b, a) else a - b


@kernel(fresh=True)
def div_into_second(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.div(a, b, out=b) if _fits(b, a) else a / b


# call_function targets whose result is a new tensor (arithmetic: when an operand is a tensor)
FRESH: set[Any] = {
    torch.conv1d, torch.conv2d, torch.conv3d, F.conv1d, F.conv2d, F.conv3d, F.linear,
    torch._C._nn.linear, torch.relu, torch.clamp, torch.where, torch.ones_like,
    torch.zeros_like, torch.matmul, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, torch.div, torch.sub,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, operator.add, operator.sub, operator.mul,
    operator.truediv, operator.neg, operator.matmul, F.pad, torch.roll, torch.cat, F.softmax,
    F.layer_norm, F.gelu,
}
# tensor ∘ tensor without a stated shape: helpers that check the shapes when the program runs
# (into the first operand, into the second)
CHECKED: dict[Any, tuple[Callable[..., Any], Callable[..., Any]]] = {
    operator.add: (add_into, add_into), operator.mul: (mul_into, mul_into),
    operator.sub: (sub_into, sub_into_second),
    operator.truediv: (div_into, div_into_second),
}
UNARY: dict[Any, str] = {torch.relu: "relu_", operator.neg: "neg_"}
BINARY: dict[Any, str] = {operator.add: "add_", operator.sub: "sub_", operator.mul: "mul_",
                          operator.truediv: "div_"}
COMMUTATIVE = {operator.add, operator.mul}
INTO_SECOND: dict[Any, Callable[..., Any]] = {operator.sub: torch.sub,
                                              operator.truediv: torch.div}
# views: owned when their base is owned and read by the view alone
VIEWS: set[Any] = {torch.reshape, torch.flatten, torch.unflatten}
VIEW_METHODS = {"reshape_as", "view_as", "reshape", "view", "flatten"}


def _owned(graph: fx.Graph) -> set[fx.Node]:
    """Nodes whose value is a tensor the program made (a view only if its base is read by the
    view alone). Arithmetic counts when an operand is a tensor: on numbers it is shape math."""
    owned: set[fx.Node] = set()
    tensors: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "get_attr" or (node.op == "placeholder" and not tensors):
            tensors.add(node)  # constants and the input (the first placeholder)
        elif node.op == "call_function" and _fresh(node.target):
            arithmetic = node.target in BINARY or node.target is operator.neg
            if not arithmetic or any(a in tensors for a in node.all_input_nodes):
                owned.add(node)
        elif node.op == "call_method" and node.target in set(BINARY.values()) | {"relu_", "neg_"}:
            if node.args[0] in owned:
                owned.add(node)
        elif _is_view(node) and node.args[0] in owned and len(node.args[0].users) == 1:
            owned.add(node)
        if node in owned:
            tensors.add(node)
    return owned


def _fresh(target: Any) -> bool:
    facts = rt.kernel_of(target)
    return facts.fresh if facts is not None else target in FRESH


def _is_view(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in VIEW_METHODS
    return node.op == "call_function" and node.target in VIEWS


class _Owned:
    """The values the program owns, and when each is read."""

    def __init__(self, graph: fx.Graph) -> None:
        self.nodes = _owned(graph)
        self.order = {n: i for i, n in enumerate(graph.nodes)}

    def free(self, node: fx.Node, arg: Any) -> bool:
        """``arg`` is owned and ``node`` reads it last; its earlier readers made new tensors
        from it (no view of it is read later)."""
        if not isinstance(arg, fx.Node) or arg not in self.nodes:
            return False
        return all(self.order[u] < self.order[node] and _makes_new(u)
                   for u in arg.users if u is not node)


def _makes_new(user: fx.Node) -> bool:
    """The node's result shares no memory with its inputs."""
    if user.op == "call_method":
        return user.target in ("size", "dim")
    return user.op == "call_function" and _fresh(user.target)


def _rewrite(node: fx.Node, owned: _Owned) -> bool:
    """Make one node in place if it qualifies; returns whether it did."""
    if node.op != "call_function" or node.kwargs:
        return False
    args = node.args
    facts = rt.kernel_of(node.target)
    if facts is not None and facts.inplace is not None and args and owned.free(node, args[0]):
        node.target = facts.inplace
        return True
    if node.target in UNARY and len(args) == 1 and owned.free(node, args[0]):
        node.op, node.target = "call_method", UNARY[node.target]
        return True
    if node.target not in BINARY or len(args) != 2:
        return False
    a, b = args
    allowed = node.meta.get(meta.LIKE)
    if not isinstance(b, fx.Node):
        allowed = (0,)
    elif not isinstance(a, fx.Node) or a is b:
        return False
    elif allowed is None:
        return _checked(node, owned)
    if 0 in allowed and owned.free(node, a):
        node.op, node.target = "call_method", BINARY[node.target]
        return True
    if 1 in allowed and owned.free(node, b):
        if node.target in COMMUTATIVE:
            node.op, node.target, node.args = "call_method", BINARY[node.target], (b, a)
        else:
            node.target, node.kwargs = INTO_SECOND[node.target], {"out": b}
        return True
    return False


def _checked(node: fx.Node, owned: _Owned) -> bool:
    """A tensor-tensor op of unknown shapes: a helper writes in place if the shapes allow."""
    a, b = node.args
    into_first, into_second = CHECKED[node.target]
    if owned.free(node, a):
        node.target = into_first
    elif owned.free(node, b) and node.target in COMMUTATIVE:
        node.target, node.args = into_first, (b, a)
    elif owned.free(node, b):
        node.target = into_second
    else:
        return False
    return True


def inplace(program: fx.GraphModule) -> fx.GraphModule:
    """Rewrite the qualifying elementwise nodes of ``program`` in place (see the module doc)."""
    owned = _Owned(program.graph)
    for node in program.graph.nodes:
        if _rewrite(node, owned):
            owned.nodes.add(node)
    program.graph.lint()
    program.recompile()
    return program
