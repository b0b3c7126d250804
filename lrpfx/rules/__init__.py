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

from lrpfx.rules.base import (
    IDENTITY,
    NEGATIVE,
    ONES,
    POSITIVE,
    SQUARE,
    Group,
    Input,
    Mod,
    Rule,
    Term,
    gamma_mod,
)
from lrpfx.rules.linear import AlphaBeta, Epsilon, Flat, Gamma, Norm, WSquare, ZBox, ZPlus
from lrpfx.rules.ops import Attention, Gating, Gradient, LNRule, Pass, SoftmaxTaylor, Stop, Uniform
from lrpfx.rules.patterns import PatternAttribution, PatternNet

__all__ = [
    "AlphaBeta",
    "Attention",
    "Epsilon",
    "Flat",
    "Gamma",
    "Gating",
    "Uniform",
    "Gradient",
    "Group",
    "IDENTITY",
    "Input",
    "LNRule",
    "Mod",
    "NEGATIVE",
    "Norm",
    "ONES",
    "POSITIVE",
    "Pass",
    "PatternAttribution",
    "PatternNet",
    "Rule",
    "SQUARE",
    "SoftmaxTaylor",
    "Stop",
    "Term",
    "WSquare",
    "ZBox",
    "ZPlus",
    "gamma_mod",
]
