"""Functional BatchNorm and GroupNorm.

- ``F.batch_norm`` with running statistics (as timm's ``BatchNormAct2d`` calls it) is the
  per-channel affine map ``x * scale + shift`` of an eval-mode ``nn.BatchNorm2d``:
  ``passes.fold_batchnorm`` turns it into ``runtime.affine`` with constant ``scale``/``shift``
  and folds it into a conv or dense layer right before it; elsewhere it takes the affine rows
  (``Pass`` by the presets' default). Batch statistics (``training=True``, no running
  statistics) are refused.
- ``F.group_norm`` / ``nn.GroupNorm`` with the LN-rule (Ali et al. 2022): the normalizer σ of
  each group is held constant, so ``y = w ⊙ (x − mean_g(x)) / σ_g + b`` is linear in ``x``; its
  transpose applied to ``s = R / stabilize(y)`` is ``t − mean_g(t)`` with ``t = w ⊙ s / σ_g``,
  and ``R_in = x ⊙ (t − mean_g(t))`` (conservative: Σ R_in = Σ (y − b) ⊙ s).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import fx, nn

from lrpfx import kernels
from lrpfx.builder import Builder
from lrpfx.ops.layernorm import held_normalizer
from lrpfx.ops.table import (
    Call,
    Contribution,
    Converted,
    OpKind,
    Param,
    Unsupported,
    defop,
    pass_through,
    relevance,
    spell,
)
from lrpfx.rules import LNRule, Pass


def _bind_batch_norm(running_mean: Any = None, running_var: Any = None, weight: Any = None,
                     bias: Any = None, training: Any = False, momentum: Any = 0.1,
                     eps: float = 1e-5) -> Converted:
    if training is not False or running_mean is None or running_var is None:
        return Unsupported("F.batch_norm with batch statistics (training=True or no running "
                           "statistics); explain the model in eval mode with running statistics")
    return Call(F.batch_norm, (running_mean, running_var, weight, bias, False, 0.0, eps))


spell(F.batch_norm, bind=_bind_batch_norm)

defop(F.group_norm, kind=OpKind.LAYERNORM)
spell(F.group_norm, modules={nn.GroupNorm: lambda m: (
    m.num_groups, Param("weight", m.weight), Param("bias", m.bias), m.eps)},
    bind=lambda num_groups, weight=None, bias=None, eps=1e-5: Call(
        F.group_norm, (num_groups, weight, bias, eps)))


relevance(F.group_norm, rule=Pass)(pass_through)


@relevance(F.group_norm, rule=LNRule)
def _group_norm(b: Builder, node: fx.Node, rel: fx.Node, rule: LNRule) -> list[Contribution]:
    """LN-rule per group: ``R_i = x_i (t_i − mean_g(t))``, ``t = w ⊙ R / (σ_g stabilize(z))``."""
    return held_normalizer(b, node, rel, rule, kernels.group_norm_transpose,
                           kernels.channel_shift)
