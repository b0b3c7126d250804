"""Tracing with static shapes: every traced value is also computed on an example input.

With ``lrpfx.compile(model, rules, example_inputs=x)`` the tracer runs the model on ``x`` while
it traces it, so that a traced tensor knows its shape: ``x.shape``, ``x.size(d)``, ``x.dim()``
and ``len(x)`` are plain integers, and Python control flow on them (Swin's padding and shift
masks, window partitions) runs as it would in eager mode. The graph is specialized to the
shape of ``x`` (the explainer refuses other shapes). Besides:

- functions wrapped with ``torch.fx.wrap`` (torchvision's ``shifted_window_attention``,
  ``_patch_merging_pad``) are traced through, into the ops they compute, unless lrpfx knows
  them as ops;
- a value computed without the input (a mask, a relative position bias, Swin-V2's position-bias
  MLP, a tensor of shapes alone like ``x.new_zeros((h, w))``) is computed here, not traced, so
  that what the model writes into it (``mask[i] = v``, ``bias[a:b].zero_()``) is computed too:
  the graph holds the finished tensor as a constant.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Iterator
from typing import Any

import torch
import torch.fx._symbolic_trace as fx_trace
from torch import fx, nn

from lrpfx.ops.table import OPS


@contextlib.contextmanager
def traced_through_wrapped_functions() -> Iterator[None]:
    """While tracing, functions wrapped with ``torch.fx.wrap`` that are not ops of lrpfx's
    table are traced into instead of recorded as one call."""
    table = fx_trace._wrapped_fns_to_patch
    hidden = {key: frame for key, frame in table.items()
              if key[1] in frame and frame[key[1]] not in OPS}
    for key in hidden:
        del table[key]
    try:
        yield
    finally:
        table.update(hidden)


def wrapped(fn: Any) -> bool:
    """Whether ``fn`` is a function wrapped with ``torch.fx.wrap``."""
    return any(frame.get(name) is fn for (_, name), frame in fx_trace._wrapped_fns_to_patch.items())


class Values:
    """The example value of each traced node: the model run alongside its trace."""

    def __init__(self, root: nn.Module, example_inputs: tuple[Any, ...],
                 example_kwargs: dict[str, Any] | None = None) -> None:
        self.root = root
        self.inputs = list(example_inputs)
        self.kwargs = dict(example_kwargs or {})  # keyword inputs, by the argument's name
        self.of: dict[fx.Node, Any] = {}
        self.dependent: set[fx.Node] = set()  # nodes computed from the input

    def constant(self, node: fx.Node) -> bool:
        """Whether the call ``node`` computes a value without the input (a mask, a relative
        position bias, a weight computed in ``forward``, a tensor of shapes alone like
        ``x.new_zeros((h, w))``); the input and what is computed from it are not."""
        reads_input = any(a in self.dependent for a in node.all_input_nodes)
        if node.op == "placeholder" or reads_input and not makes_constant(node):
            self.dependent.add(node)
            return False
        return node.op in ("call_function", "call_method", "call_module") and node in self.of

    def __contains__(self, node: fx.Node) -> bool:
        return node in self.of

    def _value(self, node: fx.Node) -> Any:
        """The value of an input node; fx makes some ``get_attr`` nodes without a proxy."""
        return self.of[node] if node in self.of else self.compute(node)

    def _placeholder(self, node: fx.Node) -> Any:
        """The example value of an argument: given by keyword, else the next positional one,
        else its default."""
        name = str(node.target).lstrip("*")
        if name in self.kwargs:
            return self.kwargs[name]
        return self.inputs.pop(0) if self.inputs else node.args[0] if node.args else None

    def compute(self, node: fx.Node) -> Any:
        """Compute and keep the value of ``node`` from the values of its inputs."""
        args = fx.map_arg(node.args, self._value)
        kwargs = fx.map_arg(node.kwargs, self._value)
        if node.op == "placeholder":
            value = self._placeholder(node)
        elif node.op == "get_attr":  # a copy: an in-place call must not reach the model
            value = operator.attrgetter(str(node.target))(self.root)
            value = value.detach().clone() if isinstance(value, torch.Tensor) else value
        elif node.op == "call_function":
            value = node.target(*args, **kwargs)  # type: ignore[operator]
        elif node.op == "call_method":
            value = getattr(args[0], str(node.target))(*args[1:], **kwargs)
        elif node.op == "call_module":  # forward, not __call__: no hooks of the user's run here
            value = self.root.get_submodule(str(node.target)).forward(*args, **kwargs)
        else:
            return None
        self.of[node] = value
        return value


def makes_constant(node: fx.Node) -> bool:
    """Whether ``node`` makes a tensor from its inputs' shapes alone (``new_zeros``)."""
    key = str(node.target) if node.op == "call_method" else node.target
    facts = OPS.get(key) if node.op in ("call_function", "call_method") else None  # type: ignore[arg-type]
    return facts is not None and facts.constant


def example_call(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``example_inputs`` as the positional and keyword arguments of one call: one tensor, a
    tuple or list of positional arguments, or a dict of keyword arguments by name."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    if isinstance(example_inputs, dict) and all(isinstance(k, str) for k in example_inputs):
        return (), dict(example_inputs)
    raise TypeError(f"example_inputs must be a tensor, a tuple of the model's positional "
                    f"arguments or a dict of its keyword arguments by name, not "
                    f"{type(example_inputs).__name__}")
