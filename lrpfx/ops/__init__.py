"""Relevance implementations of the canonical ops, one stanza per op family."""

# fill the registry, in this order: patterns extends the conv/dense entries of linear
from lrpfx.ops import layernorm, linear, nary, patterns, routing, structural  # noqa: F401
from lrpfx.ops.registry import REGISTRY, OpImpl, lookup, register

__all__ = ["REGISTRY", "OpImpl", "lookup", "register"]
