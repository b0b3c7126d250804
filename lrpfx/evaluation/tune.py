"""``lrpfx tune``: choose the rule of each layer group by measurement. The conv/dense layers, in
execution order, form groups by depth: the first layer alone, then the others cut into equal
runs. Each group gets one rule from a grid of ε and γ (and zᴮ/flat for the first layer); a
coordinate search (every group in turn, two sweeps) maximizes the mean ABPC on a tuning subset,
and the winner is checked against the presets on held-out samples. The result prints as code."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lrpfx import composites, meta, rules
from lrpfx.compiler import compile as lrpfx_compile
from lrpfx.composites import Position
from lrpfx.composites.matchers import LAYER_KINDS
from lrpfx.evaluation.evaluate import evaluate
from lrpfx.evaluation.results import Evaluation

GRID: tuple[rules.Rule, ...] = (
    rules.Epsilon(1e-6), rules.Epsilon(0.25, scale="std"), rules.Gamma(0.1), rules.Gamma(0.25),
    rules.Gamma(1.0), rules.ZPlus())


def layer_count(model: nn.Module) -> int:
    """How many conv and dense layers the model computes (call sites, in execution order)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = lrpfx_compile(model, "epsilon").graph_module.graph
    return sum(node.meta.get(meta.KIND) in LAYER_KINDS for node in graph.nodes)


def groups(layers: int, count: int = 3) -> list[tuple[int, int | None]]:
    """Position ranges: ``(0, 1)`` for the first layer, the rest in ``count - 1`` runs of
    nearly equal length (fewer when there are fewer layers); the last one open-ended."""
    rest = layers - 1
    parts = max(1, min(count - 1, rest))
    bounds = [1 + round(k * rest / parts) for k in range(parts + 1)] if rest else [1]
    ranges: list[tuple[int, int | None]] = [(0, 1)]
    ranges += [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    return ranges[:-1] + [(ranges[-1][0], None)]


def candidates(group: int, bounds: tuple[float, float]) -> tuple[rules.Rule, ...]:
    """The grid of a group; the first layer may also take zᴮ (the data's range) or flat."""
    return GRID + ((rules.ZBox(*bounds), rules.Flat()) if group == 0 else ())


def composite_of(ranges: list[tuple[int, int | None]], chosen: list[rules.Rule]
                 ) -> composites.Composite:
    """The composite that gives group k rule ``chosen[k]`` (presets' defaults elsewhere)."""
    return composites.Composite([(Position(a, b), rule) for (a, b), rule in
                                 zip(ranges, chosen, strict=True)],
                                defaults=composites.base_entries())


def code(ranges: list[tuple[int, int | None]], chosen: list[rules.Rule]) -> str:
    """The composite as code to paste."""
    lines = ["from lrpfx import composites, rules", "from lrpfx.composites import Position", "",
             "composite = composites.Composite(["]
    lines += [f"    (Position({a}, {b}), rules.{rule!r})," for (a, b), rule in
              zip(ranges, chosen, strict=True)]
    lines += ["], defaults=composites.base_entries())"]
    return "\n".join(lines)


@dataclass
class Tuned:
    """The search: the groups, the chosen rules, every tried setting with its tuning ABPC, and
    the held-out comparison of the winner with the presets."""

    ranges: list[tuple[int, int | None]]
    chosen: list[rules.Rule]
    tried: dict[tuple[int, ...], float]
    held_out: Evaluation

    @property
    def code(self) -> str:
        return code(self.ranges, self.chosen)

    @property
    def composite(self) -> composites.Composite:
        return composite_of(self.ranges, self.chosen)


def _search(objective: Callable[[tuple[int, ...]], float], sizes: list[int],
            sweeps: int) -> tuple[int, ...]:
    """Coordinate ascent over one index per group, starting from all zeros."""
    best = tuple(0 for _ in sizes)
    for _ in range(sweeps):
        for g, size in enumerate(sizes):
            options = [best[:g] + (k,) + best[g + 1:] for k in range(size)]
            best = max(options, key=objective)
    return best


def tune(model: nn.Module, x: torch.Tensor, *, group_count: int = 3, tune_fraction: float = 0.5,
         sweeps: int = 2, presets: tuple[str, ...] = ("epsilon-plus-flat", "epsilon-gamma-box"),
         seed: int = 0, **options: object) -> Tuned:
    """Search a rule per layer group for the best mean ABPC on the first ``tune_fraction`` of
    ``x``, then evaluate the winner and ``presets`` on the rest. ``options`` go to
    :func:`lrpfx.evaluate` (patch, steps, imputer, score, batch)."""
    split = max(1, int(len(x) * tune_fraction))
    tune_x, check_x = x[:split], x[split:]
    bounds = (float(x.min()), float(x.max()))
    ranges = groups(layer_count(model), group_count)
    grids = [candidates(g, bounds) for g in range(len(ranges))]
    tried: dict[tuple[int, ...], float] = {}

    def objective(choice: tuple[int, ...]) -> float:
        if choice not in tried:
            chosen = [grid[k] for grid, k in zip(grids, choice, strict=True)]
            result = evaluate(model, tune_x, [("tuned", composite_of(ranges, chosen))],
                              references=False, faithfulness_runs=2, progress=False, seed=seed,
                              **options)  # type: ignore[arg-type]
            tried[choice] = result.rows[0].interval.mean
        return tried[choice]

    best = _search(objective, [len(g) for g in grids], sweeps)
    chosen = [grid[k] for grid, k in zip(grids, best, strict=True)]
    held_out = evaluate(model, check_x if len(check_x) else tune_x,
                        [("tuned", composite_of(ranges, chosen)), *presets],
                        references=["random"], progress=False, seed=seed,
                        **options)  # type: ignore[arg-type]
    return Tuned(ranges, chosen, tried, held_out)
