"""What a removed patch is replaced with: the dataset mean, a blurred copy of the image, or
ROAD's noisy linear imputation (Rong et al. 2022). An imputer maps images ``(M, C, H, W)`` and a
removal mask ``(M, 1, H, W)`` (True: removed) to the perturbed images."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

IMPUTERS = ("mean", "blur", "noisy-linear")


@dataclass(frozen=True)
class Mean:
    """Removed pixels take the dataset's per-channel mean (Pahde et al. 2023's baseline)."""

    values: tuple[float, ...]
    name: str = field(default="mean", init=False)

    def __call__(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.values, dtype=x.dtype, device=x.device)
        return torch.where(mask, mean.reshape(1, -1, 1, 1).expand_as(x), x)


@dataclass(frozen=True)
class Blur:
    """Removed pixels take the value of the image blurred by a Gaussian of ``sigma`` pixels
    (kernel ``2·ceil(3σ) + 1``), as in Samek et al. 2017's region perturbation with blur."""

    sigma: float = 2.0
    name: str = field(default="blur", init=False)

    def __call__(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        size = 2 * int(-(-3 * self.sigma // 1)) + 1
        size = min(size, 2 * (min(x.shape[-2:]) // 2) - 1)  # reflect padding needs < the side
        if size < 3:
            return torch.where(mask, x.mean((2, 3), keepdim=True).expand_as(x), x)
        return torch.where(mask, gaussian_blur(x, [size, size], [self.sigma, self.sigma]), x)


# ROAD's neighbour weights: 1/6 for the four direct neighbours, 1/12 for the diagonals
_ROAD_KERNEL = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])


@dataclass(frozen=True)
class NoisyLinear:
    """ROAD's noisy linear imputation (Rong et al. 2022): every removed pixel equals the weighted
    mean of its 8 neighbours (weights 1/6 direct, 1/12 diagonal, renormalized at the border),
    known pixels fixed, plus Gaussian noise of std ``noise``.

    ROAD solves this sparse linear system exactly; here it is solved by ``iterations`` Jacobi
    sweeps started from the known pixels' mean (batched on the device; large holes are smoother
    than the exact solution only in their interior)."""

    noise: float = 0.01
    iterations: int = 100
    seed: int = 0
    name: str = field(default="noisy-linear", init=False)

    def __call__(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        kernel = _ROAD_KERNEL.to(x).reshape(1, 1, 3, 3).repeat(channels, 1, 1, 1)
        weight_sum = F.conv2d(torch.ones_like(x[:1]), kernel, padding=1, groups=channels)
        known = (~mask).to(x.dtype)
        start = (x * known).sum((2, 3), keepdim=True) / known.sum((2, 3), keepdim=True).clamp(
            min=1)
        y = torch.where(mask, start.expand_as(x), x)
        for _ in range(self.iterations):
            neighbours = F.conv2d(y, kernel, padding=1, groups=channels) / weight_sum
            y = torch.where(mask, neighbours, x)
        generator = torch.Generator(device=x.device).manual_seed(self.seed)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return torch.where(mask, y + self.noise * noise, x)


Imputer = Mean | Blur | NoisyLinear


def make_imputer(name: str | Imputer, data_mean: Sequence[float]) -> Imputer:
    """An imputer by name (``"mean"`` uses ``data_mean``), or the one given."""
    if not isinstance(name, str):
        return name
    if name == "mean":
        return Mean(tuple(float(v) for v in data_mean))
    if name == "blur":
        return Blur()
    if name == "noisy-linear":
        return NoisyLinear()
    raise ValueError(f"unknown imputer {name!r}; choose from {', '.join(IMPUTERS)}")
