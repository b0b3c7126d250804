"""The front end: a model becomes the canonical graph every later stage works on.

The seam: a front end hands the passes a canonical ``fx.GraphModule`` whose nodes carry, in
``node.meta``, ``lrpfx.path`` (the qualified name of the module a node came from),
``lrpfx.module_type`` (its class), ``lrpfx.origin`` (the spelling the user wrote:
``nn.Conv2d``, ``torch.relu``) and ``stack_trace`` (where the user wrote it). Nothing after the
seam knows which front end ran. Today there is one, symbolic tracing (``lrpfx.frontend.fx``);
a ``torch.export`` front end comes next and hands over the same graph.

``canonical`` is the one front half shared by ``lrpfx.compile`` and ``lrpfx.patterns.fit``,
so patterns are fitted on exactly the graph that is explained: the model's eval-mode copy when
it is in training mode (with a warning), traced, then ``CANONIZE``d (one spelling per op,
re-indexings included; fused attention written out; values computed from constants alone
evaluated once; BatchNorms folded). The user's model is only read. ``compile`` calls
``eval_mode`` first itself, to record the version counters of the model it explains.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any, Literal

from torch import fx, nn

from lrpfx.errors import ExampleInputsNeededError, TraceError
from lrpfx.frontend.export import export
from lrpfx.frontend.fx import LeafSpec, trace
from lrpfx.passes.expand import expand
from lrpfx.passes.fold_batchnorm import fold_batchnorm
from lrpfx.passes.fold_constants import fold_constants
from lrpfx.passes.normalize import normalize

CANONIZE = (normalize, expand, fold_constants, fold_batchnorm)
Frontend = Literal["auto", "fx", "export"]

# the training-mode warning of each caller: ``{name}`` the model's class, ``{which}`` the modules
COMPILE_WARNING = (
    "{name} is in training mode ({which}); lrpfx explains a copy of it in eval mode (BatchNorm "
    "running statistics, no dropout). Call model.eval() first to silence this."
)
PATTERNS_WARNING = (
    "{name} is in training mode; patterns are fitted on a copy of it in eval mode (BatchNorm "
    "running statistics, no dropout), as lrpfx.compile explains it. Call model.eval() first to "
    "silence this."
)

__all__ = ["CANONIZE", "COMPILE_WARNING", "PATTERNS_WARNING", "Frontend", "LeafSpec", "canonical",
           "eval_mode"]


def eval_mode(model: nn.Module, training_warning: str = COMPILE_WARNING,
              stacklevel: int = 2) -> nn.Module:
    """``model`` itself when all its modules are in eval mode; else, with ``training_warning``
    (a format string with ``{name}`` and ``{which}``), a copy of it in eval mode. ``stacklevel``
    counts from ``eval_mode`` as ``warnings.warn`` counts."""
    training = [name or "(the model itself)" for name, m in model.named_modules() if m.training]
    if not training:
        return model
    which = ", ".join(training[:3]) + (f" and {len(training) - 3} more" if training[3:] else "")
    warnings.warn(training_warning.format(name=type(model).__name__, which=which),
                  stacklevel=stacklevel)
    return copy.deepcopy(model).eval()  # the user's model keeps its flag


def canonical(
    model: nn.Module,
    leaf_modules: Sequence[LeafSpec] = (),
    concrete_args: dict[str, Any] | None = None,
    *,
    example_inputs: tuple[Any, ...] | None = None,
    training_warning: str = COMPILE_WARNING,
    warn_stacklevel: int = 2,
    example_kwargs: dict[str, Any] | None = None,
    several: bool = False,
    frontend: Frontend = "auto",
) -> fx.GraphModule:
    """The canonical graph of ``model`` with eval semantics (see the module docstring).

    Args:
        model: the model; only read. When any of its modules is in training mode, its copy in
            eval mode is traced instead, with ``training_warning`` (``eval_mode``).
        leaf_modules, concrete_args: as given to ``lrpfx.compile``.
        example_inputs: the arguments of one call of ``model``: shapes become static
            (``lrpfx.frontend.static``).
        example_kwargs: its keyword arguments by name, likewise.
        several: the model may keep several tensor inputs (``lrpfx.frontend.inputs``).
        frontend: ``"fx"`` (symbolic tracing), ``"export"`` (``torch.export``, which needs
            example inputs) or ``"auto"``: fx where it traces, else export.
        training_warning: the warning's text, a format string with ``{name}`` and ``{which}``.
        warn_stacklevel: where warnings point, counted from ``canonical`` as ``warnings.warn``
            counts (2: the caller of ``canonical``).
    """
    model = eval_mode(model, training_warning, warn_stacklevel + 1)
    given = example_inputs is not None or bool(example_kwargs)
    if frontend not in ("auto", "fx", "export"):
        raise ValueError(f"frontend={frontend!r}; use 'auto', 'fx' or 'export'")
    if frontend == "export" and not given:
        raise ExampleInputsNeededError(
            ["the torch.export front end runs the model on example inputs"],
            "Fix: pass example_inputs=x, a tuple of the model's arguments or a dict of its "
            "keyword arguments")
    if frontend == "export":
        gm = export(model, example_inputs or (), example_kwargs or {})
    else:
        try:
            gm = trace(model, concrete_args, leaf_modules, example_inputs=example_inputs,
                       stacklevel=warn_stacklevel + 1, example_kwargs=example_kwargs,
                       several=several)
        except TraceError as error:
            if frontend == "fx" or concrete_args or leaf_modules:
                raise
            if not given:
                raise TraceError(f"{error}\n  - or pass example_inputs (a tensor, a tuple of "
                                 "the model's arguments or a dict of its keyword arguments): "
                                 "lrpfx then captures the model with torch.export"
                                 ) from error.__cause__  # fx's own error, as trace chains it
            gm = export(model, example_inputs or (), example_kwargs or {})
    for canonize in CANONIZE:
        gm = canonize(gm)
    return gm
