"""linearize: re-indexings become one canonical call each, routed exactly in the backward.

Before: flatten/view/reshape/unflatten in any spelling (``nn.Flatten``, ``x.view(n, -1)``,
``x.flatten(1)``, ``torch.reshape``...).
After:  ``torch.flatten(x, start, end)``, ``torch.reshape(x, shape)`` or
``torch.unflatten(x, dim, sizes)``; their relevance is the output relevance reshaped back
(``reshape_as``), without any rule: a re-indexing moves values, it does not mix them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn

from lrpfx import meta


def _shape(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """``view(2, 3)`` and ``view((2, 3))`` both mean the shape ``(2, 3)``."""
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else args


def _flatten_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    start = kwargs.get("start_dim", args[0] if args else 0)
    end = kwargs.get("end_dim", args[1] if len(args) > 1 else -1)
    return start, end


_METHODS: dict[str, tuple[Callable[..., Any], Callable[..., tuple[Any, ...]]]] = {
    "view": (torch.reshape, lambda a, k: (_shape(a),)),
    "reshape": (torch.reshape, lambda a, k: (_shape(a),)),
    "flatten": (torch.flatten, _flatten_args),
    "unflatten": (torch.unflatten, lambda a, k: tuple(a)),
}


def _canonical(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[Any, ...] | None:
    """``(function, args after the input)`` for a re-indexing node, else None."""
    rest, kwargs = tuple(node.args[1:]), dict(node.kwargs)
    if node.op == "call_method" and node.target in _METHODS:
        fn, convert = _METHODS[str(node.target)]
        return fn, convert(rest, kwargs)
    if node.op == "call_function" and node.target is torch.flatten:
        return torch.flatten, _flatten_args(rest, kwargs)
    if node.op == "call_module":
        module = modules[str(node.target)]
        if isinstance(module, nn.Flatten):
            return torch.flatten, (module.start_dim, module.end_dim)
        if isinstance(module, nn.Unflatten):
            return torch.unflatten, (module.dim, tuple(module.unflattened_size))
    return None


def linearize(gm: fx.GraphModule) -> fx.GraphModule:
    """Rewrite every re-indexing spelling into its canonical call (see the module docstring)."""
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        canonical = _canonical(node, modules)
        if canonical is None:
            continue
        fn, args = canonical
        with gm.graph.inserting_before(node):
            new = gm.graph.call_function(fn, (node.args[0], *args))
        new.meta = dict(node.meta)
        new.meta.pop(meta.UNSUPPORTED, None)
        new.meta.setdefault(meta.ORIGIN, f"Tensor.{node.target}")
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return gm
