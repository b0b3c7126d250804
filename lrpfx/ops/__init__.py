"""Relevance implementations of the canonical ops: the op table and its stanzas, one file per
op family (each declares its ops' facts with ``defop`` and their rows with ``relevance``)."""

from lrpfx.ops import (
    activations,
    arithmetic,
    attention,
    bilinear,
    casts,
    embedding,
    layernorm,
    layers,
    maxpool,
    norms,
    patterns,
    resample,
    routing,
    softmax,
    statistics,
    where,
)
from lrpfx.ops.table import OPS, ROWS, OpKind, OpSpec, defop, register, relevance, spell

__all__ = ["OPS", "ROWS", "OpKind", "OpSpec", "activations", "arithmetic", "attention",
           "bilinear", "casts", "defop", "embedding", "layernorm", "layers", "maxpool", "norms",
           "patterns", "register", "relevance", "resample", "routing", "softmax", "spell",
           "statistics", "where"]
