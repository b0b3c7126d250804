"""An explainer's call, as the model takes its inputs: ``ex(input_ids=ids, attention_mask=mask,
target=...)`` or ``ex(x, target=3)``.

``bind`` puts positional and keyword arguments into the order of the model's inputs (a
positional argument past them is the target, as in ``ex(x, 3)``). ``check`` refuses, naming the
input and the fix, what the program could not take: a missing or unknown input, a non-tensor,
a static shape other than the example's, an explained input of the wrong dtype or device, an
empty batch, NaN or Inf, token ids outside the embedding table. A model with one
floating-point input is checked by ``lrpfx.guard`` as before.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from lrpfx import guard, meta
from lrpfx import runtime as rt
from lrpfx.frontend.inputs import argument_name
from lrpfx.language.targets import NextToken, sequence_seed


class Signature:
    """The inputs of the explainer of a canonical graph: their names, which is explained and
    whether it is token ids."""

    def __init__(self, graph_module: fx.GraphModule) -> None:
        self.nodes = list(graph_module.graph.find_nodes(op="placeholder"))
        self.names = [argument_name(n) for n in self.nodes]
        marks = [n.meta.get(meta.EXPLAINED) for n in self.nodes]
        self.explained = next((i for i, m in enumerate(marks) if m), 0)
        self.tokens = marks[self.explained] == meta.TOKENS
        self.tables = [t for n in graph_module.graph.nodes
                       if n.meta.get(meta.EXPLAINED) == meta.EMBEDDING
                       and (t := _table(graph_module, n)) is not None]

    @property
    def plain(self) -> bool:
        """One floating-point input: the explainer's original call, ``ex(x, target)``."""
        return len(self.names) == 1 and not self.tokens

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any],
             target: Any) -> tuple[list[Any], Any]:
        """The inputs in order, and the target (which may come positionally after them)."""
        if len(args) == len(self.names) + 1 and target is None:
            args, target = args[:-1], args[-1]
        if len(args) > len(self.names):
            raise TypeError(f"the explainer takes {len(self.names)} input(s) "
                            f"({', '.join(self.names)}) and a target, got {len(args)} "
                            "positional arguments")
        given = dict(zip(self.names, args, strict=False))
        for name, value in kwargs.items():
            key = self.names[0] if name == "x" and self.plain else name
            if key not in self.names:
                raise TypeError(f"the explainer got an unknown input {name!r}; the model's "
                                f"inputs are {', '.join(self.names)} (optional arguments left "
                                "at their defaults at compile time are not inputs)")
            if key in given:
                raise TypeError(f"the explainer got input {name!r} twice")
            given[key] = value
        missing = [n for n in self.names if n not in given]
        if missing:
            raise TypeError(f"the explainer needs the input(s) {', '.join(missing)}, as given "
                            "to lrpfx.compile in example_inputs")
        return [given[n] for n in self.names], target

    def check(self, inputs: list[Any], dtype: torch.dtype | None,
              device: torch.device | None) -> None:
        """Refuse inputs the program cannot take (see the module docstring)."""
        for name, node, value in zip(self.names, self.nodes, inputs, strict=True):
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"input {name!r} must be a torch.Tensor, got "
                                f"{type(value).__name__}")
            shape = node.meta.get(meta.STATIC_SHAPE)
            if shape is not None and tuple(value.shape) != tuple(shape):
                raise ValueError(f"input {name!r} has shape {tuple(value.shape)}, but the "
                                 f"explainer was compiled with example_inputs of shape "
                                 f"{tuple(shape)} and its shapes are static; compile again "
                                 "with example inputs of that shape")
        x = inputs[self.explained]
        name = self.names[self.explained]
        if self.tokens:
            self._check_ids(name, x)
        else:
            _check_values(name, x, dtype, device)
        if x.dim() == 0 or x.shape[0] == 0:
            raise ValueError(f"input {name!r} must be a non-empty batch, batch dimension first;"
                             f" got shape {tuple(x.shape)}")

    def _check_ids(self, name: str, ids: torch.Tensor) -> None:
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise TypeError(f"input {name!r} holds token ids and must be an integer tensor, got "
                            f"dtype {ids.dtype}")
        for table in self.tables:
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= table.shape[0]):
                raise ValueError(f"input {name!r} has token ids from {int(ids.min())} to "
                                 f"{int(ids.max())}; the embedding table has {table.shape[0]} "
                                 "rows")


def _check_values(name: str, x: torch.Tensor, dtype: torch.dtype | None,
                  device: torch.device | None) -> None:
    if not x.is_floating_point():
        raise TypeError(f"input {name!r} is explained and must be floating point, got dtype "
                        f"{x.dtype}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"input {name!r} has dtype {x.dtype} but the explainer computes in "
                        f"{dtype}; convert one of them")
    if device is not None and x.device != device:
        raise ValueError(f"input {name!r} is on {x.device} but the explainer is on {device}")
    if not rt.finite(x):
        raise ValueError(f"input {name!r} contains NaN/Inf values; lrpfx does not explain "
                         "non-finite inputs")


def _table(gm: fx.GraphModule, lookup: fx.Node) -> torch.Tensor | None:
    """The table of an embedding lookup, when it is a constant of the graph."""
    return guard.constant(gm, lookup.args[1]) if lookup.target is F.embedding else None


def target_and_shape(graph_module: fx.GraphModule, signature: Signature, inputs: list[Any],
                     target: Any, output_relevance: Any,
                     dtype: torch.dtype | None) -> torch.Tensor | None:
    """The target as one class per sample (None: the argmax), checked against the output
    shape, which is found without computing (``guard.output_shape``)."""
    shape = guard.output_shape(graph_module, *inputs)
    x = inputs[signature.explained]
    like = x if x.is_floating_point() else torch.empty(
        x.shape, dtype=dtype or torch.get_default_dtype(), device=x.device)
    if output_relevance is not None:
        guard.check_output_relevance(output_relevance, like, shape, target)
    elif target is None:
        guard.class_count(shape, "the default target (each sample's argmax)")
    return guard.check_target(target, like, shape)


def sequence_target(graph_module: fx.GraphModule, signature: Signature, inputs: list[Any],
                    target: Any, output_relevance: Any) -> tuple[Any, Any]:
    """For a language model's logits ``(batch, seq, vocab)`` from explained token ids: the
    target (None: the predicted next token; a token id, one per sample) and a ``NextToken``
    as an output relevance at the last non-padding position (``lrpfx.language.targets``)."""
    mask = inputs[signature.names.index("attention_mask")] if (
        "attention_mask" in signature.names) else None
    if isinstance(output_relevance, NextToken):
        return target, sequence_seed(output_relevance, mask)
    if output_relevance is not None or not signature.tokens:
        return target, output_relevance
    if len(guard.output_shape(graph_module, *inputs)) != 3:
        return target, output_relevance
    if target is not None and not isinstance(target, int | torch.Tensor) or isinstance(
            target, bool):
        raise TypeError("target must be a token id, one per sample, or None (the predicted "
                        f"next token), got {type(target).__name__}")
    return None, sequence_seed(NextToken(target), mask)
