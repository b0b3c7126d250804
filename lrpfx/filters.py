"""Relevance filters: rule wrappers that edit the relevance arriving at a layer.

The top-k filter of Fischer's fast LRP for VGG ("Layer-wise Relevance Propagation for PyTorch",
2021) keeps, per sample, only the largest k % of the relevance that arrives at a layer's output
and sets the rest to zero before the wrapped rule distributes it::

    R'_j = R_j  if R_j is among the ⌊k/100 · n⌋ largest entries of the sample, else 0

It sharpens heatmaps, but it is **not conservative** (the dropped relevance is lost, so
Σ R_in ≠ Σ R_out) and it makes LRP non-linear in the output relevance (explaining ``a − b``
is no longer the difference of two explanations).

Use it like any rule, in a composite::

    composites.EpsilonPlus(rules={nn.Conv2d: filters.TopK(rules.ZPlus(), percent=10)})
    filters.Filtered(composites.EpsilonGammaBox(low, high), percent=10)   # every conv/dense
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import fx

from lrpfx import meta
from lrpfx.composites import LAYER_KINDS, Composite, Context, Kind, Matcher
from lrpfx.rules import Group, Rule
from lrpfx.runtime import top_k

__all__ = ["FILTER", "Filtered", "TopK", "top_k"]

FILTER = meta.FILTER  # node.meta key: the filter applied to the relevance of the node's output


@dataclass(frozen=True)
class TopK(Rule):
    """``rule`` applied to the relevance of the layer's output filtered by ``top_k``
    (``annotate`` splits the two: the rule into ``meta["lrpfx.rule"]``, the filter into
    ``meta["lrpfx.filter"]``).

    Args:
        rule: the rule that distributes the kept relevance (``ZPlus()``, ``Gamma(0.25)``, ...).
        percent: the share of entries kept per sample, ``0 < percent <= 100``.

    Not conservative: the relevance of the dropped entries is lost (see the module docstring).
    """

    rule: Rule
    percent: float = 10.0

    def __post_init__(self) -> None:
        if isinstance(self.rule, TopK) or not isinstance(self.rule, Rule):
            raise TypeError(f"TopK wraps one rule (not a filter), got {self.rule!r}")
        if not 0 < self.percent <= 100:
            raise ValueError(f"TopK percent must be in (0, 100], got {self.percent}")

    @property
    def stabilizer(self) -> float:  # type: ignore[override]
        return self.rule.stabilizer

    def groups(self) -> tuple[Group, ...]:
        return self.rule.groups()


class Filtered(Composite):
    """``composite`` with a top-k filter on every node that ``where`` matches (default: every
    conv and dense layer). The filter wraps whatever rule the composite picks there."""

    def __init__(self, composite: Composite, percent: float = 10.0,
                 where: Matcher | None = None) -> None:
        super().__init__()
        self.inner = composite
        self.entries = composite.entries
        self.percent = percent
        self.where = where or Kind(*LAYER_KINDS)
        self.name = f"{composite.name}+top{percent:g}%"

    def rule_for(self, node: fx.Node, ctx: Context) -> Rule | None:
        rule = self.inner.rule_for(node, ctx)
        if rule is None or isinstance(rule, TopK) or not self.where.matches(node, ctx):
            return rule
        return TopK(rule, self.percent)

    def __repr__(self) -> str:
        return f"Filtered({self.inner!r}, percent={self.percent:g})"
