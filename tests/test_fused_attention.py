"""The fused attention (``passes.fuse``, ``lrpfx.attention``): an ``F.scaled_dot_product_attention``
whose parts took AttnLRP's, CP-LRP's or the presets' rules is explained by one kernel that works
in blocks of query rows. Its relevance equals the written-out parts' (each with its own row)
within 1e-12 in float64, whatever the block size; where it cannot apply the parts stay."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lrpfx
import lrpfx.compiler
from lrpfx import attention, composites, rules
from lrpfx.rules import Attention
from lrpfx.show import describe_rule

COMPOSITES = {"attn-lrp": composites.AttnLRP(epsilon=1e-9), "cp-lrp": composites.CPLRP(),
              "epsilon-plus": "epsilon-plus"}  # the last: Pass on the softmax


class Attend(nn.Module):
    """Self- or cross-attention of ``heads`` heads over projections of ``x`` (and ``memory``),
    with a mask for ``queries × keys``: none, boolean, additive ``-inf`` or a finite bias."""

    def __init__(self, mask: str = "none", causal: bool = False, scale: float | None = None,
                 queries: int = 6, keys: int = 6, heads: int = 2, width: int = 8) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(width, width) for _ in range(3))
        self.causal, self.scale, self.heads = causal, scale, heads
        g = torch.Generator().manual_seed(3)
        keep = torch.rand(1, 1, queries, keys, generator=g) > 0.3
        keep[..., 0] = True  # every query sees a key
        self.attn_mask = {"none": None, "bool": keep,
                          "-inf": torch.zeros(queries, keys).masked_fill(~keep[0, 0], -math.inf),
                          "float": torch.randn(heads, queries, keys, generator=g)}[mask]

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
        source = x if memory is None else memory
        q, k, v = self._heads(self.q(x)), self._heads(self.k(source)), self._heads(self.v(source))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.attn_mask,
                                             is_causal=self.causal, scale=self.scale)
        return out.transpose(1, 2).flatten(-2).sum(-1)


def _unfused(monkeypatch: pytest.MonkeyPatch, model: nn.Module, rule: object,
             **kwargs: object) -> lrpfx.Explainer:
    with monkeypatch.context() as m:
        m.setattr(lrpfx.compiler.passes, "fuse", lambda gm, keep: gm)
        return lrpfx.compile(model, rule, **kwargs)  # type: ignore[arg-type]


def _fused(explainer: lrpfx.Explainer) -> bool:
    return "lrpfx_attention_relevance" in explainer.program.code


CASES = [("none", False), ("bool", False), ("-inf", False), ("float", False), ("none", True)]


@pytest.mark.parametrize("preset", list(COMPOSITES))
@pytest.mark.parametrize(("mask", "causal"), CASES, ids=[f"{m}-{c}" for m, c in CASES])
def test_fused_equals_the_written_out_parts(monkeypatch, preset, mask, causal):
    torch.manual_seed(0)
    model, x = Attend(mask, causal).eval(), torch.randn(3, 6, 8)
    fused = lrpfx.compile(model, COMPOSITES[preset])
    assert _fused(fused)
    out = fused(x)
    plain = _unfused(monkeypatch, model, COMPOSITES[preset])(x)
    assert not _fused(_unfused(monkeypatch, model, COMPOSITES[preset]))
    torch.testing.assert_close(out.output, model(x), rtol=0, atol=0)  # the model's own call
    torch.testing.assert_close(out.relevance, plain.relevance, rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(attention, "BLOCK_ELEMENTS", 7)  # one query row at a time
    torch.testing.assert_close(fused(x).relevance, out.relevance, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize(("preset", "explain"), [("attn-lrp", "x"), ("attn-lrp", "memory"),
                                               ("cp-lrp", "memory")])
def test_cross_attention_with_a_scale_and_rows_in_blocks(monkeypatch, preset, explain):
    """Queries and keys of different lengths, an explicit scale; the queries' input or the keys'
    and values' explained (CP-LRP gives the queries nothing)."""
    torch.manual_seed(1)
    model = Attend("-inf", scale=0.3, queries=5, keys=9).eval()
    x, memory = torch.randn(2, 5, 8), torch.randn(2, 9, 8)
    monkeypatch.setattr(attention, "BLOCK_ELEMENTS", 2 * 2 * 9 * 2)  # blocks of two rows
    fused = lrpfx.compile(model, COMPOSITES[preset], example_inputs=(x, memory), explain=explain)
    plain = _unfused(monkeypatch, model, COMPOSITES[preset], example_inputs=(x, memory),
                     explain=explain)
    assert _fused(fused)
    expected = plain(x, memory).relevance
    assert expected.abs().amax() > 0
    torch.testing.assert_close(fused(x, memory).relevance, expected, rtol=1e-12, atol=1e-12)


def test_the_fused_node_shows_its_parts_rules():
    model = Attend("bool").eval()
    explainer = lrpfx.compile(model, composites.AttnLRP(epsilon=1e-7))
    node = next(n for n in explainer.graph_module.graph.nodes
                if n.target is F.scaled_dot_product_attention)
    rule = node.meta[lrpfx.meta.RULE]
    assert rule == Attention(scores=rules.Epsilon(1e-7), softmax=rules.SoftmaxTaylor(),
                             values=rules.Epsilon(1e-7), mask=rules.Norm(1e-7))
    assert describe_rule(rule) == ("Attention(scores=Epsilon(ε=1e-07), softmax=SoftmaxTaylor(), "
                                   "values=Epsilon(ε=1e-07), mask=Norm(stab=1e-07))")
    assert "lrpfx_attention_relevance" in explainer.program.code
    assert "softmax" not in explainer.program.code  # no attention matrix in the program


def test_parts_stay_where_the_kernel_does_not_apply():
    """Recorded parts, an ε scaled by the std of the scores, a mask computed from the input."""
    model = Attend("bool").eval()
    x = torch.randn(2, 4, 8)
    assert not _fused(lrpfx.compile(model, "attn-lrp", record=True))
    std = composites.AttnLRP(rules={composites.Kind("matmul"): rules.Epsilon(0.1, scale="std")})
    assert not _fused(lrpfx.compile(model, std))

    class InputMask(Attend):
        def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
            # a float mask computed from the input
            self.attn_mask = x[0, :, :1].transpose(0, 1).expand(4, 4)
            return super().forward(x)

    assert not _fused(lrpfx.compile(InputMask(queries=4, keys=4).eval(), "attn-lrp",
                                    example_inputs=x))


def test_an_exactly_causal_boolean_mask_runs_as_is_causal(monkeypatch):
    """On CPU the fused forward gives sdpa ``is_causal=True`` for a boolean mask that is exactly
    the causal one (what ``torch.export`` keeps of a language model's mask without padding):
    the same values, bit for bit, in half the work; any other mask is passed as it is."""
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 300, 16, dtype=torch.float32).unbind(0)
    tril = torch.ones(300, 300, dtype=torch.bool).tril()
    padded = tril.clone()
    padded[:, 290:] = False  # the last keys are padding
    sdpa, calls = F.scaled_dot_product_attention, []

    def spy(*args, **kwargs):
        calls.append(kwargs["is_causal"])
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    for mask in (tril, tril.expand(2, 1, 300, 300), padded):
        assert torch.equal(attention.forward(q, k, v, mask, False, None),
                           sdpa(q, k, v, attn_mask=mask))
    assert calls == [True, True, False]
