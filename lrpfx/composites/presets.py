"""The presets: LRP composites by name (Zennit's names), PatternNet and PatternAttribution, and
``resolve``, which turns whatever ``lrpfx.compile`` is given into a composite."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import fx

from lrpfx import meta
from lrpfx.composites.composite import Composite, Entry, UserRules
from lrpfx.composites.matchers import LAYER_KINDS, Context, First, Key, Kind
from lrpfx.rules import (
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    Gating,
    Gradient,
    LNRule,
    Norm,
    Pass,
    Rule,
    SoftmaxTaylor,
    Stop,
    Uniform,
    ZBox,
    ZPlus,
)
from lrpfx.rules import PatternAttribution as PatternAttributionRule
from lrpfx.rules import PatternNet as PatternNetRule

if TYPE_CHECKING:
    from lrpfx.patterns.store import Patterns


def base_entries(stabilizer: float = 1e-6, ignore_bias: bool = False) -> list[Entry]:
    """Defaults shared by the presets: activations pass, pools, sums and means normalize, BN
    passes, products of a gate and a signal give all to the signal, LayerNorm takes the
    LN-rule, matrix products the ε-rule (halved between two computed operands: AttnLRP).
    ``ignore_bias`` drops the constants added in sums and LayerNorm biases."""
    return [
        (Kind("activation", "softmax"), Pass()),
        (Kind("add", "sum"), Norm(stabilizer, ignore_bias)),
        (Kind("avgpool", "maxpool"), Norm(stabilizer)),
        (Kind("batchnorm"), Pass()),
        (Kind("mul"), Gating()),
        (Kind("layernorm"), LNRule(stabilizer, ignore_bias)),
        (Kind("matmul"), Epsilon(stabilizer)),
    ]


class EpsilonPlus(Composite):
    """ε on dense layers, z⁺ on convolutions."""

    name = "epsilon-plus"

    def __init__(self, epsilon: float = 1e-6, stabilizer: float = 1e-6,
                 rules: UserRules = None, ignore_bias: bool = False) -> None:
        super().__init__(rules, [
            *self.first(stabilizer, ignore_bias), *base_entries(stabilizer, ignore_bias),
            (Kind("conv"), self.conv_rule(stabilizer, ignore_bias)),
            (Kind("dense"), Epsilon(epsilon, ignore_bias)),
        ])

    def first(self, stabilizer: float, ignore_bias: bool) -> list[Entry]:
        return []

    def conv_rule(self, stabilizer: float, ignore_bias: bool) -> Rule:
        return ZPlus(stabilizer, ignore_bias)


class EpsilonPlusFlat(EpsilonPlus):
    """EpsilonPlus with the flat rule on the first layer (conv or dense)."""

    name = "epsilon-plus-flat"

    def first(self, stabilizer: float, ignore_bias: bool) -> list[Entry]:
        return [(First(), Flat(stabilizer))]


class EpsilonAlpha2Beta1(EpsilonPlus):
    """ε on dense layers, αβ with α=2, β=1 on convolutions."""

    name = "epsilon-alpha2-beta1"

    def conv_rule(self, stabilizer: float, ignore_bias: bool) -> Rule:
        return AlphaBeta(2.0, 1.0, stabilizer, ignore_bias)


class EpsilonAlpha2Beta1Flat(EpsilonAlpha2Beta1):
    """EpsilonAlpha2Beta1 with the flat rule on the first layer (conv or dense)."""

    name = "epsilon-alpha2-beta1-flat"

    def first(self, stabilizer: float, ignore_bias: bool) -> list[Entry]:
        return [(First(), Flat(stabilizer))]


class EpsilonGammaBox(Composite):
    """zᴮ on the first convolution (pixels in ``[low, high]``), γ on the other convolutions,
    ε on dense layers."""

    name = "epsilon-gamma-box"

    def __init__(self, low: float | torch.Tensor, high: float | torch.Tensor,
                 epsilon: float = 1e-6, gamma: float = 0.25, stabilizer: float = 1e-6,
                 rules: UserRules = None, ignore_bias: bool = False) -> None:
        super().__init__(rules, [
            (First("conv"), ZBox(low, high, stabilizer, ignore_bias)),
            *base_entries(stabilizer, ignore_bias),
            (Kind("conv"), Gamma(gamma, stabilizer, ignore_bias)),
            (Kind("dense"), Epsilon(epsilon, ignore_bias)),
        ])


class EpsilonOnly(Composite):
    """ε on every conv and dense layer (LRP-0 with ``epsilon=0``)."""

    name = "epsilon"

    def __init__(self, epsilon: float = 1e-6, stabilizer: float = 1e-6,
                 rules: UserRules = None, ignore_bias: bool = False) -> None:
        super().__init__(rules, [
            *base_entries(stabilizer, ignore_bias),
            (Kind(*LAYER_KINDS), Epsilon(epsilon, ignore_bias)),
        ])


class PatternNet(Composite):
    """PatternNet (Kindermans et al. 2018): ``rules.PatternNet`` (the fitted patterns in place of
    the weights) on every conv and dense layer, ``rules.Gradient`` (the forward mask) on ReLUs.

    Args:
        patterns: from ``lrpfx.patterns.fit(model, loader, kind)``.
        rules: user entries, tried first.

    The paper follows the gradient through max-pools as well: compile with ``maxpool="wta"``
    (with ``"avg"`` relevance crosses them as average pools; a warning says so). Average pools
    and sums normalize, unfolded BatchNorms pass, as in the LRP presets.
    """

    name = "patternnet"
    rule: type[PatternNetRule | PatternAttributionRule] = PatternNetRule

    def __init__(self, patterns: Patterns, rules: UserRules = None,
                 stabilizer: float = 1e-6) -> None:
        super().__init__(rules, [
            (Kind("activation"), Gradient()), *base_entries(stabilizer),
            (Kind(*LAYER_KINDS), self.rule(patterns)),
        ])

    def rule_for(self, node: fx.Node, ctx: Context) -> Rule | None:
        if ctx.kinds.get(node) == "maxpool" and node.meta.get(meta.MAXPOOL) == "avg":
            warnings.warn(
                f"{self.rule.__name__} follows the gradient through max-pools in the paper; "
                "compile with maxpool='wta' for that (with 'avg' relevance crosses max-pools as "
                "average pools)", stacklevel=2,
            )
        return super().rule_for(node, ctx)


class PatternAttribution(PatternNet):
    """PatternAttribution (Kindermans et al. 2018): ``rules.PatternAttribution`` (weights
    ``w ⊙ a``) on every conv and dense layer, ``rules.Gradient`` on ReLUs; see ``PatternNet``.
    The paper's PatternAttribution uses ``kind="positive"`` patterns."""

    name = "patternattribution"
    rule = PatternAttributionRule


class AttnLRP(Composite):
    """AttnLRP (Achtibat et al., ICML 2024): ε on convolutions, dense layers and matrix products
    (halved between two computed operands, Prop. 3.3), the softmax by deep Taylor with bias
    (Prop. 3.1), LayerNorm with its standard deviation held constant, products of two tensors
    shared uniformly (Prop. 3.2), activations passing relevance (the identity rule)."""

    name = "attn-lrp"

    def __init__(self, epsilon: float = 1e-6, rules: UserRules = None) -> None:
        super().__init__(rules, [
            (Kind("softmax"), SoftmaxTaylor()),
            (Kind("mul"), Uniform()),
            *base_entries(epsilon),
            (Kind("conv", "dense", "matmul"), Epsilon(epsilon)),
        ])


class AttnLRPGamma(Composite):
    """AttnLRP with the γ-rule on the linear maps, for vision transformers (as LXT's ViT recipe):
    ``Gamma(conv_gamma)`` on convolutions (the patch embedding), ``Gamma(linear_gamma)`` on every
    dense call site, the attention's q/k/v and output projections included (they are call
    sites of their own, see ``nn.MultiheadAttention``'s decomposition), AttnLRP elsewhere.
    LXT's examples search conv γ in {0.1, 0.25, 100} and linear γ in {0, 0.01, 0.05, 0.1, 1}."""

    name = "attn-lrp-gamma"

    def __init__(self, conv_gamma: float = 0.25, linear_gamma: float = 0.05,
                 epsilon: float = 1e-6, rules: UserRules = None) -> None:
        super().__init__(rules, [
            (Kind("conv"), Gamma(conv_gamma, epsilon)),
            (Kind("dense"), Gamma(linear_gamma, epsilon)),
            *AttnLRP(epsilon).entries,
        ])


class CPLRP(Composite):
    """CP-LRP (Ali et al., ICML 2022, "XAI for Transformers"): the attention weights are held
    constant (``Stop`` on the softmax: relevance flows through the values only), LayerNorm by
    the LN-rule, a gate's product gives all to the signal, ε elsewhere."""

    name = "cp-lrp"

    def __init__(self, epsilon: float = 1e-6, rules: UserRules = None) -> None:
        super().__init__(rules, [
            (Kind("softmax"), Stop()),
            *base_entries(epsilon),
            (Kind("conv", "dense", "matmul"), Epsilon(epsilon)),
        ])


PRESETS: dict[str, type[Composite]] = {
    c.name: c for c in (EpsilonPlus, EpsilonPlusFlat, EpsilonAlpha2Beta1, EpsilonAlpha2Beta1Flat,
                        EpsilonGammaBox, EpsilonOnly, AttnLRP, AttnLRPGamma, CPLRP)
}
# presets built from data: by name only with their patterns, resolve(name, patterns=...)
FITTED: dict[str, type[Composite]] = {c.name: c for c in (PatternNet, PatternAttribution)}

Spec = Composite | str | Rule | Mapping[Key, Rule] | Sequence[Entry]


def resolve(spec: Spec, **options: Any) -> Composite:
    """A composite from a preset name, a composite, one rule for every layer, or a map.

    ``options`` go to a preset given by name: ``resolve("patternnet", patterns=p)``. A pattern
    rule given alone means its preset (``PatternNet``/``PatternAttribution``, ReLU masks included).
    """
    if options and not isinstance(spec, str):
        raise TypeError(f"options ({', '.join(options)}) are for a preset given by name, not "
                        f"for a {type(spec).__name__}")
    if isinstance(spec, Composite):
        return spec
    if isinstance(spec, str):
        key = spec.lower().replace("_", "-")
        if key not in PRESETS and key not in FITTED:
            raise ValueError(f"unknown composite {spec!r}; presets: "
                             f"{', '.join([*PRESETS, *FITTED])}")
        if key == "epsilon-gamma-box" and not options:
            raise ValueError("'epsilon-gamma-box' needs the input bounds: pass "
                             "lrpfx.composites.EpsilonGammaBox(low=..., high=...)")
        if key in FITTED:
            if "patterns" not in options:
                raise ValueError(f"{key!r} needs fitted patterns: resolve({key!r}, patterns=p) "
                                 f"or lrpfx.composites.{FITTED[key].__name__}(p), with "
                                 "p = lrpfx.patterns.fit(model, loader)")
            return FITTED[key](**options)
        return PRESETS[key](**options)
    if isinstance(spec, (PatternNetRule, PatternAttributionRule)):
        preset = PatternNet if isinstance(spec, PatternNetRule) else PatternAttribution
        return preset(spec.patterns)
    if isinstance(spec, Rule):
        return EpsilonOnly(rules={Kind(*LAYER_KINDS): spec})
    return EpsilonOnly(rules=spec)
