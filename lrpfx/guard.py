"""What an explainer accepts, checked before its program runs.

Before the program runs, ``arguments`` refuses, naming the argument and the fix:

- the model itself, when it was written in place since compile (``StaleExplainerError``): the
  tensors derived from it then would be out of date;
- ``x``: not a tensor, not floating point (``TypeError``); another dtype than the explainer's
  (``TypeError``), another device (``ValueError``); no batch dimension, an empty batch, NaN or
  Inf, a rank or a channel/feature count the first layer does not take, or a shape on which
  some later node fails (``ValueError``, naming that node and quoting torch's message).
- ``target``: not an int or an integer tensor (``TypeError``); a tensor that is not 0-d or 1-d
  with one class per sample, an index outside the model's output (``ValueError``); a target
  together with an ``output_relevance`` tensor, which would silently win (``ValueError``).
- ``output_relevance``: not a tensor or a callable, not floating point, another dtype
  (``TypeError``); another device, another shape than the model output, NaN or Inf
  (``ValueError``); a seed of ``lrpfx.targets`` (``Region``, ``Unit``) that does not fit the
  output (its own ``check``). For a dict / tuple / list output, each element it seeds is checked
  so (``lrpfx.outputs.parts``: a ``Select`` is followed to its element; none is refused).

The output shape for ``x`` is found without computing anything: the canonical forward graph is
run on ``meta`` tensors, once per input shape and dtype (cached). Where that cannot be done
(a user module that needs real values), the forward is run for real once per shape instead.

After the program ran, ``lrpfx.diagnose`` checks what it returned.
"""

from __future__ import annotations

import itertools
import numbers
import weakref
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import fx, nn

from lrpfx import diagnostics, meta, outputs
from lrpfx import runtime as rt
from lrpfx.errors import StaleExplainerError
from lrpfx.targets import Contrast

_CONVS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}
_POOLS = {
    F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3, F.avg_pool1d: 1, F.avg_pool2d: 2,
    F.avg_pool3d: 3, F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2,
    F.adaptive_avg_pool3d: 3,
}
_SHAPES_CACHED = 64  # output shapes remembered per explainer
_shapes: weakref.WeakKeyDictionary[fx.GraphModule, dict[Any, outputs.Shapes]] = (
    weakref.WeakKeyDictionary()
)


# -- the program's tensors, unchanged since compile ------------------------------------------------
Versions = dict[int, tuple["weakref.ref[torch.Tensor]", int, str]]


def versions(module: nn.Module, owner: str = "explainer") -> Versions:
    """The version counters of ``module``'s tensors by identity (an alias shares its original's
    counter): an in-place write to any of them afterwards shows up as a new version."""
    named = itertools.chain(module.named_buffers(), module.named_parameters())
    return {id(t): (weakref.ref(t), t._version, f"{owner} tensor {name!r}") for name, t in named
            if not t.is_inference()}  # which has no version counter (and is read-only)


def arguments(program: fx.GraphModule, graph_module: fx.GraphModule, versions: Versions,
              x: Any, target: Any, output_relevance: Any) -> torch.Tensor | None:
    """Check the arguments of ``explainer(x, target, output_relevance=...)`` for the explainer
    of ``program``, generated from the canonical ``graph_module``, whose tensors had
    ``versions`` at compile time; returns the target as a LongTensor of one class per sample
    on ``x``'s device (or None for the argmax)."""
    check_unchanged(versions)
    _check_x(program, graph_module, x)
    pieces = outputs.parts(output_relevance, output_shape(graph_module, x))
    for relevance, shape in pieces:  # the output, or each element a structured one is seeded at
        if relevance is not None:
            check_output_relevance(relevance, x, shape, target)
        elif target is None:
            class_count(shape, "the default target (each sample's argmax)")
    return check_target(target, x, pieces[0][1])


def check_unchanged(recorded: Versions) -> None:
    """Refuse to explain when the model, or a tensor of the program, was written in place since
    compile: the tensors derived then (folded BatchNorm, w⁺, ...) would be out of date.

    A BatchNorm's statistics are updated in training mode without a new version; its
    ``num_batches_tracked`` counter shows the update. Writes through ``.data`` are not seen.
    """
    changed = [(label, t) for ref, version, label in recorded.values()
               if (t := ref()) is not None and t._version != version]
    if changed:
        label = max(changed, key=lambda c: c[1].is_floating_point())[0]  # a weight if any
        raise StaleExplainerError(
            f"the model changed after it was compiled: the {label} was written in place (e.g. "
            "by an optimizer step or a forward pass in training mode), so the tensors derived "
            "from it at compile time (folded BatchNorm, modified weights) are out of date. "
            "Compile the model again.")


# -- x ---------------------------------------------------------------------------------------------
def check_x(program: fx.GraphModule, graph_module: fx.GraphModule, x: Any,
            name: str = "x") -> None:
    """What ``arguments`` checks of ``x``, for another argument ``name`` (``lrpfx.show``'s
    ``example``): a ``TypeError``/``ValueError`` naming it when the model cannot take it."""
    try:
        _check_x(program, graph_module, x)
        output_shape(graph_module, x)
    except (TypeError, ValueError) as error:
        message = str(error)
        raise type(error)(message if name == "x" else f"{name}: {message}") from None


def _tensors(program: fx.GraphModule) -> Iterator[torch.Tensor]:
    yield from program.buffers()
    yield from program.parameters()


def _describe(x: torch.Tensor) -> str:
    return f"shape {tuple(x.shape)}"


def _check_x(program: fx.GraphModule, graph_module: fx.GraphModule, x: Any) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor (a batch of inputs), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}; convert it "
                        "first, e.g. x.float() (and scale images to the model's input range)")
    reference = next((t for t in _tensors(program) if t.is_floating_point()), None)
    if reference is not None and x.device != reference.device:
        raise ValueError(f"x is on {x.device} but the explainer is on {reference.device}; move "
                         f"one of them: x.to('{reference.device}') or "
                         f"explainer.to('{x.device}')")
    if reference is not None and x.dtype != reference.dtype:
        raise TypeError(f"x has dtype {x.dtype} but the explainer computes in {reference.dtype};"
                        f" pass x.to({reference.dtype}) or convert the explainer with "
                        f"explainer.to({x.dtype})")
    if x.dim() == 0:
        raise ValueError("x must be a batch with the batch dimension first, got a 0-d tensor")
    if x.shape[0] == 0:
        raise ValueError(f"x is an empty batch ({_describe(x)}); pass at least one sample")
    _check_static_shape(graph_module, x)
    _check_first_layers(graph_module, x)
    if not rt.finite(x):
        raise ValueError(f"x contains {_count_nonfinite(x)}; lrpfx does not explain non-finite "
                         "inputs: replace them first (torch.nan_to_num) or drop those samples")


def static_shape(graph_module: fx.GraphModule) -> tuple[int, ...] | None:
    """The only input shape of an explainer compiled with ``example_inputs``, else None."""
    for node in graph_module.graph.find_nodes(op="placeholder"):
        if meta.STATIC_SHAPE in node.meta:
            return tuple(node.meta[meta.STATIC_SHAPE])
    return None


def _check_static_shape(graph_module: fx.GraphModule, x: torch.Tensor) -> None:
    """An explainer compiled with ``example_inputs`` takes inputs of that shape only."""
    shape = static_shape(graph_module)
    if shape is not None and tuple(x.shape) != shape:
        raise ValueError(
            f"this explainer was compiled with example_inputs of shape {shape}, and its "
            f"shapes are static; x has shape {tuple(x.shape)}. Compile again with "
            f"example_inputs of that shape (e.g. torch.zeros{tuple(x.shape)})")


def _count_nonfinite(t: torch.Tensor) -> str:
    bad = ~torch.isfinite(t)
    first = tuple(int(i) for i in bad.nonzero()[0])
    return (f"{int(bad.sum())} NaN/Inf value(s) (NaN: {int(torch.isnan(t).sum())}, first at "
            f"index {first})")


class _Expectation(NamedTuple):
    rank: int | None  # exact rank, None when only dims are known
    dims: dict[int, int]  # dimension -> size
    layer: str  # who expects it, for the message


def _first_layers(gm: fx.GraphModule) -> Iterator[_Expectation]:
    """What the layers that read the input first expect of it, through elementwise ops."""
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    frontier, seen = list(placeholder.users), set()
    while frontier:
        node = frontier.pop()
        if node in seen or node.op != "call_function":
            continue
        seen.add(node)
        layer = diagnostics.layer(node)
        if node.target in _CONVS:
            weight = constant(gm, node.args[1])
            groups = node.args[6] if len(node.args) > 6 else 1
            dims = {} if weight is None else {1: weight.shape[1] * int(groups)}  # type: ignore[call-overload]
            yield _Expectation(_CONVS[node.target] + 2, dims, layer)  # type: ignore[index]
        elif node.target in _POOLS:
            yield _Expectation(_POOLS[node.target] + 2, {}, layer)  # type: ignore[index]
        elif node.target is F.linear:
            weight = constant(gm, node.args[1])
            yield _Expectation(None, {} if weight is None else {-1: weight.shape[1]}, layer)
        elif node.target is rt.affine or node.meta.get(meta.KIND) == "activation":
            frontier.extend(node.users)


def constant(gm: fx.GraphModule, node: Any) -> torch.Tensor | None:
    """The tensor a ``get_attr`` node of ``gm`` reads, else None."""
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    value: Any = gm
    for part in str(node.target).split("."):
        value = getattr(value, part)
    return value if isinstance(value, torch.Tensor) else None


def _check_first_layers(gm: fx.GraphModule, x: torch.Tensor) -> None:
    for rank, dims, layer in _first_layers(gm):
        if rank is not None and x.dim() != rank:
            layout = ("N, C, " + ", ".join("DHW"[3 - (rank - 2):])) if rank > 2 else "N, C"
            hint = ("; add the batch dimension: x.unsqueeze(0)" if x.dim() == rank - 1 else "")
            raise ValueError(f"x has {_describe(x)} but the first layer {layer} takes a batch "
                             f"of rank {rank} ({layout}){hint}")
        if rank is None and x.dim() < 2:
            raise ValueError(f"x has {_describe(x)} but the first layer {layer} takes a batch "
                             "(N, ..., features): the batch dimension comes first")
        for dim, size in dims.items():
            if x.shape[dim] != size:
                what = "channels (dimension 1)" if dim == 1 else "features (last dimension)"
                raise ValueError(f"x has {x.shape[dim]} {what}, {_describe(x)}, but the first "
                                 f"layer {layer} takes {size}")


# -- the output shape, without computing -----------------------------------------------------------
class _Forward(fx.Interpreter):
    """Runs the canonical forward graph, on meta tensors when ``on_meta``, remembering the node
    it is at."""

    def __init__(self, gm: fx.GraphModule, on_meta: bool) -> None:
        super().__init__(gm)
        self.on_meta = on_meta
        self.node: fx.Node | None = None

    def run_node(self, n: fx.Node) -> Any:
        self.node = n
        return super().run_node(n)

    def get_attr(self, target: Any, args: Any, kwargs: Any) -> Any:
        value = super().get_attr(target, args, kwargs)
        return value.to("meta") if self.on_meta and isinstance(value, torch.Tensor) else value


def output_shape(gm: fx.GraphModule, x: torch.Tensor, *others: torch.Tensor) -> outputs.Shapes:
    """The shape of the model output for ``x`` (and the ``others`` inputs of a model with
    several, all in the order of its arguments; see the module docstring); for a dict / tuple /
    list output, the shape of each tensor in that form (``lrpfx.outputs``).

    Raises:
        ValueError: ``x`` does not fit the model; names the node that fails and quotes torch.
    """
    inputs = (x, *others)
    key = tuple((tuple(t.shape), t.dtype) for t in inputs)
    cache = _shapes.setdefault(gm, {})
    if key in cache:
        return cache[key]
    try:
        with torch.no_grad():
            out = _Forward(gm, on_meta=True).run(*(t.to("meta") for t in inputs))
    except Exception:  # shape errors, and ops that need real values: ask the real forward
        runner = _Forward(gm, on_meta=False)
        try:
            with torch.no_grad():
                out = runner.run(*inputs)
        except Exception as error:
            where = "" if runner.node is None else f" at {diagnostics.layer(runner.node)}"
            message = str(error).split("\n\nWhile executing")[0]
            what = f"x of {_describe(x)}" if not others else (
                "the inputs of shapes " + ", ".join(str(tuple(t.shape)) for t in inputs))
            raise ValueError(f"{what} do{'es' if not others else ''} not fit the model: it "
                             f"fails{where}: {type(error).__name__}: {message}") from error
    shapes = outputs.shapes(out)  # or a ValueError naming a leaf that is not a tensor
    if len(cache) >= _SHAPES_CACHED:
        cache.clear()
    cache[key] = shapes
    return shapes


# -- target and output relevance -------------------------------------------------------------------
def class_count(shape: torch.Size | None, what: str) -> int | None:
    """The number of classes of an output of ``shape`` (dimension 1), or a ValueError saying
    that ``what`` needs one; None for a shape not known here."""
    if shape is None:  # the form a seed function of a structured output gives: not known here
        return None
    if len(shape) < 2:
        raise ValueError(f"{what} picks a class along dimension 1, but the model output has "
                         f"shape {tuple(shape)}; pass output_relevance= instead")
    return shape[1]


def check_target(target: Any, x: torch.Tensor, shape: torch.Size | None,
                  name: str = "target") -> torch.Tensor | None:
    """``target`` (or ``Contrast``'s ``other``, named by ``name``) as one class per sample."""
    if target is None:
        return None
    n = x.shape[0]
    if isinstance(target, bool) or not isinstance(target, numbers.Integral | torch.Tensor):
        raise TypeError(f"{name} must be an int, an integer tensor with one class per sample, "
                        f"or None (the argmax), got {type(target).__name__}")
    classes = class_count(shape, name)
    if isinstance(target, torch.Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer class indices, got dtype {target.dtype}")
        if target.dim() > 1 or (target.dim() == 1 and target.shape[0] != n):
            raise ValueError(f"{name} has shape {tuple(target.shape)} but x has a batch of {n}; "
                             "give one class per sample (a 1-d tensor of length "
                             f"{n}) or one int for all")
        low, high = (int(target.min()), int(target.max())) if target.numel() else (0, 0)
    else:
        low = high = int(target)  # any size: checked before it becomes an int64
    if classes is not None and (low < 0 or high >= classes):
        raise ValueError(f"{name} {low if low < 0 else high} is out of range: the model output "
                         f"has {classes} classes along dimension 1 (shape {tuple(shape or ())}), "
                         f"valid {'targets' if name == 'target' else 'classes'} are 0 to "
                         f"{classes - 1}")
    if isinstance(target, torch.Tensor):
        return target.to(device=x.device, dtype=torch.long).expand(n)
    return torch.full((n,), int(target), dtype=torch.long, device=x.device)


def check_output_relevance(r: Any, x: torch.Tensor, shape: torch.Size | None,
                            target: Any) -> None:
    if isinstance(r, Contrast):
        check_target(r.other, x, shape, "Contrast's other class")
    if callable(check := getattr(r, "check", None)) and shape is not None:
        check(shape, x.shape[0], target)  # a seed of lrpfx.targets: Region, Unit
    if callable(r) and not isinstance(r, torch.Tensor):
        return  # a seed function, run on the real output, whose result is checked there
    if not isinstance(r, torch.Tensor):
        raise TypeError("output_relevance must be a tensor shaped like the model output or a "
                        f"callable (output, target) -> tensor, got {type(r).__name__}")
    if target is not None:
        raise ValueError("pass either target or an output_relevance tensor, not both: the "
                         "tensor is used as it is, the target would be ignored")
    if not r.is_floating_point():
        raise TypeError(f"output_relevance must be floating point, got dtype {r.dtype}")
    if r.dtype != x.dtype:
        raise TypeError(f"output_relevance has dtype {r.dtype} but x has {x.dtype}; use one")
    if r.device != x.device:
        raise ValueError(f"output_relevance is on {r.device} but x is on {x.device}")
    assert shape is not None  # outputs.parts gives a tensor the shape of the element it seeds
    if r.shape != shape:
        raise ValueError(f"output_relevance has shape {tuple(r.shape)} but the model output for "
                         f"x of {_describe(x)} has shape {tuple(shape)}; give one value per "
                         "output entry")
    if not rt.finite(r):
        raise ValueError(f"output_relevance contains {_count_nonfinite(r)}")
