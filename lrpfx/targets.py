"""What is explained: the relevance put on the model output before it is propagated.

``explainer(x, target=t, output_relevance=...)`` takes

- nothing: the **target logit** ``R_out = output · one_hot(t)`` (``t=None``: each sample's
  argmax), so the input relevance sums to about that logit (the default). An output with
  positions after the classes (``(N, C, H, W)``, a segmentation map) is explained at every
  position: for class ``t``, or with ``t=None`` for each position's own argmax class;
- a tensor shaped like the output: used as it is;
- a callable ``(output, target) -> tensor``, evaluated inside the program on the real output:
  :func:`logit`, :func:`one_hot` (relevance 1 on the target, so heatmaps of different samples
  share a scale), :class:`Contrast` (the target logit against another class's),
  :class:`Region` (a class's logits summed over a pixel mask of a segmentation output),
  :class:`Unit` (one output unit: regression, any output), or your own;
- for a model returning a dict / tuple / list of tensors: :class:`Select` ``(key, inner)``,
  which explains one element by ``inner`` (by default the target logit) and gives the others
  zero relevance: ``Select("out", Region(mask, 15))`` for torchvision's segmentation models;
  or a structure of tensors of the output's form.

A list of targets or of seeds (``target=[3, 5]``, ``output_relevance=[Region(m, 1), Unit(0)]``)
explains each in one call, the relevance getting a leading target dimension (``lrpfx.several``).

The seeds made here check themselves against the model output before the program runs
(``check``: a mask of the wrong shape, a class or a unit out of range, a missing key are
``ValueError``/``TypeError`` naming the fix).

LRP is linear in the output relevance (each rule divides it by a ``z`` of the forward pass), so
``Contrast(b)`` with target ``a`` gives exactly ``R(a) − R(b)``: evidence for ``a`` rather than
``b`` in one pass. A relevance filter (``lrpfx.filters``) breaks that linearity.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

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


def _refuse_target(seed: str, target: Any) -> None:
    if target is not None:
        raise ValueError(f"{seed} says what is explained; pass no target with it (got "
                         f"target={target!r})")


def _check_class(cls: Any, classes: int, seed: str) -> None:
    if isinstance(cls, bool) or not isinstance(cls, int):
        raise TypeError(f"{seed}: cls must be an int (a class index), got {type(cls).__name__}")
    if not 0 <= cls < classes:
        raise ValueError(f"{seed}: class {cls} is out of range: the model output has {classes} "
                         f"classes along dimension 1, valid classes are 0 to {classes - 1}")


@dataclass(frozen=True, eq=False)
class Region:
    """The logits of class ``cls`` summed over the pixels of ``mask`` (segmentation):
    ``R_out[n, cls, p] = output[n, cls, p]`` for the positions ``p`` in the mask of sample
    ``n``, zero elsewhere, so the input relevance sums to about that region's summed logit.

    ``mask``: a bool tensor shaped like the output's positions, ``(H, W)`` for every sample or
    ``(N, H, W)`` one per sample (for an ``(N, C, H, W)`` output; likewise ``(L,)`` or
    ``(D, H, W)``); None: the positions predicted as ``cls`` (each position's argmax class is
    ``cls``), as L-CRP's segmentation seed.
    """

    mask: torch.Tensor | None
    cls: int

    def __call__(self, output: torch.Tensor, target: Target) -> torch.Tensor:
        if self.mask is None:
            mask = output.argmax(1) == self.cls
        else:
            mask = self.mask.to(output.device).expand((output.shape[0],) + output.shape[2:])
        channel = torch.arange(output.shape[1], device=output.device) == self.cls
        keep = mask.unsqueeze(1) & channel.reshape((1, -1) + (1,) * (output.dim() - 2))
        return torch.where(keep, output, torch.zeros((), dtype=output.dtype,
                                                     device=output.device))

    def __repr__(self) -> str:
        if not isinstance(self.mask, torch.Tensor):
            return f"Region(mask={self.mask!r}, cls={self.cls!r})"
        return (f"Region(mask=<{tuple(self.mask.shape)} {self.mask.dtype}, "
                f"{int(self.mask.count_nonzero())} set>, cls={self.cls!r})")

    def check(self, shape: torch.Size, batch: int, target: Any) -> None:
        """Refuse, naming the fix, what does not fit an output of ``shape`` for a batch of
        ``batch`` samples."""
        _refuse_target("Region", target)
        if len(shape) < 3:
            raise ValueError(f"Region needs an output with positions after the classes, "
                             f"(N, C, H, W), but the model output has shape {tuple(shape)}; "
                             "use target= or Unit(index) instead")
        _check_class(self.cls, shape[1], "Region")
        if self.mask is None:
            return
        if not isinstance(self.mask, torch.Tensor) or self.mask.dtype != torch.bool:
            got = self.mask.dtype if isinstance(self.mask, torch.Tensor) else type(self.mask)
            raise TypeError(f"Region: mask must be a bool tensor, got {got}; e.g. "
                            "mask = labels == cls")
        positions = tuple(shape[2:])
        if tuple(self.mask.shape) not in (positions, (batch,) + positions):
            raise ValueError(f"Region: mask has shape {tuple(self.mask.shape)} but the model "
                             f"output has shape {tuple(shape)}: give a mask of shape "
                             f"{positions} (every sample) or {(batch,) + positions} (one per "
                             "sample)")


@dataclass(frozen=True)
class Unit:
    """One output unit of each sample: ``R_out[n][index] = output[n][index]``, zero
    elsewhere (regression, a single-logit model, any output unit).

    ``index``: an int or a tuple of ints into the per-sample output (``Unit(0)`` for an
    ``(N, 1)`` regression output, ``Unit((3, 10, 12))`` for class 3 at pixel (10, 12) of an
    ``(N, C, H, W)`` output); a shorter index takes the whole slice, ``Unit(())`` every unit.
    """

    index: int | tuple[int, ...]

    def _where(self) -> tuple[Any, ...]:
        return (slice(None),) + ((self.index,) if isinstance(self.index, int) else
                                 tuple(self.index))

    def __call__(self, output: torch.Tensor, target: Target) -> torch.Tensor:
        where = self._where()
        relevance = torch.zeros_like(output)
        relevance[where] = output[where]
        return relevance

    def check(self, shape: torch.Size, batch: int, target: Any) -> None:
        """Refuse an index that does not fit the per-sample output ``shape[1:]``."""
        _refuse_target("Unit", target)
        index = (self.index,) if isinstance(self.index, int) else self.index
        if not isinstance(index, tuple) or any(isinstance(i, bool) or not isinstance(i, int)
                                               for i in index):
            raise TypeError(f"Unit: index must be an int or a tuple of ints, got {self.index!r}")
        sample = tuple(shape[1:])
        if len(index) > len(sample) or any(not -n <= i < n for i, n in zip(index, sample,
                                                                                strict=False)):
            raise ValueError(f"Unit: index {self.index!r} is out of range for the per-sample "
                             f"output of shape {sample} (the model output has shape "
                             f"{tuple(shape)})")


def _zeros(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return torch.zeros_like(value)
    if isinstance(value, Mapping):
        return {key: _zeros(child) for key, child in value.items()}
    return type(value)(_zeros(child) for child in value)


@dataclass(frozen=True, eq=False)
class Select:
    """One element of a dict / tuple / list output, explained by ``inner``; every other
    element gets zero relevance.

    ``key``: a dict key or a sequence index. ``inner``: a seed of that element (``Region``,
    ``Unit``, ``Contrast``, ``one_hot``, another ``Select`` for a nested output...), a tensor
    shaped like it, or None for the target logit (``target=`` applies to that element).
    """

    key: Any
    inner: Seed | torch.Tensor | None = None

    def __call__(self, output: Any, target: Target) -> Any:
        picked = output[self.key]
        if self.inner is None:
            mine = logit(picked, target)
        elif isinstance(self.inner, torch.Tensor):
            mine = self.inner
        else:
            mine = self.inner(picked, target)
        if isinstance(output, Mapping):
            return {k: mine if k == self.key else _zeros(v) for k, v in output.items()}
        key = self.key % len(output)
        return type(output)(mine if i == key else _zeros(v) for i, v in enumerate(output))


# targets for sequences (a language model's next token): lrpfx.language.targets
from lrpfx.language.targets import NextToken as NextToken  # noqa: E402
