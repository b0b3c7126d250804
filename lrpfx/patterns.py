"""Signal patterns for PatternNet and PatternAttribution, fitted from data.

Kindermans, Schütt, Alber, Müller, Erhan, Kim, Dähne: "Learning how to explain neural networks:
PatternNet and PatternAttribution", ICLR 2018 (arXiv:1705.05598).

A linear unit ``y = wᵀx + b`` sees ``x = s + d``: a signal ``s = a y`` along the *pattern* ``a``
and a distractor ``d`` that the weights cancel (``wᵀd = 0``). The weights say how to filter the
distractor out, not where the signal lies; the pattern is estimated from data, per output unit
(§4 of the paper), normalized so that ``wᵀa = 1`` (the signal ``a y`` reproduces the output)::

    "linear"    S_a     a  = cov[x, y] / wᵀcov[x, y]                    (wᵀcov[x, y] = var y)
    "positive"  S_a+-   a₊ = cov₊[x, y] / wᵀcov₊[x, y]                  (wᵀcov₊[x, y] = var₊ y)
                        cov₊[x, y] = E₊[xy] − E₊[x] E₊[y]               center="regime" (default)
                                   = E₊[xy] − E₊[x] E[y]                center="all" (as printed)

``E₊`` averages over the samples where the unit is active, ``y > 0`` (``y`` the layer output
with its bias: the pre-activation of the ReLU after it), ``E`` over all samples.

Which formula: the paper prints ``a₊ = (E₊[xy] − E₊[x]E[y]) / (wᵀE₊[xy] − wᵀE₊[x]E[y])``
(§4, two-component estimator), centered on the overall mean ``E[y]``; iNNvestigate
(``ReLUPositivePattern``) and TorchLRP (``fit_patternnet_positive``, with ``y ≥ 0``) compute
exactly that; it is ``center="all"`` here. Its derivation takes ``y = wᵀx`` without a bias, where
the denominator ``E₊[y²] − E₊[y]E[y]`` is ≥ 0. With a bias ``b`` the printed denominator is
``E₊[y'y] − E₊[y']E[y]`` with ``y' = y − b``, which can vanish or turn negative; on the trained
digits CNN (BatchNorm folded into the convs) it does, down to −0.23 in the second conv, whose
patterns then reach 219 (its linear ones: 0.36 at most), and PatternNet outputs grow by 10⁶.
The default ``center="regime"`` conditions every statistic on the regime, as the lrpfx issue
states the positive variant ("conditions on y > 0, uses only the positive regime"): the
covariance of ``x`` and ``y`` among the active samples, whose normalization is the variance
``var₊ y ≥ 0``. Both give ``wᵀa₊ = 1`` and agree for a unit active on every sample.
Units that are never active, or whose denominator is exactly zero, get a zero pattern (as the
references' safe division does).

Every conv and dense node of the canonical graph (``compile``'s own passes, so BatchNorms are
folded and keys agree with the nodes ``compile`` explains) gets a pattern shaped like its weight.
For a convolution each output position is a sample whose input is the patch under the kernel
(zero padding included). Nothing is unfolded: ``sum over samples of g_o · patch`` is the weight
gradient of the layer for the output gradient ``g``, one ``vjp`` of the layer's own call.

The statistics stream, merged exactly across batches in float64, is ``lrpfx.moments``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import rich.progress as rp
import torch
from torch import fx, nn

from lrpfx.compiler import CANONIZE
from lrpfx.errors import LrpfxError
from lrpfx.moments import Center, Moments, batch_moments
from lrpfx.ops.patterns import describe, pattern_keys
from lrpfx.tracing import LeafSpec, trace

PatternKind = Literal["linear", "positive"]
KINDS = ("linear", "positive")
CENTERS = ("regime", "all")
FORMAT = "lrpfx.patterns/1"
TOLERANCE = 1e-3  # |wᵀa − 1| allowed when checking that patterns belong to a weight


class PatternError(LrpfxError):
    """Patterns cannot be fitted from the data given, or do not belong to the model compiled."""


class Patterns:
    """Fitted signal patterns: one per conv/dense layer, shaped like its weight.

    Attributes:
        kind: ``"linear"`` (``S_a``) or ``"positive"`` (``S_a+-``).
        center: how positive patterns were centered: ``"regime"`` or ``"all"`` (see the module).
        tensors: layer key (module path, ``"path#i"`` per call site, or node name) -> pattern.
        counts: layer key -> samples per unit the statistics counted (for ``"positive"``: the
            samples where the unit was active).

    Save with ``torch.save(patterns.state_dict(), f)``, load with
    ``Patterns.from_state_dict(torch.load(f))``.
    """

    def __init__(self, kind: PatternKind, tensors: Mapping[str, torch.Tensor],
                 counts: Mapping[str, torch.Tensor] | None = None,
                 center: Center = "regime") -> None:
        if kind not in KINDS:
            raise ValueError(f"pattern kind must be 'linear' or 'positive', got {kind!r}")
        if center not in CENTERS:
            raise ValueError(f"center must be 'regime' or 'all', got {center!r}")
        self.kind, self.center = kind, center
        self.tensors = dict(tensors)
        self.counts = dict(counts or {})

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def __contains__(self, key: object) -> bool:
        return key in self.tensors

    def __len__(self) -> int:
        return len(self.tensors)

    def keys(self) -> list[str]:
        return list(self.tensors)

    def __repr__(self) -> str:
        return f"Patterns({self.kind!r}, {len(self)} layers)"

    def summary(self) -> str:
        """One line per layer: key, shape, counted samples per unit, units without a pattern."""
        lines = [f"{self.kind} patterns{' (centered on all)' if self.center == 'all' else ''}:"]
        for key, a in self.tensors.items():
            n = self.counts.get(key)
            seen = f", {int(n.min())}..{int(n.max())} samples/unit" if n is not None else ""
            lines.append(f"  {key}: {tuple(a.shape)}{seen}, {self.dead_units(key)} without pattern")
        return "\n".join(lines)

    def dead_units(self, key: str) -> int:
        """Units of layer ``key`` without a pattern (never active, or zero variance)."""
        return int((self.tensors[key].flatten(1).abs().sum(1) == 0).sum())

    # -- persistence -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """A ``torch.save``-able dict (tensors and strings only: loads with weights_only)."""
        return {"format": FORMAT, "kind": self.kind, "center": self.center,
                "patterns": dict(self.tensors), "counts": dict(self.counts)}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> Patterns:
        """The patterns saved by ``state_dict``."""
        if not isinstance(state, Mapping) or state.get("format") != FORMAT:
            found = state.get("format") if isinstance(state, Mapping) else type(state).__name__
            raise PatternError(f"not a patterns state dict (format {found!r}, expected "
                               f"{FORMAT!r}); save with torch.save(patterns.state_dict(), f)")
        return cls(state["kind"], state["patterns"], state.get("counts"),
                   state.get("center", "regime"))

    def save(self, path: str | Path) -> None:
        torch.save(self.state_dict(), path)

    @classmethod
    def load(cls, path: str | Path, map_location: Any = None) -> Patterns:
        return cls.from_state_dict(torch.load(path, map_location=map_location, weights_only=True))

    # -- belonging to a model ----------------------------------------------------------------------
    def problem(self, key: str, weight: torch.Tensor) -> str | None:
        """Why these patterns cannot serve the layer ``key`` with ``weight``, or None."""
        if key not in self.tensors:
            return f"no pattern for layer {key!r}"
        a = self.tensors[key]
        if a.shape != weight.shape:
            return (f"pattern {key!r} has shape {tuple(a.shape)}, the layer's weight "
                    f"{tuple(weight.shape)}")
        a64 = a.detach().to(device=weight.device, dtype=torch.float64)
        wa = (weight.detach().double() * a64).flatten(1).sum(1)
        alive = a64.flatten(1).abs().sum(1) > 0
        if alive.any() and ((wa[alive] - 1).abs().max() > TOLERANCE):
            return (f"pattern {key!r} does not belong to this weight: wᵀa = 1 holds for every "
                    f"unit of a fitted pattern, here wᵀa ranges over "
                    f"[{wa[alive].min():.4g}, {wa[alive].max():.4g}]")
        return None

    def check(self, layers: Iterable[tuple[str, str, torch.Tensor]]) -> None:
        """Raise one ``PatternError`` for all ``(where, key, weight)`` the patterns cannot serve."""
        problems = [f"{where}: {p}" for where, key, weight in layers
                    if (p := self.problem(key, weight)) is not None]
        if problems:
            keys = ", ".join(self.keys()[:8]) + (", ..." if len(self) > 8 else "")
            listing = "\n".join(f"  - {p}" for p in problems)
            raise PatternError(
                f"{len(problems)} layer(s) cannot use these {self.kind!r} patterns:\n{listing}\n"
                f"The patterns were fitted for {len(self)} layers ({keys}) of another model, or "
                "before its weights changed. Fit them on the model you compile: "
                "lrpfx.patterns.fit(model, loader)."
            )


def canonical(model: nn.Module, leaf_modules: Sequence[LeafSpec] = (),
              concrete_args: dict[str, Any] | None = None) -> fx.GraphModule:
    """The canonical graph ``lrpfx.compile`` explains (eval semantics; the model is only read)."""
    if model.training:
        warnings.warn(
            f"{type(model).__name__} is in training mode; patterns are fitted on a copy of it in "
            "eval mode (BatchNorm running statistics, no dropout), as lrpfx.compile explains it. "
            "Call model.eval() first to silence this.",
            stacklevel=3,
        )
        model = copy.deepcopy(model).eval()
    gm = trace(model, concrete_args, leaf_modules)
    for canonize in CANONIZE:
        gm = canonize(gm)
    return gm


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
    gm = canonical(model, leaf_modules, concrete_args)
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
