"""Symbolic tracing: the model becomes an ``fx.GraphModule`` with one node per call site.

On top of ``torch.fx`` tracing (the model is only read):

- ``x += y`` (``-=``, ``*=``, ``/=``) on a tensor is traced as the in-place op it is in eager
  mode; fx alone rebinds it to ``x + y``, so another name for the old ``x`` would read a stale
  value. ``normalize`` then makes every in-place op out of place.
- An in-place write that another name would see (a view of the written tensor read later, or a
  parameter or buffer of the model) cannot be made out of place: it is refused, listed like an
  unsupported op (``lrpfx.frontend.hidden_writes``).
- Module classes registered with ``lrpfx.register`` are leaves, like ``leaf_modules``; the
  program gets its own copy of each such module (sharing its tensors), so nothing done to the
  explainer (``.to()``, ``load_state_dict``) reaches the user's module.
- Arguments fixed by ``concrete_args``, optional arguments left at their defaults (timm's
  ``forward(x, attn_mask=None, is_causal=False)``: the explainer is called with ``x`` alone) and
  unused arguments disappear from the graph; a model with another tensor input is refused.
- fx's errors become ``TraceError`` naming the submodule, the source line and the fixes.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import operator
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx, nn

from lrpfx import meta
from lrpfx.diagnostics import user_frame
from lrpfx.errors import TraceError
from lrpfx.frontend import static
from lrpfx.frontend.decompositions import DECOMPOSITIONS, decompose
from lrpfx.frontend.hidden_writes import AUGMENTED, refuse_hidden_writes
from lrpfx.frontend.untouched import untouched
from lrpfx.ops.table import OPS

LeafSpec = type[nn.Module] | str


# nodes whose value is not a tensor (sizes, dims, flags): ``n += 1`` rebinds them, as in Python
_NON_TENSOR_METHODS = {"size", "dim", "numel", "item", "tolist", "__len__", "element_size"}


def _is_tensor(node: fx.Node) -> bool:
    """Whether a traced value is (as far as the graph tells) a tensor rather than a Python
    number or a shape."""
    if node.op == "call_method":
        return str(node.target) not in _NON_TENSOR_METHODS
    if node.op == "call_function":
        if node.target in (getattr, len):
            return False
        inputs = [a for a in node.args if isinstance(a, fx.Node)]
        return not inputs or any(_is_tensor(a) for a in inputs)
    return True


class Proxy(fx.Proxy):
    """An fx Proxy whose augmented assignments on tensors are in-place ops, and whose shape is
    a plain ``torch.Size`` when tracing with static shapes (``lrpfx.frontend.static``)."""

    tracer: Tracer

    def _example(self) -> torch.Tensor | None:
        values = self.tracer.values
        value = values.of.get(self.node) if values is not None else None
        return value if isinstance(value, torch.Tensor) else None

    @property
    def shape(self) -> Any:  # type: ignore[override]
        example = self._example()
        return example.shape if example is not None else fx.Proxy.__getattr__(self, "shape")

    @property
    def ndim(self) -> Any:
        example = self._example()
        return example.ndim if example is not None else fx.Proxy.__getattr__(self, "ndim")

    def size(self, *args: Any, **kwargs: Any) -> Any:
        example = self._example()
        if example is not None:
            return example.size(*args, **kwargs)
        return self.tracer.create_proxy("call_method", "size", (self, *args), kwargs)

    def dim(self) -> Any:
        example = self._example()
        if example is not None:
            return example.dim()
        return self.tracer.create_proxy("call_method", "dim", (self,), {})

    def __len__(self) -> int:
        example = self._example()
        return len(example) if example is not None else super().__len__()


def _augmented(name: str, op: Callable[..., Any]) -> Callable[..., Any]:
    plain = getattr(operator, name.replace("__i", "__"))

    def method(self: Proxy, other: Any) -> Any:
        if not _is_tensor(self.node):
            return plain(self, other)
        return self.tracer.create_proxy("call_function", op, (self, other), {})

    return method


for _name, _op in AUGMENTED.items():
    setattr(Proxy, _name, _augmented(_name, _op))


class Tracer(fx.Tracer):
    """``torch.fx`` tracer whose leaves are the standard ``torch.nn`` layers, ``leaf_modules``
    (module classes or qualified names) and the module classes registered with
    ``lrpfx.register``; it records the source line of every node and, when tracing fails, the
    innermost module being traced."""

    def __init__(self, leaf_modules: Sequence[LeafSpec] = (),
                 example_inputs: tuple[Any, ...] | None = None,
                 example_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.record_stack_traces = True
        self.leaf_types = tuple(s for s in leaf_modules if isinstance(s, type))
        self.leaf_names = {s for s in leaf_modules if isinstance(s, str)}
        self.failed_in: tuple[str, nn.Module] | None = None
        self.example_inputs = example_inputs
        self.example_kwargs = example_kwargs
        self.values: static.Values | None = None  # with example inputs: each node's value
        self.computing = False  # computing a value: nothing is traced

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if self.computing:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        if self.example_inputs is None:
            return super().trace(root, concrete_args)
        self.values = static.Values(root, self.example_inputs, self.example_kwargs)
        with static.traced_through_wrapped_functions(), torch.no_grad():
            graph = super().trace(root, concrete_args)
        for node in graph.find_nodes(op="placeholder"):
            value = self.values.of.get(node)
            if isinstance(value, torch.Tensor):
                node.meta[meta.STATIC_SHAPE] = tuple(value.shape)
                node.meta[meta.DTYPE] = value.dtype
        self.values = None
        return graph

    def create_proxy(self, kind: str, target: Any, args: tuple[Any, ...],
                     kwargs: dict[str, Any], name: str | None = None, type_expr: Any = None,
                     proxy_factory_fn: Any = None) -> Any:
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr,
                                     proxy_factory_fn)
        if self.values is None or kind == "output":
            return proxy
        self.computing = True  # the model's attributes and calls as they are, not traced
        try:
            value = self.values.compute(proxy.node)
        finally:
            self.computing = False
        if self.values.constant(proxy.node):  # computed here, never from the input
            self.graph.erase_node(proxy.node)
            return value
        return proxy

    def user_leaf(self, m: nn.Module, module_qualified_name: str) -> bool:
        """A leaf the user asked for: named in ``leaf_modules`` or registered."""
        return (isinstance(m, self.leaf_types) or module_qualified_name in self.leaf_names
                or type(m) in OPS)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self.user_leaf(m, module_qualified_name):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        if self.computing:
            return forward(*args, **kwargs)
        try:
            if type(m) in DECOMPOSITIONS and not self.user_leaf(m, self.path_of_module(m)):
                return decompose(self, m, args, kwargs)  # the canonical ops it computes
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:  # the innermost module sees the error first
                self.failed_in = (self.path_of_module(m), m)
            raise

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return Proxy(node, self)


def trace(
    model: nn.Module,
    concrete_args: dict[str, Any] | None = None,
    leaf_modules: Sequence[LeafSpec] = (),
    *,
    example_inputs: tuple[Any, ...] | None = None,
    stacklevel: int = 3,
    example_kwargs: dict[str, Any] | None = None,
    several: bool = False,
) -> fx.GraphModule:
    """Trace ``model`` symbolically. The model is only read. With ``example_inputs`` (the
    positional arguments of one call) and ``example_kwargs`` (its keyword arguments), shapes
    are static: see ``lrpfx.frontend.static``. ``several``: the model may keep more than one
    tensor input (the explained one is chosen later, ``lrpfx.frontend.inputs``).

    A warning about forward hooks of leaf modules goes to the frame ``stacklevel`` frames up
    from ``trace`` (as ``warnings.warn`` counts; the default: the caller of trace's caller).

    Raises:
        TraceError: the model cannot be traced, or takes more than one tensor input; the
            message carries the fx error, where it happened and the fixes.
        UnsupportedOperationError: an in-place write would be seen through another name.
    """
    if example_kwargs and example_inputs is None:
        example_inputs = ()
    tracer = Tracer(leaf_modules, example_inputs, example_kwargs)
    if tracer.is_leaf_module(model, ""):  # a bare nn layer: trace it as a one-layer network
        model = nn.Sequential(model)
    given = 1 if example_inputs is None else max(len(example_inputs), 0 if example_kwargs else 1)
    concrete_args = {**_defaults(model, given, set(example_kwargs or ())),
                     **(concrete_args or {})}
    with untouched(model):  # fx's tensor constants: on the model until the GraphModule is made
        try:
            graph = tracer.trace(model, concrete_args or None)
        except Exception as error:  # fx raises many types: TraceError, TypeError, ...
            raise TraceError(_trace_failure(model, tracer, error)) from error
        _drop_fixed_inputs(graph, model, several)
        modules = dict(model.named_modules())
        refuse_hidden_writes(graph, modules)
        _warn_leaf_hooks(graph, modules, stacklevel + 1)
        _warn_root_hooks(model, stacklevel + 1)
        gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    for target in {str(n.target) for n in graph.nodes if n.op == "call_module"}:
        if tracer.user_leaf(modules[target], target):
            gm.set_submodule(target, _alias_copy(modules[target]))
    return gm


def _trace_failure(model: nn.Module, tracer: Tracer, error: Exception) -> str:
    """The message of a ``TraceError``: what fx said, where, and what to do."""
    name = type(model).__name__
    where = f"{name}.forward"
    leaf = ""
    if tracer.failed_in is not None and tracer.failed_in[0]:
        path, module = tracer.failed_in
        cls = type(module).__name__
        where = f"submodule {path!r} ({cls})"
        leaf = (f"\n  - keep {path!r} whole: leaf_modules=[{cls}] or leaf_modules=[{path!r}], "
                f"and register how relevance passes it: @lrpfx.register({cls}, kind=..., "
                "rules=(...))")
    line = user_frame(error)
    at = f"  at {line}\n" if line else ""
    return (
        f"torch.fx could not trace {name}: in {where}: {type(error).__name__}: {error}\n"
        f"{at}Fixes:{leaf}\n"
        "  - Python control flow on another argument of forward (a flag, an optional tensor): "
        "fix it with concrete_args={'flag': False}\n"
        "  - control flow on the values of the input, item assignment (x[i] = v): write it with "
        "tensor ops (torch.where, torch.cat), or move it into a submodule kept whole "
        "(leaf_modules=[...])\n"
        "  see https://pytorch.org/docs/stable/fx.html#limitations-of-symbolic-tracing"
    )


_PLAIN = (type(None), bool, int, float, str)


def _defaults(model: nn.Module, given: int, names: set[str] | None = None) -> dict[str, Any]:
    """The optional arguments of ``model.forward`` after the ``given`` first and not among the
    keyword arguments ``names``, at their plain defaults (None, a flag, a number, a string):
    the explainer never passes them, so they are fixed as ``concrete_args`` would fix them,
    instead of traced as inputs."""
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # a forward without a signature: nothing to fix
        return {}
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name: p.default for p in parameters[given:]
            if p.kind in kinds and isinstance(p.default, _PLAIN) and p.name not in (names or ())}


def _drop_fixed_inputs(graph: fx.Graph, model: nn.Module, several: bool = False) -> None:
    """Remove the placeholders that do not reach the output (arguments fixed by
    ``concrete_args`` with their guards, unused arguments); refuse several tensor inputs
    unless ``several``."""
    output = next(n for n in graph.nodes if n.op == "output")
    live: set[fx.Node] = set()
    stack = [output]
    while stack:
        node = stack.pop()
        if node not in live:
            live.add(node)
            stack.extend(node.all_input_nodes)
    dead: list[fx.Node] = []
    for node in graph.nodes:
        if node.op == "placeholder" and node not in live or any(a in dead for a in
                                                                 node.all_input_nodes):
            dead.append(node)
    for node in reversed(dead):
        graph.erase_node(node)
    inputs = [n.name for n in graph.nodes if n.op == "placeholder"]
    if len(inputs) > 1 and not several:
        raise TraceError(
            f"lrpfx explains models with one tensor input; {type(model).__name__}.forward "
            f"takes {len(inputs)}: {', '.join(inputs)}. Fix the others with concrete_args="
            f"{{{', '.join(repr(n) + ': ...' for n in inputs[1:])}}}, or pass them all: "
            f"example_inputs={{{', '.join(repr(n) + ': ...' for n in inputs)}}} and name the "
            "one to explain with explain=..., or wrap the model in a module whose forward takes "
            "one tensor"
        )


_FORWARD_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
                  "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")


def _parameter_hook(hook: object) -> bool:
    """Hooks that recompute a parameter attribute before each forward (pruning, weight norm):
    lrpfx reads the attribute they keep up to date, so they change nothing here."""
    from torch.nn.utils.prune import BasePruningMethod
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    kinds = (BasePruningMethod, WeightNorm, SpectralNorm)
    return isinstance(hook, kinds) or isinstance(getattr(hook, "__self__", None), kinds)


def _warn_leaf_hooks(graph: fx.Graph, modules: dict[str, nn.Module], stacklevel: int) -> None:
    """Warn that forward hooks of leaf modules are not run: the program calls no layer of the
    user's (tracing runs the hooks of the other modules, on symbolic values, like fx)."""
    hooked = sorted({
        str(n.target) for n in graph.nodes if n.op == "call_module"
        and any(not _parameter_hook(h) for d in ("_forward_hooks", "_forward_pre_hooks")
                for h in getattr(modules[str(n.target)], d).values())
    })
    if hooked:
        names = ", ".join(repr(h) for h in hooked[:3]) + (
            f" and {len(hooked) - 3} more" if hooked[3:] else "")
        warnings.warn(
            f"the explainer does not run forward hooks of layers, and these have some: {names}. "
            "A hook that only observes is fine; one that changes a layer's input or output is "
            "not part of the explanation (build its effect into the model instead).",
            stacklevel=stacklevel,
        )


def _warn_root_hooks(model: nn.Module, stacklevel: int) -> None:
    """Warn that forward (pre-)hooks of the model itself, and global ones
    (``register_module_forward_hook``), are not run: fx traces ``forward``, not ``__call__``."""
    from torch.nn.modules import module as torch_module

    kinds = {"forward pre-hook": [model._forward_pre_hooks,
                                  torch_module._global_forward_pre_hooks],
             "forward hook": [model._forward_hooks, torch_module._global_forward_hooks]}
    found = [f"{sum(len(h) for h in hooks)} {kind}(s)" for kind, hooks in kinds.items()
             if any(not _parameter_hook(h) for d in hooks for h in d.values())]
    if found:
        warnings.warn(
            f"the explainer does not run forward hooks of the model itself "
            f"({type(model).__name__}) or global module hooks, and there are {' and '.join(found)}."
            " A hook that only observes is fine; one that changes the model's input or output "
            "is not part of the explanation: build its effect into forward (or a wrapper "
            "module's forward) and compile that.",
            stacklevel=stacklevel,
        )


def _alias_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters and buffers are new tensors sharing storage with
    the original's, without forward hooks: the program owns it, and nothing of the user's is
    reached or called through it."""
    memo: dict[int, Any] = {}
    for t in itertools.chain(module.parameters(), module.buffers()):
        alias = t.detach()
        memo[id(t)] = nn.Parameter(alias, t.requires_grad) if isinstance(t, nn.Parameter) else alias
    clone = copy.deepcopy(module, memo)
    for m in clone.modules():
        for hooks in _FORWARD_HOOKS:
            if hasattr(m, hooks):
                setattr(m, hooks, type(getattr(m, hooks))())
    return clone
