"""``lrpfx.evaluate``: perturbation curves (MoRF and LeRF on patches), their areas and the area
between them (ABPC/SRG, the headline), faithfulness correlation, conservation error, the share of
negative relevance and the time per explanation, per LRP preset and reference row, with bootstrap
intervals and a paired test between the two best."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from lrpfx.evaluation import data as data_
from lrpfx.evaluation import perturbation as pt
from lrpfx.evaluation.imputers import Imputer, make_imputer
from lrpfx.evaluation.methods import Method, RuleSpec, make_methods
from lrpfx.evaluation.results import Evaluation, MethodResult, Protocol
from lrpfx.evaluation.stats import paired_test, pearson

Score = Literal["logit", "prob"]
SCORES: tuple[Score, ...] = ("logit", "prob")


def _progress(show: bool, console: Console | None) -> Progress | nullcontext[None]:
    if not show:
        return nullcontext()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    return Progress(*columns, console=console or Console(stderr=True), transient=True)


def _explain_all(method: Method, x: torch.Tensor, target: torch.Tensor,
                 batch: int) -> tuple[torch.Tensor, float]:
    """The relevance for every sample and the milliseconds per explanation (a first, untimed
    call on one batch warms up caches)."""
    method.explain(x[:batch], target[:batch])
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    parts = [method.explain(xs, ts) for xs, ts in zip(x.split(batch), target.split(batch),
                                                     strict=True)]
    if x.is_cuda:
        torch.cuda.synchronize()
    return torch.cat(parts).detach(), 1000 * (time.perf_counter() - start) / len(x)


@dataclass(frozen=True)
class _Setup:
    """What every row shares: the model, inputs, targets, unperturbed scores, the grid, the
    imputer, the step counts and the faithfulness subsets with their scores."""

    model: nn.Module
    x: torch.Tensor
    target: torch.Tensor
    base: dict[str, torch.Tensor]
    grid: pt.Grid
    imputer: Imputer
    counts: torch.Tensor
    subsets: torch.Tensor
    subset_drop: dict[str, torch.Tensor]
    batch: int
    seed: int


def _row(method: Method, s: _Setup, score: str, explain_batch: int,
         progress: Any) -> MethodResult:
    relevance, ms = _explain_all(method, s.x, s.target, explain_batch)
    patch_r = s.grid.pool(relevance.double()).cpu()
    generator = torch.Generator().manual_seed(s.seed)
    ranks = [pt.removal_ranks(patch_r, d, generator) for d in (True, False)]
    masks = torch.cat([pt.curve_masks(r, s.counts) for r in ranks], 1)
    task = progress.add_task(method.name, total=len(s.x)) if progress else None
    advance = (lambda k: progress.advance(task, k)) if progress else None  # noqa: E731
    logit, prob = pt.score_masks(s.model, s.x, s.target, masks, s.grid, s.imputer, s.batch,
                                 advance)
    if progress:
        progress.remove_task(task)
    steps = len(s.counts)
    curves = {"logit": logit / s.base["logit"][:, None], "prob": prob / s.base["prob"][:, None]}
    subset_sum = (s.subsets.double() * patch_r[:, None, :]).sum(-1)
    r = relevance.double().flatten(1).cpu()
    logit0 = s.base["logit"]
    return MethodResult(
        method.name, method.reference,
        morf={k: c[:, :steps] for k, c in curves.items()},
        lerf={k: c[:, steps:] for k, c in curves.items()},
        faithfulness=pearson(subset_sum, s.subset_drop[score]),
        conservation=((r.sum(1) - logit0).abs() / logit0.abs()) if method.conserves else None,
        negative=r.clamp(max=0).abs().sum(1) / r.abs().sum(1).clamp(min=1e-30),
        ms=ms, score=score)


def _setup(model: nn.Module, x: torch.Tensor, target: torch.Tensor, imputer: Imputer,
           patch: int, steps: int | None, runs: int, size: int | None, batch: int,
           seed: int, progress: Any) -> _Setup:
    """The shared part: unperturbed scores, grid, step counts, and the faithfulness subsets
    scored once for all rows (the perturbed inputs do not depend on the attribution)."""
    logits = data_.predict(model, x, batch).double().cpu()
    index = target.cpu().reshape(-1, 1)
    base = {"logit": logits.gather(1, index)[:, 0],
            "prob": logits.softmax(1).gather(1, index)[:, 0]}
    grid = pt.Grid(x.shape[2], x.shape[3], patch)
    steps = steps or min(50, grid.count)
    size = size or max(1, round(0.1 * grid.count))
    generator = torch.Generator().manual_seed(seed)
    subsets = pt.subset_masks(len(x), grid.count, runs, min(size, grid.count), generator)
    task = progress.add_task("faithfulness subsets", total=len(x)) if progress else None
    logit, prob = pt.score_masks(model, x, target, subsets, grid, imputer, batch,
                                 (lambda k: progress.advance(task, k)) if progress else None)
    if progress:
        progress.remove_task(task)
    drop = {"logit": base["logit"][:, None] - logit, "prob": base["prob"][:, None] - prob}
    counts = pt.step_counts(grid.count, steps)
    return _Setup(model, x, target, base, grid, imputer, counts, subsets, drop, batch, seed)


def _targets(model: nn.Module, x: torch.Tensor, labels: torch.Tensor | None, target: str | int,
             batch: int) -> torch.Tensor:
    if target == "pred":
        return data_.predict(model, x, batch).argmax(1)
    if target == "label":
        if labels is None:
            raise ValueError("target='label' needs labels: pass data as (x, y)")
        return labels.to(x.device).long()
    return torch.full((len(x),), int(target), device=x.device, dtype=torch.long)


def evaluate(model: nn.Module, data: data_.Data, rules: str | Sequence[RuleSpec] = "all", *,
             references: bool | Sequence[str] = True, target: str | int = "pred",
             patch: int | None = None, steps: int | None = None,
             imputer: str | Imputer = "mean", score: Score = "logit",
             faithfulness_runs: int = 100, faithfulness_size: int | None = None,
             n: int | None = None, seed: int = 0, batch: int = 1024, explain_batch: int = 64,
             maxpool: str = "avg", progress: bool = True,
             console: Console | None = None) -> Evaluation:
    """Evaluate LRP presets (and reference rows) on ``model`` by perturbation.

    Args:
        data: images ``(N, C, H, W)``, ``(x, y)``, or an iterable of batches of either.
        rules: ``"all"`` presets, or a list of preset names, composites, ``(name, spec)``.
        references: the rows random, gradient, input×gradient (True), a list of them, or False.
        target: ``"pred"`` (each sample's predicted class), ``"label"`` or a class index.
        patch: side of the square patches removed together (default 16 on images of 64 px or
            more, else 1: the whole pixel grid).
        steps: points of each curve after the unperturbed one (default min(50, patches)).
        imputer: ``"mean"`` (the data's channel means), ``"blur"``, ``"noisy-linear"`` (ROAD).
        score: the curve that gives the headline, ``"logit"`` or ``"prob"`` (softmax) of the
            target, each normalised by its unperturbed value; both are kept.
        faithfulness_runs, faithfulness_size: random patch subsets per sample (Bhatt et al.
            2020) and their size (default 10 % of the patches).
        batch: inputs per perturbation forward; explain_batch: per explanation call.
        seed: tie-breaking of orders, random subsets, the random row, the bootstrap.

    Returns:
        An :class:`Evaluation`: ``.table()``, ``.save(folder)``, ``.rows``, ``.paired``.
    """
    if score not in SCORES:
        raise ValueError(f"score must be 'logit' or 'prob', got {score!r}")
    model = data_.eval_copy(model)
    x, labels = data_.collect(data, n)
    data_.check_inputs(x)
    device = data_.model_device(model)
    x = x.to(device, data_.model_dtype(model))
    targets = _targets(model, x, labels, target, batch)
    patch = patch or pt.auto_patch(x.shape[2], x.shape[3])
    impute = make_imputer(imputer, x.mean((0, 2, 3)).tolist())
    bounds = (float(x.min()), float(x.max()))
    methods = make_methods(model, rules, bounds, references, seed, maxpool)
    with _progress(progress, console) as bar:
        setup = _setup(model, x, targets, impute, patch, steps, faithfulness_runs,
                       faithfulness_size, batch, seed, bar)
        rows = [_row(m, setup, score, explain_batch, bar) for m in methods]
    rows.sort(key=lambda r: -r.interval.mean if r.interval.mean == r.interval.mean else 1e30)
    paired = (paired_test(rows[0].abpc, rows[1].abpc, (rows[0].name, rows[1].name), seed=seed)
              if len(rows) > 1 else None)
    protocol = Protocol(patch, setup.grid.count, len(setup.counts) - 1, impute.name, score,
                        str(target), len(x), faithfulness_runs, int(setup.subsets[0, 0].sum()),
                        seed, type(model).__name__, data_.model_hash(model), data_.version(),
                        tuple(x.shape[1:]))
    return Evaluation(protocol, rows, paired)
