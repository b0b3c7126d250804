"""PatternNet and PatternAttribution: rules that hold fitted patterns (``lrpfx.patterns``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from lrpfx.rules.base import Rule

if TYPE_CHECKING:
    from lrpfx.patterns.store import Patterns


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
