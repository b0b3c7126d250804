"""Targets for sequences: what a language model's explanation explains.

A causal language model outputs logits ``(batch, seq, vocab)``; an explainer of one (token ids
explained, ``lrpfx.frontend.inputs``) takes

- ``target=None`` (the default): ``NextToken()``, the logit of the predicted next token at the
  last non-padding position of each sequence (the ``attention_mask`` says which positions are
  padding; without one, the last position);
- ``target=t``, an int or one token id per sample: ``NextToken(t)``;
- ``output_relevance=NextToken(t, contrast=...)``: that logit against the mean logit over the
  vocabulary (``contrast="mean"``, as LXT advises for GPT-2, whose logits are mostly negative)
  or against another token's logit (``contrast=token``): ``z_t e_t − z_o e_o``; ``position=``
  picks another position (an int, or one per sample).

A sequence classifier's logits ``(batch, classes)`` take ``target`` as any classifier does
(``lrpfx.targets``). Positions after the explained one and padding get no relevance from a
causal model; padding gets none from an encoder's masked attention.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

Tokens = int | torch.Tensor | None


def _per_sample(value: int | torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(value, dtype=torch.long, device=device).expand(n)


def last_positions(logits: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The last non-padding position of each sequence (the last one without a mask)."""
    n, length = logits.shape[:2]
    if attention_mask is None:
        return torch.full((n,), length - 1, dtype=torch.long, device=logits.device)
    order = torch.arange(length, device=logits.device).expand(n, length)
    return torch.where(attention_mask.to(logits.device).bool(), order, -1).amax(1).clamp(min=0)


@dataclass(frozen=True)
class NextToken:
    """The logit of ``token`` at ``position`` of each sequence, optionally against a contrast.

    Attributes:
        token: a token id, one per sample, or None for the predicted (argmax) token there.
        position: a position, one per sample, or None for the last non-padding position.
        contrast: None, ``"mean"`` (minus the mean logit over the vocabulary) or a token id
            (minus that token's logit), one per sample allowed.
    """

    token: Tokens = None
    position: Tokens = None
    contrast: Literal["mean"] | int | torch.Tensor | None = None

    def relevance(self, logits: torch.Tensor,
                  attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The output relevance for ``logits`` (``(batch, seq, vocab)``)."""
        if logits.dim() != 3:
            raise ValueError(f"NextToken explains logits of shape (batch, seq, vocab); the "
                             f"model output has shape {tuple(logits.shape)}")
        n, device = logits.shape[0], logits.device
        samples = torch.arange(n, device=device)
        where = (last_positions(logits, attention_mask) if self.position is None
                 else _per_sample(self.position, n, device))
        at = logits[samples, where]  # (batch, vocab)
        token = at.argmax(-1) if self.token is None else _per_sample(self.token, n, device)
        seed = torch.zeros_like(at)
        seed[samples, token] = at[samples, token]
        if isinstance(self.contrast, str) and self.contrast == "mean":
            seed = seed - at / at.shape[-1]
        elif self.contrast is not None:
            other = _per_sample(self.contrast, n, device)
            seed[samples, other] -= at[samples, other]
        out = torch.zeros_like(logits)
        out[samples, where] = seed
        return out


def sequence_seed(target: NextToken, attention_mask: torch.Tensor | None
                  ) -> Callable[[torch.Tensor, object], torch.Tensor]:
    """``target`` as an ``output_relevance`` callable ``(output, target) -> relevance``."""

    def seed(output: torch.Tensor, _: object) -> torch.Tensor:
        return target.relevance(output, attention_mask)

    seed.__name__ = repr(target)
    return seed
