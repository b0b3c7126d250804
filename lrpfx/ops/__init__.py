"""Relevance implementations of the canonical ops, one stanza per op family."""

from lrpfx.ops import layernorm, linear, nary, routing, structural  # noqa: F401  (fill the registry)
from lrpfx.ops.registry import REGISTRY, OpImpl, lookup, register

__all__ = ["REGISTRY", "OpImpl", "lookup", "register"]
