"""The model-parameter randomization test (Adebayo et al. 2018, "Sanity Checks for Saliency
Maps"): the layers' weights are re-initialised one after the other from the top (output) layer
down, cumulatively, and after each step the heatmaps are compared with the original ones by
Spearman rank correlation and a one-window SSIM. An explanation that depends on what the model
learned must change; a method whose heatmaps stay similar once every layer is random is flagged.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from rich.table import Table
from torch import nn

from lrpfx import meta
from lrpfx.compiler import compile as lrpfx_compile
from lrpfx.errors import LrpfxError
from lrpfx.evaluation.methods import Method, RuleSpec, make_methods
from lrpfx.evaluation.stats import spearman, ssim


@dataclass(frozen=True)
class SanityRow:
    """One method: the mean similarity to its original heatmaps after each cumulative step
    (``layers[k]`` and every layer above it randomized), and whether it is flagged."""

    name: str
    spearman: list[float]
    ssim: list[float]
    flagged: bool


@dataclass(frozen=True)
class Sanity:
    """The randomization test: the layers in the order randomized and one row per method."""

    layers: list[str]
    rows: list[SanityRow]
    threshold: float

    def table(self) -> Table:
        """Spearman (SSIM) per cumulative step; flagged rows in red."""
        grid = Table(title="model-parameter randomization (Adebayo et al. 2018): similarity to "
                     "the original |heatmaps|, Spearman (SSIM), layers randomized cumulatively "
                     "from the top", title_justify="left")
        grid.add_column("method")
        for k, layer in enumerate(self.layers):
            grid.add_column(("" if k == 0 else "+") + layer, justify="right")
        grid.add_column("verdict")
        for row in self.rows:
            cells = [f"{r:.2f} ({s:.2f})" for r, s in zip(row.spearman, row.ssim, strict=True)]
            verdict = (f"[red]FLAGGED: still {row.spearman[-1]:.2f} with all layers random[/]"
                       if row.flagged else "changes")
            grid.add_row(row.name, *cells, verdict)
        return grid


def layer_order(model: nn.Module) -> list[str]:
    """Modules with their own parameters, in execution order (BatchNorms folded into a layer
    right after it), top (output) layer first."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = lrpfx_compile(model, "epsilon").graph_module.graph
    seen: list[str] = []
    for node in graph.nodes:
        for path in (node.meta.get(meta.PATH), *node.meta.get(meta.FOLDED, ())):
            if path and path not in seen:
                seen.append(path)
    owners = [name for name, m in model.named_modules()
              if any(True for _ in m.parameters(recurse=False))]
    ordered = [p for p in seen if p in owners] + [p for p in owners if p not in seen]
    return ordered[::-1]


def _randomize(module: nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    reset = getattr(module, "reset_parameters", None)
    if reset is None:
        raise ValueError(f"{type(module).__name__} has no reset_parameters(): it cannot be "
                         "randomized")
    reset()  # BatchNorm: also its running statistics


def _maps(method: Method, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The heatmaps as ``(N, H·W)``: |channel sum|, as Adebayo et al.'s rank correlation of
    absolute values and Quantus's MPRT default (a sign flip of the whole map is no change); NaN
    when the method fails."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: vanishing relevance is expected
        try:
            return method.explain(x, target).detach().sum(1).abs().flatten(1).double().cpu()
        except LrpfxError:
            return torch.full((len(x), x[0, 0].numel()), float("nan"), dtype=torch.float64)


def randomization(model: nn.Module, x: torch.Tensor, rules: str | Sequence[RuleSpec] = "all",
                  target: torch.Tensor | None = None,
                  references: Sequence[str] = ("gradient", "input×gradient"),
                  threshold: float = 0.5, seed: int = 0) -> Sanity:
    """Run the cascading randomization on a copy of ``model`` (never the model itself).

    ``target``: the classes explained, kept fixed (default: the predictions of the original
    model). A row is flagged when its mean Spearman correlation with the original heatmaps is
    still ``>= threshold`` after every layer is randomized.
    """
    bounds = (float(x.min()), float(x.max()))
    if target is None:
        with torch.no_grad():
            target = model(x).argmax(1)
    layers = layer_order(model)

    def maps_of(m: nn.Module) -> dict[str, torch.Tensor]:
        methods = make_methods(m, rules, bounds, references, seed)
        return {method.name: _maps(method, x, target) for method in methods}

    original = maps_of(model)
    randomized = copy.deepcopy(model)
    modules = dict(randomized.named_modules())
    steps: list[dict[str, torch.Tensor]] = []
    for k, name in enumerate(layers):
        _randomize(modules[name], seed + k)
        steps.append(maps_of(randomized))
    rows = []
    for name, before in original.items():
        rho = [float(spearman(before, step[name]).nanmean()) for step in steps]
        sim = [float(ssim(before, step[name]).nanmean()) for step in steps]
        rows.append(SanityRow(name, rho, sim, bool(rho[-1] >= threshold)))
    return Sanity(layers, rows, threshold)
