"""``fit``: the signal pattern of every conv and dense layer, estimated from data.

The model's canonical graph (the one ``lrpfx.compile`` explains) runs once per batch under an
fx ``Interpreter`` that streams each layer's input and output into its ``Moments``
(``lrpfx.patterns.moments``); the patterns come out of the merged statistics. The formulas, and
which one is the default: ``lrpfx.patterns``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import rich.progress as rp
import torch
from torch import fx, nn

from lrpfx.diagnostics import describe
from lrpfx.errors import PatternError
from lrpfx.frontend import PATTERNS_WARNING, LeafSpec, canonical
from lrpfx.ops.patterns import pattern_keys
from lrpfx.patterns.moments import Center, Moments, batch_moments
from lrpfx.patterns.store import CENTERS, KINDS, PatternKind, Patterns


class _ModelFailed(Exception):
    def __init__(self, node: fx.Node, error: Exception) -> None:
        super().__init__(str(error))
        self.node, self.error = node, error


class _Recorder(fx.Interpreter):
    """Runs the canonical graph; each layer's input and output go into its moments as soon as
    they are computed (the Interpreter then frees them)."""

    def __init__(self, gm: fx.GraphModule, keys: Mapping[fx.Node, str], positive: bool) -> None:
        super().__init__(gm)
        self.extra_traceback = False
        self.keys, self.positive = keys, positive
        self.moments: dict[fx.Node, Moments] = {}

    def run_node(self, n: fx.Node) -> Any:
        try:
            value = super().run_node(n)
        except Exception as error:
            raise _ModelFailed(n, error) from error
        if n in self.keys:
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            batch = batch_moments(n.target, args, kwargs, value, self.positive)
            known = self.moments.get(n)
            self.moments[n] = batch if known is None else known.merge(batch)
        return value


def _constant(gm: fx.GraphModule, node: Any) -> torch.Tensor:
    """The value of a ``get_attr`` node."""
    value: Any = gm
    for part in str(node.target).split("."):
        value = getattr(value, part)
    return value.detach()


def _input(batch: Any, index: int) -> torch.Tensor:
    """The model input of a batch: the batch itself, or the first item of a tuple/list."""
    x = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    if not isinstance(x, torch.Tensor):
        raise PatternError(
            f"batch {index} is a {type(batch).__name__}"
            f"{f' of {type(x).__name__}' if x is not batch else ''}: the loader must yield "
            "input tensors or (input, target, ...) tuples, as a DataLoader over a TensorDataset"
        )
    return x


def _progress(loader: Iterable[Any], max_batches: int | None, kind: str,
              enabled: bool) -> tuple[rp.Progress, Any]:
    try:
        total: int | None = len(loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
    bar = rp.Progress(
        rp.TextColumn("fitting [bold]{task.description}[/] patterns"), rp.BarColumn(),
        rp.MofNCompleteColumn(), rp.TextColumn("batches, {task.fields[samples]} samples"),
        rp.TimeElapsedColumn(), rp.TimeRemainingColumn(), disable=not enabled,
    )
    return bar, bar.add_task(kind, total=total, samples=0)


def _run(recorder: _Recorder, x: torch.Tensor, index: int) -> None:
    try:
        recorder.run(x)
    except _ModelFailed as failed:
        first = str(failed.error).strip().splitlines()[0] if str(failed.error).strip() else ""
        raise PatternError(
            f"batch {index}: the model fails on an input of shape {tuple(x.shape)} ({x.dtype}) "
            f"at {describe(failed.node)}: {type(failed.error).__name__}: {first}\n"
            "The loader must yield batches the model takes (inputs, or (input, target) pairs)."
        ) from failed.error


def fit(
    model: nn.Module,
    loader: Iterable[Any],
    kind: PatternKind = "linear",
    max_batches: int | None = None,
    *,
    center: Center = "regime",
    progress: bool = True,
    leaf_modules: Sequence[LeafSpec] = (),
    concrete_args: dict[str, Any] | None = None,
) -> Patterns:
    """Fit the signal pattern of every conv and dense layer of ``model`` on ``loader``.

    Args:
        model: the model, as it will be compiled (it is only read).
        loader: batches of inputs, or ``(input, target, ...)`` tuples (a ``DataLoader``).
        kind: ``"linear"`` (``S_a``, all samples) or ``"positive"`` (``S_a+-``, the samples
            where each unit is active; the paper's choice for PatternAttribution).
        max_batches: stop after this many batches.
        center: for ``"positive"``: ``"regime"`` (the covariance among the active samples) or
            ``"all"`` (the paper's printed formula, centered on the overall mean output; it is
            unstable with biases, see the module docstring).
        progress: show a rich progress bar.
        leaf_modules, concrete_args: as given to ``lrpfx.compile``, so the graphs agree.

    Example:
        >>> patterns = lrpfx.patterns.fit(model, train_loader, kind="positive")
        >>> explainer = lrpfx.compile(model, composites.PatternAttribution(patterns))
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be 'linear' or 'positive', got {kind!r}")
    if center not in CENTERS:
        raise ValueError(f"center must be 'regime' or 'all', got {center!r}")
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be at least 1, got {max_batches}")
    gm = canonical(model, leaf_modules, concrete_args, training_warning=PATTERNS_WARNING,
                   warn_stacklevel=3)
    keys = pattern_keys(gm.graph)
    if not keys:
        raise PatternError(f"{type(model).__name__} has no conv or dense layer with constant "
                           "weights: there is no pattern to fit")
    recorder = _Recorder(gm, keys, kind == "positive")
    device = next((t.device for t in gm.buffers()), None)
    bar, task = _progress(loader, max_batches, kind, progress)
    batches = samples = 0
    with bar, torch.no_grad():
        for index, batch in enumerate(loader):
            if max_batches is not None and index >= max_batches:
                break
            x = _input(batch, index)
            _run(recorder, x if device is None else x.to(device), index)
            batches, samples = batches + 1, samples + (x.shape[0] if x.dim() else 1)
            bar.update(task, advance=1, samples=samples)
    if batches == 0:
        raise PatternError("the loader yielded no batches: patterns are statistics of data, "
                           "give a loader with at least one batch")
    weights = {node: _constant(gm, node.args[1]) for node in keys}
    return Patterns(
        kind,
        {key: recorder.moments[node].pattern(weights[node], center).to(weights[node].dtype)
         for node, key in keys.items()},
        {key: recorder.moments[node].n.round().long() for node, key in keys.items()},
        center,
    )
