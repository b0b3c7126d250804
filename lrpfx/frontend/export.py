"""The ``torch.export`` front end: models that symbolic tracing cannot read.

``torch.export.export(model, args, kwargs, strict=False)`` runs the model on example inputs
and records every op it computes, whatever Python it was written in (HuggingFace's masking
utilities, control flow on shapes, ``**kwargs`` forwards); ``run_decompositions({})`` gives the
functional IR, in which ``linear``, ``layer_norm``, ``softmax``, ``scaled_dot_product_attention``
and ``embedding`` stay whole (Core ATen would break them into pieces). The graph is specialized
to the example's shapes (static shapes, as ``example_inputs`` with the fx front end).

It hands the passes the same seam as the fx front end (``lrpfx.frontend``):

- aten ops are spellings in the op table (``spell(F.linear, aten.linear.default, ...)``), made
  canonical by ``passes.normalize`` like any other; the few whose arguments differ from their
  canonical op (``embedding(weight, ids)``, ``addmm``, ``t``, ``slice``, casts,
  ``scaled_dot_product_attention``, eval-mode BatchNorm) are rewritten here, before it;
- each node's module path and class come from its ``nn_module_stack``: the innermost module,
  when it is a layer of ``torch.nn`` (as the fx front end keeps those whole), so composites by
  name (``"encoder.*.mlp.0"``) and by type (``nn.Linear``) match the same call sites; a module
  of the model's own that computes one dense or convolution op (GPT-2's ``Conv1D``) names it;
- a HuggingFace activation written out in elementwise ops (GPT-2's ``NewGELUActivation``) is
  the canonical op it computes (``REGIONS``), so that it takes an activation's rule;
- the inputs keep the names of the model's arguments; arguments that are not tensors (flags
  like ``use_cache``) are fixed at their example values; the output is the model's tensor, or
  the ``logits`` of a HuggingFace output (else its first tensor).
"""

from __future__ import annotations

import inspect
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from lrpfx import meta
from lrpfx.errors import TraceError
from lrpfx.frontend.decompositions import DECOMPOSITIONS
from lrpfx.kernels import slice_index
from lrpfx.ops.casts import cast
from lrpfx.ops.table import aten

_DROPPED = {aten._assert_tensor_metadata.default}

#: activation modules whose forward is written out in elementwise ops, by the class path that
#: ``nn_module_stack`` records: the region becomes the canonical op it computes, so that it
#: takes an activation's rule (the identity rule under AttnLRP) as a whole, as LXT patches them
REGIONS: dict[str, tuple[Any, dict[str, Any]]] = {
    "transformers.activations.NewGELUActivation": (F.gelu, {"approximate": "tanh"}),
    "transformers.activations.GELUTanh": (F.gelu, {"approximate": "tanh"}),
    "transformers.activations.FastGELUActivation": (F.gelu, {"approximate": "tanh"}),
    "transformers.activations.PytorchGELUTanh": (F.gelu, {"approximate": "tanh"}),
    "transformers.activations.GELUActivation": (F.gelu, {}),
    "transformers.activations.SiLUActivation": (F.silu, {}),
}


def export(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> fx.GraphModule:
    """The graph of ``model`` called on ``args`` and ``kwargs``, through ``torch.export``
    (see the module docstring).

    Raises:
        TraceError: ``torch.export`` cannot capture the model; the message quotes it.
    """
    kwargs = dict(kwargs)
    if "use_cache" in _parameters(model) and "use_cache" not in kwargs:
        kwargs["use_cache"] = False  # a language model's cache is no part of an explanation
    try:
        with torch.no_grad():
            program = torch.export.export(model, args, kwargs, strict=False)
        program = program.run_decompositions({})
    except Exception as error:  # export raises many types
        raise TraceError(f"torch.export could not capture {type(model).__name__}: "
                         f"{type(error).__name__}: {str(error)[:2000]}") from error
    module = program.module()
    graph = module.graph
    graph._codegen = fx.graph.CodeGen()  # plain arguments, not export's pytree flattening
    _choose_output(graph, program.call_spec.out_spec)
    for node in list(graph.find_nodes(op="call_module", target="_guards_fn")):
        if not node.users:  # export's check of the inputs' shapes (lrpfx.calls checks them)
            graph.erase_node(node)
    _inputs(graph, model)
    modules = dict(model.named_modules())
    _regions(graph, modules)
    for node in list(graph.nodes):
        if node.op == "call_function":
            _rewrite(graph, node)
    for node in graph.nodes:
        if node.op == "call_function":
            _where_from(node, modules)
    _one_layer_modules(graph, modules)
    graph.eliminate_dead_code()
    graph.lint()
    return fx.GraphModule(module, graph, type(model).__name__)


def _regions(graph: fx.Graph, modules: dict[str, nn.Module]) -> None:
    """Each call of a module of ``REGIONS`` (one tensor in, one out) as its canonical op, with
    the module's path and class."""
    calls: dict[str, list[fx.Node]] = {}
    for node in graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        if node.op == "call_function" and stack:
            key, (path, cls) = list(stack.items())[-1]
            if str(cls) in REGIONS:
                calls.setdefault(key, []).append(node)
    for nodes in calls.values():
        inside = set(nodes)
        inputs = {a for n in nodes for a in n.all_input_nodes if a not in inside}
        outputs = [n for n in nodes if any(u not in inside for u in n.users)]
        if len(inputs) != 1 or len(outputs) != 1:
            continue  # not one elementwise call: left as the ops it is
        path, cls = list(nodes[0].meta["nn_module_stack"].values())[-1]
        fn, kwargs = REGIONS[str(cls)]
        with graph.inserting_before(outputs[0]):
            new = graph.call_function(fn, (next(iter(inputs)),), kwargs)
        new.meta = dict(outputs[0].meta)
        if path in modules:
            new.meta[meta.PATH] = path
            new.meta[meta.MODULE_TYPE] = type(modules[path])
        outputs[0].replace_all_uses_with(new)
        for node in reversed(nodes):
            graph.erase_node(node)


def _parameters(model: nn.Module) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def _choose_output(graph: fx.Graph, spec: Any) -> None:
    """The output node returns one tensor: the model's, or its ``logits``."""
    output = next(n for n in graph.nodes if n.op == "output")
    leaves = list(output.args[0]) if isinstance(output.args[0], (tuple, list)) else [
        output.args[0]]
    keys = list(getattr(spec, "context", None) or []) if spec is not None else []
    index = keys.index("logits") if "logits" in keys and len(keys) == len(leaves) else 0
    tensors = [i for i, leaf in enumerate(leaves) if isinstance(leaf, fx.Node)
               and isinstance(leaf.meta.get("val"), torch.Tensor)]
    if index not in tensors:
        if not tensors:
            raise TraceError("the exported model returns no tensor: nothing to explain")
        index = tensors[0]
    output.args = (leaves[index],)


def _inputs(graph: fx.Graph, model: nn.Module) -> None:
    """Example shapes and dtypes on the inputs; inputs that are not tensors removed."""
    for node in list(graph.find_nodes(op="placeholder")):
        value = node.meta.get("val")
        if isinstance(value, torch.Tensor):
            node.meta[meta.STATIC_SHAPE] = tuple(value.shape)
            node.meta[meta.DTYPE] = value.dtype
        elif not node.users:
            graph.erase_node(node)
        else:
            raise TraceError(f"{type(model).__name__}: the argument {node.target!r} is not a "
                             "tensor but the exported graph reads it; fix it as a constant")


def _dtype(node: Any) -> torch.dtype | None:
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    return value.dtype if isinstance(value, torch.Tensor) else None


def _shape(node: Any) -> tuple[int, ...] | None:
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _replace(graph: fx.Graph, node: fx.Node, fn: Any, *args: Any, **kwargs: Any) -> fx.Node:
    with graph.inserting_before(node):
        new = graph.call_function(fn, args, kwargs)
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    graph.erase_node(node)
    return new


def _cast_or_same(graph: fx.Graph, node: fx.Node, x: fx.Node, dtype: Any) -> None:
    """``x`` in ``dtype``: itself when it has that dtype (or ``dtype`` is None)."""
    if dtype is None or dtype == _dtype(x):
        node.replace_all_uses_with(x)
        graph.erase_node(node)
    else:
        _replace(graph, node, cast, x, dtype)


def _slice(x: fx.Node, dim: int = 0, start: Any = None, end: Any = None,
           step: Any = 1) -> tuple[Any, ...]:
    """``aten.slice(x, dim, start, end, step)`` as the index of ``x[index]``."""
    return slice_index(len(x.meta["val"].shape), dim, start, end, step)


def _rewrite(graph: fx.Graph, node: fx.Node) -> None:
    """Rewrite the aten ops whose arguments differ from their canonical op's."""
    target, args, kwargs = node.target, node.args, node.kwargs
    if target in _DROPPED and not node.users:
        graph.erase_node(node)
    elif target is aten.embedding.default:
        _replace(graph, node, F.embedding, args[1], args[0])
    elif target is aten.t.default:
        _replace(graph, node, torch.transpose, args[0], 0, 1)
    elif target is aten.addmm.default and not kwargs and len(args) == 3:
        with graph.inserting_before(node):
            weight = graph.call_function(torch.transpose, (args[2], 0, 1))
        weight.meta = dict(node.meta)
        _replace(graph, node, F.linear, args[1], weight, args[0])
    elif target is aten.slice.Tensor:
        _replace(graph, node, operator.getitem, args[0], _slice(*args, **kwargs))  # type: ignore[arg-type]
    elif target is aten.copy.default and _shape(args[1]) == _shape(node):  # x.copy_(src)
        _cast_or_same(graph, node, args[1], _dtype(node))  # type: ignore[arg-type]
    elif target is aten.index.Tensor:  # x[i, j] with index tensors (None: the whole dimension)
        index = tuple(slice(None) if i is None else i for i in args[1])  # type: ignore[union-attr]
        _replace(graph, node, operator.getitem, args[0], index)
    elif target in (aten._to_copy.default, aten.to.dtype):
        dtype = kwargs.get("dtype", args[1] if len(args) > 1 else None)
        if set(kwargs) - {"dtype", "layout", "device"} or kwargs.get("device") not in (
                None, _device(args[0])):
            return  # a change of device or memory format: left as it is
        _cast_or_same(graph, node, args[0], dtype)  # type: ignore[arg-type]
    elif target is aten.scaled_dot_product_attention.default:
        _replace(graph, node, F.scaled_dot_product_attention, *args, **kwargs)
    elif target is aten._native_batch_norm_legit_no_training.default:
        _batch_norm(graph, node)


def _batch_norm(graph: fx.Graph, node: fx.Node) -> None:
    """``_native_batch_norm_legit_no_training(x, w, b, mean, var, momentum, eps)[0]``, the
    eval-mode BatchNorm, as ``F.batch_norm`` (its other outputs are empty in eval mode)."""
    x, weight, bias, mean, var, momentum, eps = node.args
    for user in list(node.users):
        if user.target is operator.getitem and user.args[1] == 0:
            _replace(graph, user, F.batch_norm, x, mean, var, weight, bias, False, momentum, eps)
    if not node.users:
        graph.erase_node(node)


def _device(node: Any) -> torch.device | None:
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    return value.device if isinstance(value, torch.Tensor) else None


def _where_from(node: fx.Node, modules: dict[str, nn.Module]) -> None:
    """Module path and class of ``node`` from its ``nn_module_stack`` (see the docstring); the
    ops of a module the fx front end writes out (``nn.MultiheadAttention``) get its path only.
    """
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return
    path = list(stack.values())[-1][0]
    module = modules.get(path)
    if module is not None and path and _layer(module):
        node.meta[meta.PATH] = path
        if type(module) not in DECOMPOSITIONS:
            node.meta[meta.MODULE_TYPE] = type(module)


_LAYERS = (F.linear, F.conv1d, F.conv2d, F.conv3d)


def _one_layer_modules(graph: fx.Graph, modules: dict[str, nn.Module]) -> None:
    """A module of the model's own (HuggingFace's ``Conv1D``) whose call computes exactly one
    dense or convolution op: that op gets the module's path and class, as a ``torch.nn`` layer
    would (``"transformer.h.0.mlp.c_fc"`` is recordable and matched by name and type)."""
    calls: dict[str, list[fx.Node]] = {}
    for node in graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        if node.op == "call_function" and node.target in _LAYERS and stack:
            calls.setdefault(list(stack)[-1], []).append(node)
    for nodes in calls.values():
        path = list(nodes[0].meta["nn_module_stack"].values())[-1][0]
        module = modules.get(path)
        if len(nodes) == 1 and module is not None and path and meta.PATH not in nodes[0].meta:
            nodes[0].meta[meta.PATH] = path
            nodes[0].meta[meta.MODULE_TYPE] = type(module)


def _layer(module: nn.Module) -> bool:
    """A layer of ``torch.nn``, which the fx front end keeps whole (not a container)."""
    return (type(module).__module__.startswith("torch.nn")
            and not isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)))
