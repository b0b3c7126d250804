"""``F.scaled_dot_product_attention`` is explained as what it computes,
``softmax(q kᵀ · scale + mask) v``: the same relevance as the model written out with ``@``,
``softmax`` and the mask (whose rules have their dense references in ``test_bilinear`` and
``test_attention_rules``), under AttnLRP, CP-LRP and the ε presets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lrpfx
from lrpfx import composites


class Attention(nn.Module):
    """Self-attention over tokens, fused or written out."""

    def __init__(self, fused: bool, mask: str, scale: float | None = None) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.proj = nn.Linear(8, 5)
        self.fused, self.kind, self.scale = fused, mask, scale
        generator = torch.Generator().manual_seed(3)
        self.register_buffer("float_mask", torch.randn(6, 6, generator=generator))
        self.register_buffer("bool_mask", torch.rand(6, 6, generator=generator) > 0.3)
        self.bool_mask.diagonal().fill_(True)  # every query sees one key at least

    def mask(self) -> torch.Tensor | None:
        if self.kind == "causal":
            return torch.ones(6, 6, dtype=torch.bool).tril()
        return {"none": None, "float": self.float_mask, "bool": self.bool_mask}[self.kind]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).reshape(x.shape[0], 6, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused:
            causal = self.kind == "causal"
            o = F.scaled_dot_product_attention(q, k, v, None if causal else self.mask(),
                                               is_causal=causal, scale=self.scale)
        else:
            logits = (q * (self.scale or 4 ** -0.5)) @ k.transpose(-2, -1)
            mask = self.mask()
            if mask is not None and mask.dtype == torch.bool:
                logits = torch.where(mask, logits, float("-inf"))
            elif mask is not None:
                logits = logits + mask
            o = logits.softmax(-1) @ v
        return self.proj(o.transpose(1, 2).reshape(x.shape[0], 6, 8))


PRESETS = {"attn-lrp": composites.AttnLRP(), "cp-lrp": composites.CPLRP(),
           "epsilon": composites.EpsilonOnly(), "epsilon-nobias": composites.EpsilonOnly(
               ignore_bias=True)}


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("mask", ["none", "float", "bool", "causal"])
def test_fused_attention_is_the_written_out_attention(mask, preset):
    fused = Attention(True, mask).eval()
    written = Attention(False, mask).eval()
    written.load_state_dict(fused.state_dict())
    x = torch.randn(2, 6, 8)
    R = torch.randn(2, 6, 5)
    got = lrpfx.compile(fused, PRESETS[preset])(x, output_relevance=R)
    expected = lrpfx.compile(written, PRESETS[preset])(x, output_relevance=R)
    torch.testing.assert_close(got.output, fused(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.relevance, expected.relevance, rtol=1e-10, atol=1e-12)
    assert torch.isfinite(got.relevance).all() and got.relevance.abs().sum() > 0


def test_fused_attention_with_an_explicit_scale():
    fused, written = Attention(True, "none", 0.3).eval(), Attention(False, "none", 0.3).eval()
    written.load_state_dict(fused.state_dict())
    x = torch.randn(2, 6, 8)
    got = lrpfx.compile(fused, "attn-lrp")(x, target=1).relevance
    torch.testing.assert_close(got, lrpfx.compile(written, "attn-lrp")(x, target=1).relevance)


@pytest.mark.parametrize("preset", ["attn-lrp", "cp-lrp"])
def test_grouped_query_attention_repeats_the_keys_and_values(preset):
    """``enable_gqa=True``: each key/value head serves a group of query heads, as with ``k`` and
    ``v`` repeated over the heads (``repeat_interleave``); the fused kernel explains it."""

    class GQA(nn.Module):
        def __init__(self, repeat: bool) -> None:
            super().__init__()
            self.q, self.kv, self.repeat = nn.Linear(8, 16), nn.Linear(8, 16), repeat

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q = self.q(x).unflatten(-1, (4, 4)).transpose(1, 2)
            k, v = self.kv(x).unflatten(-1, (2, 8)).transpose(1, 2).chunk(2, -1)
            if self.repeat:
                k, v = k.repeat_interleave(2, -3), v.repeat_interleave(2, -3)
            o = F.scaled_dot_product_attention(q, k, v, enable_gqa=not self.repeat)
            return o.sum((1, 3))

    grouped, repeated = GQA(False).eval(), GQA(True).eval()
    repeated.load_state_dict(grouped.state_dict())
    x = torch.randn(2, 5, 8)
    got = lrpfx.compile(grouped, PRESETS[preset])(x)
    assert "lrpfx_attention_relevance" in lrpfx.compile(grouped, PRESETS[preset]).program.code
    torch.testing.assert_close(got.output, grouped(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.relevance, lrpfx.compile(repeated, PRESETS[preset])(x).relevance,
                               rtol=1e-10, atol=1e-12)
    assert got.relevance.abs().sum() > 0
