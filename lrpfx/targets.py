"""What is explained: the relevance put on the model output before it is propagated.

``explainer(x, target=t, output_relevance=...)`` takes

- nothing: the **target logit** ``R_out = output · one_hot(t)`` (``t=None``: each sample's
  argmax), so the input relevance sums to about that logit (the default). An output with
  positions after the classes (``(N, C, H, W)``, a segmentation map) is explained at every
  position: for class ``t``, or with ``t=None`` for each position's own argmax class;
- a tensor shaped like the output: used as it is;
- a callable ``(output, target) -> tensor``, evaluated inside the program on the real output:
  :func:`logit`, :func:`one_hot` (relevance 1 on the target, so heatmaps of different samples
  share a scale), :class:`Contrast` (the target logit against another class's), or your own.

LRP is linear in the output relevance (each rule divides it by a ``z`` of the forward pass), so
``Contrast(b)`` with target ``a`` gives exactly ``R(a) − R(b)``: evidence for ``a`` rather than
``b`` in one pass. A relevance filter (``lrpfx.filters``) breaks that linearity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Target = torch.Tensor | None
Seed = Callable[[torch.Tensor, Target], torch.Tensor]


def _index(output: torch.Tensor, target: Target) -> torch.Tensor:
    """``target`` as a gather/scatter index along dimension 1: one class per sample, one per
    sample and position (``(N, H, W)`` for an ``(N, C, H, W)`` output), or None for the argmax
    at each position (for a segmentation map: each pixel's predicted class)."""
    if target is None:
        return output.argmax(1, keepdim=True)
    target = torch.as_tensor(target, device=output.device)
    if target.dim() > 1 and target.dim() == output.dim() - 1:  # a class per position
        return target.unsqueeze(1)
    if target.dim() == 0:
        target = target.expand(output.shape[0])
    shape = (output.shape[0], 1) + tuple(output.shape[2:])
    return target.reshape((-1, 1) + (1,) * (output.dim() - 2)).expand(shape)


def logit(output: torch.Tensor, target: Target) -> torch.Tensor:
    """``output · one_hot(target)``: the target's logit where it is, zero elsewhere."""
    index = _index(output, target)
    return torch.zeros_like(output).scatter(1, index, output.gather(1, index))


def one_hot(output: torch.Tensor, target: Target) -> torch.Tensor:
    """``one_hot(target)``: relevance 1 on the target class, whatever its logit."""
    return torch.zeros_like(output).scatter(1, _index(output, target), 1.0)


@dataclass(frozen=True)
class Contrast:
    """The target logit minus the logit of ``other``: ``z_a e_a − z_b e_b``.

    ``other`` is a class (int or one per sample), or None for each sample's runner-up (the
    highest logit besides the target): "why this class rather than the next best one".
    """

    other: int | torch.Tensor | None = None

    def __call__(self, output: torch.Tensor, target: Target) -> torch.Tensor:
        mine = logit(output, target)
        other = self.other
        if other is None:
            other = output.scatter(1, _index(output, target), float("-inf")).argmax(1)
        return mine - logit(output, torch.as_tensor(other))




# targets for sequences (a language model's next token): lrpfx.language.targets
from lrpfx.language.targets import NextToken as NextToken  # noqa: E402
