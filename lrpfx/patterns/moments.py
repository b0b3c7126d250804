"""Streaming per-unit statistics of a conv/dense layer for pattern fitting (``lrpfx.patterns``).

Per batch and output unit: the count ``n``, the means ``x̄``, ``ȳ`` and the co-moment
``C = Σ (x − x̄)(y − ȳ)`` over the counted samples (in the layer's precision, at least
float32), merged exactly with the pairwise update of Chan, Golub and LeVeque (1979) in float64.
At the end ``cov₊[x, y] = C / n`` and ``E₊[xy] − E₊[x] E[y] = C / n + x̄ (ȳ − E[y])``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

Center = Literal["regime", "all"]


def _col(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """One value per output unit, shaped to broadcast against a weight-shaped ``like``."""
    return v.reshape(-1, *[1] * (like.dim() - 1))


@dataclass(frozen=True)
class Moments:
    """Streaming statistics of one layer, per output unit (float64).

    ``n``, ``mean_y``: counted samples and their mean output, shape ``(out,)``; ``mean_x``,
    ``comoment``: shaped like the weight; ``n_all``, ``mean_y_all``: over every sample.
    """

    n: torch.Tensor
    mean_x: torch.Tensor
    mean_y: torch.Tensor
    comoment: torch.Tensor
    n_all: float
    mean_y_all: torch.Tensor

    def merge(self, other: Moments) -> Moments:
        """The statistics of both sample sets (Chan, Golub, LeVeque 1979)."""
        n = self.n + other.n
        share = other.n / n.clamp(min=1)  # 0 where neither counted a sample
        dx, dy = other.mean_x - self.mean_x, other.mean_y - self.mean_y
        n_all = self.n_all + other.n_all
        return Moments(
            n=n,
            mean_x=self.mean_x + _col(share, dx) * dx,
            mean_y=self.mean_y + share * dy,
            comoment=self.comoment + other.comoment + _col(self.n * share * dy, dx) * dx,
            n_all=n_all,
            mean_y_all=self.mean_y_all + other.n_all / n_all * (other.mean_y_all - self.mean_y_all),
        )

    def pattern(self, weight: torch.Tensor, center: Center = "regime") -> torch.Tensor:
        """``c / wᵀc`` per unit, zero for units without one; ``c = cov₊[x, y]`` (``"regime"``)
        or ``E₊[xy] − E₊[x] E[y]`` (``"all"``)."""
        w = weight.detach().to(self.comoment)
        signal = self.comoment / _col(self.n.clamp(min=1), w)
        if center == "all":
            signal = signal + self.mean_x * _col(self.mean_y - self.mean_y_all, w)
        norm = (w * signal).flatten(1).sum(1)
        alive = (self.n > 0) & (norm != 0)
        return torch.where(_col(alive, w), signal / _col(torch.where(alive, norm, 1.0), w), 0.0)


def batch_moments(
    target: Any, args: Sequence[Any], kwargs: Mapping[str, Any], y: torch.Tensor, positive: bool
) -> Moments:
    """The statistics of one batch of a conv/dense call ``y = target(*args, **kwargs)``.

    For dense layers every leading index is a sample, for convolutions every output position.
    Computed in the layer's precision (at least float32), returned in float64 for merging.
    """
    dtype = torch.promote_types(y.dtype, torch.float32)
    x, weight = args[0].detach().to(dtype), args[1].detach().to(dtype)
    rest, options = tuple(args[3:]), {k: v for k, v in kwargs.items() if k != "bias"}
    pullback = torch.func.vjp(lambda w: target(x, w, None, *rest, **options), weight)[1]
    y = y.detach().to(dtype)
    # (samples, out, positions...): the unit and the positions are the last weight.dim() - 1 dims
    units = y.reshape(-1, *y.shape[y.dim() - weight.dim() + 1 :])
    reduce = [0, *range(2, units.dim())]

    def weight_sum(g: torch.Tensor) -> torch.Tensor:
        """``Σ over samples of g_o · input patch``, shaped like the weight."""
        return pullback(g.reshape(y.shape))[0]

    mask = (units > 0).to(dtype) if positive else torch.ones_like(units)
    n = mask.sum(reduce)
    mean_y = (mask * units).sum(reduce) / n.clamp(min=1)
    n_all = float(units.numel() // units.shape[1])
    return Moments(
        n=n.double(),
        mean_x=(weight_sum(mask) / _col(n.clamp(min=1), weight)).double(),
        mean_y=mean_y.double(),
        comoment=weight_sum(mask * (units - mean_y.reshape(-1, *[1] * (units.dim() - 2)))).double(),
        n_all=n_all,
        mean_y_all=(units.sum(reduce) / n_all).double(),
    )
