"""The rules of the linear layers (conv, dense, BatchNorm, pools): each one or more groups of
modified forwards (``lrpfx.rules.base``), interpreted by one recipe (``lrpfx.ops.linear``)."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Literal

import torch

from lrpfx.rules.base import (
    IDENTITY,
    NEGATIVE,
    ONES,
    POSITIVE,
    SQUARE,
    Group,
    Mod,
    Rule,
    Term,
    gamma_mod,
)


def _bias(mod: Mod, ignore_bias: bool) -> Mod | None:
    return None if ignore_bias else mod


@dataclass(frozen=True)
class Epsilon(Rule):
    """LRP-ε (Bach et al. 2015): ``R_i = x_i sum_j w_ji R_j / (z_j + ε sign0(z_j))``, z = xw + b.

    ``epsilon=0`` is LRP-0. ``ignore_bias=True`` drops the bias from ``z``, which makes the rule
    conservative (sum of R_in equals sum of R_out) up to the stabilizer.

    ``scale="std"`` makes ε relative to the layer's output, as the VGG-16 recipe of the LRP
    overview (Montavon et al. 2019, §10.3; "ε = 0.25 std"): per sample,
    ``ε' = ε · std(z) + 1e-9`` with ``std(z) = sqrt(mean(z²))`` over that sample's ``z``, as in
    the authors' tutorial code. ``Epsilon(0.25, scale="std")`` is that rule.
    """

    epsilon: float = 1e-6
    ignore_bias: bool = False
    scale: Literal["std"] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scale not in (None, "std"):
            raise ValueError(f"Epsilon scale must be None or 'std', got {self.scale!r}")

    @property
    def stabilizer(self) -> float:  # type: ignore[override]
        return self.epsilon

    def groups(self) -> tuple[Group, ...]:
        return (Group((Term("x", IDENTITY, _bias(IDENTITY, self.ignore_bias)),)),)


@dataclass(frozen=True)
class Norm(Rule):
    """Normalize by the contributions: LRP-ε with ε only as a stabilizer, parameters unmodified.

    Used for sums and average pooling (Zennit's ``Norm``); ``ignore_bias`` drops a bias.
    """

    stabilizer: float = 1e-6
    ignore_bias: bool = False

    def groups(self) -> tuple[Group, ...]:
        return (Group((Term("x", IDENTITY, _bias(IDENTITY, self.ignore_bias)),)),)


@dataclass(frozen=True)
class ZPlus(Rule):
    """LRP-z⁺ (Montavon et al. 2017), i.e. αβ with α=1, β=0, negative inputs allowed.

    ``z = x⁺w⁺ + x⁻w⁻ + b⁺``;  ``R_i = x⁺_i sum_j w⁺_ji s_j + x⁻_i sum_j w⁻_ji s_j``, ``s = R / z``.
    """

    stabilizer: float = 1e-6
    ignore_bias: bool = False

    def groups(self) -> tuple[Group, ...]:
        return (_positive_part(self.ignore_bias),)


def _positive_part(ignore_bias: bool) -> Group:
    return Group(
        (Term("x+", POSITIVE, _bias(POSITIVE, ignore_bias)), Term("x-", NEGATIVE, None))
    )


@dataclass(frozen=True)
class AlphaBeta(Rule):
    """LRP-αβ (Bach et al. 2015): ``R = α R⁺ − β R⁻`` with α − β = 1, α, β ≥ 0.

    ``R⁺`` distributes over the positive contributions ``x⁺w⁺ + x⁻w⁻ (+ b⁺)``, ``R⁻`` over the
    negative ones ``x⁺w⁻ + x⁻w⁺ (+ b⁻)``, each with its own denominator.
    """

    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-6
    ignore_bias: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha - self.beta != 1:
            raise ValueError(
                f"AlphaBeta needs alpha, beta >= 0 and alpha - beta == 1, "
                f"got alpha={self.alpha}, beta={self.beta}"
            )

    def groups(self) -> tuple[Group, ...]:
        negative = Group(
            (Term("x+", NEGATIVE, _bias(NEGATIVE, self.ignore_bias)), Term("x-", POSITIVE, None)),
            coefficient=-self.beta,
        )
        positive = _positive_part(self.ignore_bias)
        return (Group(positive.terms, coefficient=self.alpha), negative)


@dataclass(frozen=True)
class Gamma(Rule):
    """Generalized LRP-γ (Montavon et al. 2019; Andéol et al. 2021), as in Zennit.

    Where the plain ``z = xw + b`` is positive, relevance goes along ``x⁺(w + γw⁺) + x⁻(w + γw⁻)
    + (b + γb⁺)``; where it is negative, along ``x⁺(w + γw⁻) + x⁻(w + γw⁺) + (b + γb⁻)``.
    For non-negative inputs this is the original γ-rule.
    """

    gamma: float = 0.25
    stabilizer: float = 1e-6
    ignore_bias: bool = False

    def groups(self) -> tuple[Group, ...]:
        up, down = gamma_mod(self.gamma, True), gamma_mod(self.gamma, False)
        return (
            Group(
                (Term("x+", up, _bias(up, self.ignore_bias)), Term("x-", down, None)),
                where="z>0",
            ),
            Group(
                (Term("x+", down, _bias(down, self.ignore_bias)), Term("x-", up, None)),
                where="z<0",
            ),
        )


@dataclass(frozen=True, eq=False)
class ZBox(Rule):
    """LRP-zᴮ (Montavon et al. 2017) for inputs bounded by ``low <= x <= high``.

    ``z = xw − l w⁺ − h w⁻`` (biases cancel); ``R = x (wᵀs) − l (w⁺ᵀs) − h (w⁻ᵀs)``, ``s = R / z``.
    ``low`` and ``high`` are floats or tensors broadcastable to the input (e.g. ``(1, 3, 1, 1)``).
    """

    low: float | torch.Tensor
    high: float | torch.Tensor
    stabilizer: float = 1e-6
    ignore_bias: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("low", "high"):
            bound = getattr(self, name)
            if isinstance(bound, bool) or not isinstance(bound, numbers.Real | torch.Tensor):
                raise TypeError(f"ZBox {name} must be a number or a tensor, got "
                                f"{type(bound).__name__} {bound!r}")
            if not bool(torch.isfinite(torch.as_tensor(bound)).all()):
                raise ValueError(f"ZBox {name} must be finite, got {bound!r}")
        if not bool((torch.as_tensor(self.low) <= torch.as_tensor(self.high)).all()):
            raise ValueError(f"ZBox needs low <= high, got low={self.low!r}, high={self.high!r}")

    def groups(self) -> tuple[Group, ...]:
        b = self.ignore_bias
        return (
            Group(
                (
                    Term("x", IDENTITY, _bias(IDENTITY, b)),
                    Term("low", POSITIVE, _bias(POSITIVE, b), sign=-1.0),
                    Term("high", NEGATIVE, _bias(NEGATIVE, b), sign=-1.0),
                )
            ),
        )


@dataclass(frozen=True)
class Flat(Rule):
    """Flat rule (Lapuschkin et al. 2019): relevance spread uniformly over the receptive field.

    Input and weights are replaced by ones, the bias dropped: ``R_i = sum_j R_j / n_j``.
    """

    stabilizer: float = 1e-6

    def groups(self) -> tuple[Group, ...]:
        return (Group((Term("ones", ONES, None),)),)


@dataclass(frozen=True)
class WSquare(Rule):
    """LRP-w² (Montavon et al. 2017): ``R_i = sum_j w²_ji R_j / sum_i' w²_ji'`` (bias squared)."""

    stabilizer: float = 1e-6
    ignore_bias: bool = False

    def groups(self) -> tuple[Group, ...]:
        return (Group((Term("ones", SQUARE, _bias(SQUARE, self.ignore_bias)),)),)
