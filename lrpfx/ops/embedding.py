"""Embedding lookups: ``F.embedding(ids, weight)``, ``nn.Embedding``.

A lookup reads rows of a table by integer ids: its indices carry no relevance, and its table is
a constant. When the ids are the explained input, relevance is taken at the lookup's output
(``lrpfx.frontend.inputs``): the embedding is the input of the relevance program, so the op
has no relevance row. A lookup of other ids (position ids, token types) is a constant added to
what is explained, like a bias.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import nn

from lrpfx.ops.table import Call, Converted, OpKind, Param, Unsupported, defop, spell


def _module(m: nn.Embedding) -> tuple[Any, ...] | Converted:
    if m.max_norm is not None:
        return Unsupported("nn.Embedding with max_norm (it renormalizes its table in place)")
    return (Param("weight", m.weight),)


def _bind(weight: Any, padding_idx: Any = None, max_norm: Any = None, norm_type: Any = 2.0,
          scale_grad_by_freq: Any = False, sparse: Any = False) -> Converted:
    if max_norm is not None:
        return Unsupported("F.embedding with max_norm (it renormalizes its table in place)")
    return Call(F.embedding, (weight,))


defop(F.embedding, kind=OpKind.ROUTING)
spell(F.embedding, modules={nn.Embedding: _module}, bind=_bind)
