"""Numbers from curves and maps: the area under a perturbation curve, correlations, a one-window
SSIM, the bootstrap interval of a mean and the paired sign-flip test. Plain torch, float64."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def auc(curves: torch.Tensor) -> torch.Tensor:
    """Area under curves ``(..., S + 1)`` sampled at ``S + 1`` equally spaced points of ``[0, 1]``
    (the fraction of patches removed): the trapezoidal rule, so a constant curve ``c`` has area
    ``c``."""
    steps = curves.shape[-1] - 1
    if steps < 1:
        raise ValueError("a curve needs at least two points (one perturbation step)")
    inner = curves[..., 1:-1].sum(-1)
    return (inner + (curves[..., 0] + curves[..., -1]) / 2) / steps


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation along the last dimension; NaN where either side is constant."""
    a = a.double() - a.double().mean(-1, keepdim=True)
    b = b.double() - b.double().mean(-1, keepdim=True)
    denominator = a.norm(dim=-1) * b.norm(dim=-1)
    value = (a * b).sum(-1) / denominator
    return torch.where(denominator > 0, value, torch.full_like(value, float("nan")))


def ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks along the last dimension, ties given their average rank (as Spearman needs)."""
    v = values.double()
    order = v.sort(dim=-1, stable=True).indices
    sorted_v = v.gather(-1, order)
    position = torch.arange(v.shape[-1], dtype=torch.float64).expand_as(v).contiguous()
    # average the positions of equal values: first and last index of each run of ties
    new_run = torch.ones_like(sorted_v, dtype=torch.bool)
    new_run[..., 1:] = sorted_v[..., 1:] != sorted_v[..., :-1]
    run_id = new_run.long().cumsum(-1) - 1
    total = torch.zeros_like(position).scatter_add_(-1, run_id, position)
    count = torch.zeros_like(position).scatter_add_(-1, run_id, torch.ones_like(position))
    average = (total / count.clamp(min=1)).gather(-1, run_id)
    return torch.empty_like(average).scatter_(-1, order, average)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation along the last dimension (Pearson of the tie-averaged ranks)."""
    return pearson(ranks(a), ranks(b))


def ssim(a: torch.Tensor, b: torch.Tensor, c1: float = 1e-4, c2: float = 9e-4) -> torch.Tensor:
    """Structural similarity with one window over the whole map (last dimension), each map first
    scaled by its largest |value| (so a map and twice it are identical): in ``[-1, 1]``."""
    a = a.double() / a.double().abs().amax(-1, keepdim=True).clamp(min=1e-30)
    b = b.double() / b.double().abs().amax(-1, keepdim=True).clamp(min=1e-30)
    mu_a, mu_b = a.mean(-1), b.mean(-1)
    var_a, var_b = a.var(-1, unbiased=False), b.var(-1, unbiased=False)
    cov = ((a - mu_a[..., None]) * (b - mu_b[..., None])).mean(-1)
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)
            / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)))


@dataclass(frozen=True)
class Interval:
    """A mean and its percentile-bootstrap 95 % interval."""

    mean: float
    low: float
    high: float


def bootstrap(values: torch.Tensor, resamples: int = 2000, seed: int = 0,
              level: float = 0.95) -> Interval:
    """The mean of ``values`` (NaNs dropped) and its percentile bootstrap interval."""
    v = values.double().flatten()
    v = v[~v.isnan()]
    if len(v) == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(v), (resamples, len(v)), generator=generator)
    means = v[picks].mean(1)
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64))
    return Interval(float(v.mean()), float(low), float(high))


@dataclass(frozen=True)
class Paired:
    """The paired comparison of two methods on the same samples: the mean difference ``a - b``,
    its bootstrap interval, and the two-sided p-value of the sign-flip test."""

    a: str
    b: str
    difference: Interval
    p: float

    @property
    def significant(self) -> bool:
        """The p-value is below 0.05."""
        return self.p < 0.05

    def verdict(self) -> str:
        """One line: which is better, or "no significant difference"."""
        d = self.difference
        detail = (f"mean difference {d.mean:+.3f} (95% CI {d.low:+.3f} to {d.high:+.3f}), "
                  f"p = {self.p:.3g}")
        if not self.significant:
            return f"no significant difference between {self.a} and {self.b}: {detail}"
        better, worse = (self.a, self.b) if d.mean > 0 else (self.b, self.a)
        return f"{better} is better than {worse}: {detail}"


def paired_test(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str],
                flips: int = 10000, seed: int = 0) -> Paired:
    """Paired sign-flip (randomization) test of mean(a - b) = 0 on the samples where both are
    finite; the p-value counts the observed statistic itself (never 0)."""
    d = (a.double() - b.double()).flatten()
    d = d[~d.isnan()]
    if len(d) == 0:
        return Paired(*names, Interval(float("nan"), float("nan"), float("nan")), 1.0)
    generator = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (flips, len(d)), generator=generator).double() * 2 - 1
    observed = d.mean().abs()
    extreme = ((signs * d).mean(1).abs() >= observed - 1e-15).sum()
    p = float((extreme + 1) / (flips + 1))
    return Paired(*names, bootstrap(d, seed=seed), p)
