"""Symbolic tracing: the model becomes an ``fx.GraphModule`` with one node per call site."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import fx, nn

from lrpfx.errors import TraceError

LeafSpec = type[nn.Module] | str


class Tracer(fx.Tracer):
    """``torch.fx`` tracer whose leaves are the standard ``torch.nn`` layers plus ``leaf_modules``
    (module classes or qualified names); it records the source line of every node."""

    def __init__(self, leaf_modules: Sequence[LeafSpec] = ()) -> None:
        super().__init__()
        self.record_stack_traces = True
        self.leaf_types = tuple(s for s in leaf_modules if isinstance(s, type))
        self.leaf_names = {s for s in leaf_modules if isinstance(s, str)}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, self.leaf_types) or module_qualified_name in self.leaf_names:
            return True
        return super().is_leaf_module(m, module_qualified_name)


def trace(
    model: nn.Module,
    concrete_args: dict[str, Any] | None = None,
    leaf_modules: Sequence[LeafSpec] = (),
) -> fx.GraphModule:
    """Trace ``model`` symbolically. The model is only read.

    Raises:
        TraceError: the model cannot be traced; the message carries the fx error and the fixes.
    """
    tracer = Tracer(leaf_modules)
    if tracer.is_leaf_module(model, ""):  # a bare nn layer: trace it as a one-layer network
        model = nn.Sequential(model)
    try:
        graph = tracer.trace(model, concrete_args)
    except Exception as error:  # fx raises many types: TraceError, TypeError, RuntimeError...
        name = type(model).__name__
        raise TraceError(
            f"torch.fx could not trace {name}: {type(error).__name__}: {error}\n"
            "Fixes: pass the offending submodule (class or qualified name) in "
            "leaf_modules=[...] so it is called as a whole, or fix Python control flow on inputs "
            "with concrete_args={...}; see https://pytorch.org/docs/stable/fx.html#limitations"
        ) from error
    return fx.GraphModule(tracer.root, graph, type(model).__name__)
