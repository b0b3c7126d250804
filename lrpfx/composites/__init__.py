"""Composites: which rule each node gets.

A composite is an ordered list of ``(matcher, rule)``; the first match wins, and user entries
come before a preset's defaults. Matchers look at what the graph knows: the op family of the
node (``kind``, an ``lrpfx.ops.OpKind``: ``"conv"``, ``"dense"``, ``"activation"``, ``"avgpool"``,
``"maxpool"``, ``"batchnorm"``...), the class of the module it came from (or the function
equivalent to it: ``F.conv2d`` matches ``nn.Conv2d``), its qualified name, and its position in
execution order.
"""

from lrpfx.composites.composite import Composite, Entry, UserRules
from lrpfx.composites.matchers import (
    LAYER_KINDS,
    Context,
    First,
    Key,
    Kind,
    Matcher,
    Name,
    Position,
    Type,
    as_matcher,
)
from lrpfx.composites.presets import (
    CPLRP,
    FITTED,
    PRESETS,
    AttnLRP,
    AttnLRPGamma,
    EpsilonAlpha2Beta1,
    EpsilonAlpha2Beta1Flat,
    EpsilonGammaBox,
    EpsilonOnly,
    EpsilonPlus,
    EpsilonPlusFlat,
    PatternAttribution,
    PatternNet,
    Spec,
    base_entries,
    resolve,
)

__all__ = [
    "CPLRP", "FITTED", "LAYER_KINDS", "PRESETS", "AttnLRP", "AttnLRPGamma", "Composite",
    "Context", "Entry",
    "EpsilonAlpha2Beta1", "EpsilonAlpha2Beta1Flat", "EpsilonGammaBox", "EpsilonOnly",
    "EpsilonPlus", "EpsilonPlusFlat", "First", "Key", "Kind", "Matcher", "Name",
    "PatternAttribution", "PatternNet", "Position", "Spec", "Type", "UserRules", "as_matcher",
    "base_entries", "resolve",
]
