"""LRP rules as data.

A rule says how a linear layer ``z = f(x; w, b)`` redistributes the relevance ``R`` of its output
onto its input. Every rule here is one or more *groups*; a group is a sum of *terms*, each term a
forward of the layer with a modified input, weight and bias::

    z_g   = sum_t  sign_t * f(in_t(x); w_t, b_t)
    s_g   = R / stabilize(z_g)               (masked to where the plain z has a sign, if asked)
    R_in  = sum_g coefficient_g * sum_t sign_t * in_t(x) * f_w_t^T(s_g)

with ``stabilize(z, eps) = z + eps * sign0(z)`` and ``sign0(0) = +1`` (Zennit's convention).
The code generator turns these descriptions into explicit tensor code; weight modifications are
evaluated once, at compile time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    from lrpfx.patterns.store import Patterns

Input = Literal["x", "x+", "x-", "ones", "low", "high"]


@dataclass(frozen=True)
class Mod:
    """A named parameter modification, evaluated once at compile time."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor] = field(compare=False, repr=False)

    def __call__(self, param: torch.Tensor) -> torch.Tensor:
        return self.fn(param)


IDENTITY = Mod("", lambda p: p)
POSITIVE = Mod("pos", lambda p: p.clamp(min=0))
NEGATIVE = Mod("neg", lambda p: p.clamp(max=0))
SQUARE = Mod("sq", lambda p: p * p)
ONES = Mod("ones", torch.ones_like)


def gamma_mod(gamma: float, positive: bool) -> Mod:
    """``w + gamma * w+`` (``positive``) or ``w + gamma * w-``."""
    if positive:
        return Mod(f"gamma{gamma:g}pos", lambda p: p + gamma * p.clamp(min=0))
    return Mod(f"gamma{gamma:g}neg", lambda p: p + gamma * p.clamp(max=0))


@dataclass(frozen=True)
class Term:
    """One modified forward ``sign * f(input; weight(w), bias(b))``; ``bias=None`` drops it."""

    input: Input
    weight: Mod
    bias: Mod | None
    sign: float = 1.0


@dataclass(frozen=True)
class Group:
    """Terms sharing one denominator; ``where`` keeps the outputs whose plain ``z`` has a sign."""

    terms: tuple[Term, ...]
    coefficient: float = 1.0
    where: Literal["z>0", "z<0"] | None = None


class Rule:
    """Base class of the rules. Subclasses are frozen dataclasses."""

    #: the denominator's stabilizer
    stabilizer: float = 1e-6

    def groups(self) -> tuple[Group, ...]:
        """The rule as groups of terms (see the module docstring)."""
        raise NotImplementedError(f"{type(self).__name__} is not a rule for linear layers")


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
        if self.alpha < 0 or self.beta < 0 or self.alpha - self.beta != 1:
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


@dataclass(frozen=True)
class Pass(Rule):
    """Relevance passes unchanged (elementwise activations, unfolded BatchNorm)."""


@dataclass(frozen=True)
class LNRule(Rule):
    """LN-rule for LayerNorm (Ali et al. 2022, "XAI for Transformers: Better Explanations
    through Conservative Propagation", §3.2): the normalizer ``σ = sqrt(var(x) + eps)`` is
    treated as a constant, so ``y = w ⊙ (x − mean(x)) / σ + b`` is linear in ``x`` with the
    Jacobian ``W = diag(w / σ) (I − 1/N)`` over the normalized dimensions, and relevance flows
    through the centered part in proportion to the contributions (LRP-ε on that linear map)::

        s = R / stabilize(z),   z = y (or y − b with ignore_bias),
        t = w ⊙ s / σ,          R_i = x_i (t_i − mean(t)).

    With ``ignore_bias=True``, ``Σ R_in = Σ R_out`` up to the stabilizer.
    """

    stabilizer: float = 1e-6
    ignore_bias: bool = False


@dataclass(frozen=True)
class Gating(Rule):
    """How a product of two tensors ``a * b`` shares its relevance.

    ``share="signal"`` (default): a factor produced by a sigmoid, hard sigmoid or softmax is a
    gate (squeeze-excitation, ``x * sigmoid(x)``, LSTM-style gates); the other factor, the
    signal, gets all the relevance (Arras et al. 2017, "signal-take-all"). When neither or both
    factors are gates, the relevance is split in halves (the uniform rule of Achtibat et al.
    2024). ``share="gate"`` gives everything to the gate instead, ``share="uniform"`` always
    halves. A product with a constant (layer scale) needs no rule: relevance passes.
    """

    share: Literal["signal", "gate", "uniform"] = "signal"

    def __post_init__(self) -> None:
        if self.share not in ("signal", "gate", "uniform"):
            raise ValueError(f"Gating share must be 'signal', 'gate' or 'uniform', "
                             f"got {self.share!r}")

    def shares(self, a_is_gate: bool, b_is_gate: bool) -> tuple[float, float]:
        """The fractions of the relevance of ``a * b`` that go to ``a`` and to ``b``."""
        if self.share == "uniform" or a_is_gate == b_is_gate:
            return 0.5, 0.5
        to_gate = self.share == "gate"
        return (1.0, 0.0) if a_is_gate == to_gate else (0.0, 1.0)


@dataclass(frozen=True)
class Gradient(Rule):
    """The gradient through an elementwise activation: ``R_in = f'(x) ⊙ R_out``.

    For ReLU that is the forward's mask ``1[x > 0]``. PatternNet and PatternAttribution
    (Kindermans et al. 2018, §5) pass through the nonlinearities as the gradient does; unlike
    LRP, whose layer backward multiplies by the input (so a dead unit gets no relevance and
    ``Pass`` suffices), their layer backward does not, so the mask must be applied here. Defined
    for the piecewise-linear activations: ReLU, ReLU6, Hardtanh, LeakyReLU.
    """


@dataclass(frozen=True, eq=False)
class PatternNet(Rule):
    """PatternNet (Kindermans et al. 2018, "Learning how to explain neural networks", §5):
    the signal is projected back with the fitted patterns in place of the weights,
    ``R_in = aᵀ R`` (a transposed convolution for conv layers), bias unused.

    With the output relevance ``y`` this is the signal estimate ``s = a y`` of a linear model;
    in a network the ReLUs pass it by their forward mask (``Gradient``, set by the
    ``composites.PatternNet`` preset). ``patterns`` come from ``lrpfx.patterns.fit`` (kind
    ``"linear"``: estimator ``S_a``; ``"positive"``: ``S_a+-``).
    """

    patterns: Patterns


@dataclass(frozen=True, eq=False)
class PatternAttribution(Rule):
    """PatternAttribution (Kindermans et al. 2018, §5): deep Taylor decomposition with the
    root point ``x0 = x − a y`` the signal estimator gives, ``R_in = (w ⊙ a)ᵀ R``.

    It is LRP-0 with the input replaced by the signal: ``R_i = sum_j (a_j y_j)_i w_ji R_j /
    sum_i' (a_j y_j)_i' w_ji'``, and since the patterns are normalized, ``w_jᵀ a_j = 1``, this is
    ``sum_j w_ji a_ji R_j``: conservative unit by unit, weights ``w ⊙ a`` computed once.
    The paper's PatternAttribution uses the ``"positive"`` patterns (``S_a+-``, fitted on the
    regime ``y > 0`` where the ReLU lets the signal through); ``"linear"`` patterns (``S_a``)
    fit in the same formula. ReLUs pass by their forward mask (``Gradient``).
    """

    patterns: Patterns
