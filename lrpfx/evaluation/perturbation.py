"""Perturbation on patches: patch relevances, removal orders, and the batched forwards that score
perturbed inputs (MoRF/LeRF curves and faithfulness-correlation subsets alike).

A *patch mask* ``(N, K, P)`` says, for each of ``N`` samples and ``K`` perturbed versions, which
of the ``P`` patches are removed. :func:`score_masks` turns every version into a pixel mask,
imputes, runs the model in chunks of at most ``batch`` inputs and returns the target's logit and
softmax probability for each version."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lrpfx.evaluation.imputers import Imputer


@dataclass(frozen=True)
class Grid:
    """Square patches of side ``patch`` over an ``height × width`` image (the last row and column
    of patches may be cut short)."""

    height: int
    width: int
    patch: int

    @property
    def rows(self) -> int:
        return -(-self.height // self.patch)

    @property
    def cols(self) -> int:
        return -(-self.width // self.patch)

    @property
    def count(self) -> int:
        """The number of patches ``P``."""
        return self.rows * self.cols

    def pool(self, relevance: torch.Tensor) -> torch.Tensor:
        """Relevance ``(N, C, H, W)`` summed over channels and over each patch: ``(N, P)``."""
        r = relevance.sum(1, keepdim=True)
        pad = (0, self.cols * self.patch - self.width, 0, self.rows * self.patch - self.height)
        pooled = F.avg_pool2d(F.pad(r, pad), self.patch) * self.patch**2
        return pooled.flatten(1)

    def pixels(self, patch_mask: torch.Tensor) -> torch.Tensor:
        """Patch masks ``(M, P)`` to pixel masks ``(M, 1, H, W)``."""
        grid = patch_mask.reshape(-1, 1, self.rows, self.cols)
        full = grid.repeat_interleave(self.patch, 2).repeat_interleave(self.patch, 3)
        return full[..., : self.height, : self.width]


def auto_patch(height: int, width: int) -> int:
    """16 pixels (a ViT token at 224²) on images of 64 pixels or more a side, else single pixels
    (the whole pixel grid)."""
    return 16 if min(height, width) >= 64 else 1


def removal_ranks(scores: torch.Tensor, descending: bool,
                  generator: torch.Generator) -> torch.Tensor:
    """The rank at which each patch is removed ``(N, P)`` (0 first): by score, highest first when
    ``descending`` (MoRF), lowest first otherwise (LeRF); ties in random order."""
    n, p = scores.shape
    shuffle = torch.stack([torch.randperm(p, generator=generator) for _ in range(n)])
    shuffled = scores.cpu().double().gather(1, shuffle)
    order = shuffle.gather(1, shuffled.sort(dim=1, descending=descending, stable=True).indices)
    return torch.empty_like(order).scatter_(1, order, torch.arange(p).expand(n, p).contiguous())


def step_counts(patches: int, steps: int) -> torch.Tensor:
    """How many patches are removed at each of the ``steps + 1`` points: ``round(k P / S)``."""
    return torch.round(torch.arange(steps + 1, dtype=torch.float64) * patches / steps).long()


def curve_masks(ranks: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Patch masks ``(N, S + 1, P)`` of a removal order: at step k the first ``counts[k]``."""
    return ranks[:, None, :] < counts[None, :, None].to(ranks.device)


def subset_masks(n: int, patches: int, runs: int, size: int,
                 generator: torch.Generator) -> torch.Tensor:
    """Random subsets of ``size`` patches, ``runs`` per sample: masks ``(N, runs, P)``."""
    keys = torch.rand(n, runs, patches, generator=generator)
    chosen = keys.argsort(-1)[..., :size]
    return torch.zeros(n, runs, patches, dtype=torch.bool).scatter_(-1, chosen, True)


Advance = Callable[[int], None]


def score_masks(model: nn.Module, x: torch.Tensor, target: torch.Tensor, masks: torch.Tensor,
                grid: Grid, imputer: Imputer, batch: int,
                advance: Advance | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The target logit and softmax probability ``(N, K)`` for every perturbed version of
    ``masks`` ``(N, K, P)``. Forwards hold at most ``batch`` inputs (at least ``K``): all
    versions of ``max(1, batch // K)`` samples at once."""
    n, k, _ = masks.shape
    per_forward = max(1, batch // k)
    logits, probs = [], []
    with torch.no_grad():
        for start in range(0, n, per_forward):
            xs, ts = x[start : start + per_forward], target[start : start + per_forward]
            m = len(xs)
            pixel = grid.pixels(masks[start : start + m].reshape(m * k, -1).to(x.device))
            images = imputer(xs.repeat_interleave(k, 0), pixel)
            out = model(images)
            index = ts.repeat_interleave(k).reshape(-1, 1)
            logits.append(out.gather(1, index).reshape(m, k))
            probs.append(out.softmax(1).gather(1, index).reshape(m, k))
            if advance is not None:
                advance(m)
    return torch.cat(logits).double().cpu(), torch.cat(probs).double().cpu()
