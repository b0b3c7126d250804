"""Composites: which rule each node gets.

A composite is an ordered list of ``(matcher, rule)``; the first match wins, and user entries
come before a preset's defaults. Matchers look at what the graph knows: the op family of the
node (``kind``, an ``lrpfx.ops.OpKind``: ``"conv"``, ``"dense"``, ``"activation"``, ``"avgpool"``,
``"maxpool"``, ``"batchnorm"``...), the class of the module it came from (or the function
equivalent to it: ``F.conv2d`` matches ``nn.Conv2d``), its qualified name, and its position in
execution order.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn

from lrpfx import meta
from lrpfx.ops.table import EQUIVALENT, OpKind
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
    ZBox,
    ZPlus,
)
from lrpfx.rules import PatternAttribution as PatternAttributionRule
from lrpfx.rules import PatternNet as PatternNetRule

if TYPE_CHECKING:
    from lrpfx.patterns.store import Patterns

LAYER_KINDS = (OpKind.CONV, OpKind.DENSE)


@dataclass(frozen=True)
class Context:
    """What matchers may ask of the graph: each node's op family and the execution order."""

    kinds: Mapping[fx.Node, OpKind]
    order: Sequence[fx.Node]

    def layers(self, kinds: Sequence[OpKind]) -> list[fx.Node]:
        """Nodes of the given kinds, in execution order."""
        return [n for n in self.order if self.kinds.get(n) in kinds]


class Matcher:
    """Base class of matchers: ``matches(node, context) -> bool``."""

    #: in a dict composite, entries are tried by specificity (names before classes)
    specificity = 0

    def matches(self, node: fx.Node, ctx: Context) -> bool:
        raise NotImplementedError


def _kinds(names: Sequence[OpKind | str]) -> tuple[OpKind, ...]:
    known = ", ".join(k.value for k in OpKind)
    for name in names:
        if name not in OpKind._value2member_map_:
            raise ValueError(f"unknown op kind {name!r}; the kinds are: {known}")
    return tuple(OpKind(name) for name in names)


@dataclass(frozen=True)
class Kind(Matcher):
    """Nodes whose op belongs to one of ``kinds`` (``OpKind`` members or their names; an
    unknown name is a ``ValueError`` here, not a matcher that silently matches nothing)."""

    kinds: tuple[OpKind, ...]

    def __init__(self, *kinds: OpKind | str) -> None:
        object.__setattr__(self, "kinds", _kinds(kinds))

    def matches(self, node: fx.Node, ctx: Context) -> bool:
        return ctx.kinds.get(node) in self.kinds


@dataclass(frozen=True)
class Type(Matcher):
    """Nodes from a module of class ``cls`` (subclasses too), or a call of its function form."""

    cls: type[nn.Module]

    def matches(self, node: fx.Node, ctx: Context) -> bool:
        origin = node.meta.get(meta.MODULE_TYPE)
        if origin is not None:
            return issubclass(origin, self.cls)
        return node.target in EQUIVALENT.get(self.cls, ())  # the function it is spelled as


@dataclass(frozen=True)
class Name(Matcher):
    """Nodes whose module path matches a glob (``"features.0"``, ``"classifier.*"``)."""

    pattern: str
    specificity = 2

    def matches(self, node: fx.Node, ctx: Context) -> bool:
        path = node.meta.get(meta.PATH)
        return path is not None and fnmatch.fnmatchcase(path, self.pattern)


@dataclass(frozen=True)
class Position(Matcher):
    """Layers of ``kinds`` at positions ``start <= i < stop`` of the execution order.

    The positions slice the list of layers as Python does: ``Position(0, 1)`` is the first
    layer, ``Position(-1)`` the last, ``Position(3, 10)`` the fourth to the tenth.
    """

    start: int | None = None
    stop: int | None = None
    kinds: tuple[OpKind, ...] = LAYER_KINDS
    specificity = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", _kinds(self.kinds))

    def matches(self, node: fx.Node, ctx: Context) -> bool:
        return node in ctx.layers(self.kinds)[self.start : self.stop]


def First(*kinds: OpKind | str) -> Position:  # noqa: N802  (reads as a matcher class)
    """The first layer of ``kinds`` (conv or dense by default) in execution order."""
    return Position(0, 1, _kinds(kinds) or LAYER_KINDS)


Entry = tuple[Matcher, Rule]
Key = Matcher | type[nn.Module] | str


def as_matcher(key: Key) -> Matcher:
    """A dict key as a matcher: a module class, a name glob or a matcher."""
    if isinstance(key, Matcher):
        return key
    if isinstance(key, str):
        return Name(key)
    if isinstance(key, type) and issubclass(key, nn.Module):
        return Type(key)
    raise TypeError(f"composite keys are nn.Module classes, name globs or matchers; got {key!r}")


UserRules = Mapping[Key, Rule] | Sequence[Entry] | None


def _user_entries(rules: UserRules) -> list[Entry]:
    if rules is None:
        return []
    if isinstance(rules, Mapping):
        entries = [(as_matcher(k), r) for k, r in rules.items()]
        return sorted(entries, key=lambda e: -e[0].specificity)  # stable: map order kept
    return [(as_matcher(m), r) for m, r in rules]


class Composite:
    """An ordered list of ``(matcher, rule)``; the first match wins.

    Args:
        entries: ``(matcher, rule)`` pairs (or a dict keyed by class, name glob or matcher; in a
            dict, names and positions are tried before classes).
        defaults: entries tried after ``entries``.
    """

    name = "custom"

    def __init__(
        self, entries: UserRules = None,
        defaults: Sequence[Entry] = (),
    ) -> None:
        self.entries: list[Entry] = [*_user_entries(entries), *defaults]

    def rule_for(self, node: fx.Node, ctx: Context) -> Rule | None:
        return next((rule for m, rule in self.entries if m.matches(node, ctx)), None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.entries)} entries)"


def base_entries(stabilizer: float = 1e-6, ignore_bias: bool = False) -> list[Entry]:
    """Defaults shared by the presets: activations pass, pools, sums and means normalize, BN
    passes, products of a gate and a signal give all to the signal, LayerNorm takes the
    LN-rule. ``ignore_bias`` drops the constants added in sums and LayerNorm biases."""
    return [
        (Kind("activation"), Pass()),
        (Kind("add", "sum"), Norm(stabilizer, ignore_bias)),
        (Kind("avgpool", "maxpool"), Norm(stabilizer)),
        (Kind("batchnorm"), Pass()),
        (Kind("mul"), Gating()),
        (Kind("layernorm"), LNRule(stabilizer, ignore_bias)),
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


PRESETS: dict[str, type[Composite]] = {
    c.name: c for c in (EpsilonPlus, EpsilonPlusFlat, EpsilonAlpha2Beta1, EpsilonAlpha2Beta1Flat,
                        EpsilonGammaBox, EpsilonOnly)
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
