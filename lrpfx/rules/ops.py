"""The rules of the other ops: activations, softmax, LayerNorm, products of two tensors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lrpfx.rules.base import Rule
from lrpfx.rules.linear import Epsilon, Norm


@dataclass(frozen=True)
class Pass(Rule):
    """Relevance passes unchanged (elementwise activations, unfolded BatchNorm)."""


@dataclass(frozen=True)
class Stop(Rule):
    """No relevance passes: the input gets none. CP-LRP (Ali et al. 2022) treats the attention
    weights as constants, so a softmax over attention scores takes ``Stop`` and the relevance
    flows through the values alone."""


@dataclass(frozen=True)
class SoftmaxTaylor(Rule):
    """Softmax by deep Taylor decomposition with bias (AttnLRP, Achtibat et al. 2024,
    Prop. 3.1): for ``s = softmax(x)`` along its dimension,

        R_x = x ⊙ (R − s Σ R),

    which is ``x ⊙ Jᵀ(R / s)`` with ``J`` the softmax Jacobian (``-inf`` inputs, masks, get
    none). Not conservative: the bias term takes or gives relevance."""


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
    signal, gets all the relevance (Arras et al. 2017, "signal-take-all"). Where neither is, the
    output of an activation is the gate of a gated linear unit (SwiGLU's ``silu(gate(x)) *
    up(x)``, GEGLU): the other, linear branch takes all (CP-LRP, as LXT). When neither or both
    factors are gates, the relevance is split in halves (the uniform rule of Achtibat et al.
    2024). ``share="gate"`` gives everything to the gate instead, ``share="uniform"`` always
    halves. A product with a constant (layer scale) needs no rule: relevance passes.
    """

    share: Literal["signal", "gate", "uniform"] = "signal"

    def __post_init__(self) -> None:
        super().__post_init__()
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
class Uniform(Gating):
    """AttnLRP's uniform rule for a product of two tensors computed from the input (Achtibat
    et al. 2024, Prop. 3.2): each factor gets half of the relevance, gate or not
    (``Gating("uniform")`` by its own name)."""

    share: Literal["signal", "gate", "uniform"] = field(default="uniform", init=False,
                                                          repr=False)


@dataclass(frozen=True)
class Gradient(Rule):
    """The gradient through an elementwise activation: ``R_in = f'(x) ⊙ R_out``.

    For ReLU that is the forward's mask ``1[x > 0]``. PatternNet and PatternAttribution
    (Kindermans et al. 2018, §5) pass through the nonlinearities as the gradient does; unlike
    LRP, whose layer backward multiplies by the input (so a dead unit gets no relevance and
    ``Pass`` suffices), their layer backward does not, so the mask must be applied here. Defined
    for the piecewise-linear activations: ReLU, ReLU6, Hardtanh, LeakyReLU.
    """


@dataclass(frozen=True)
class Attention(Rule):
    """The rules of one attention ``softmax(q kᵀ · scale ⊕ mask) v`` taken together: what
    ``passes.fuse`` gives the ``F.scaled_dot_product_attention`` it makes of the parts that the
    composite gave their rules (``scores``: the product ``q kᵀ``, ``mask``: a float mask's sum,
    ``softmax``, ``values``: the product with ``v``), so that one kernel explains it block by
    block (``lrpfx.attention``) with what the parts would have computed."""

    scores: Epsilon | Norm
    softmax: SoftmaxTaylor | Stop | Pass
    values: Epsilon | Norm
    mask: Epsilon | Norm | None = None
