"""nn.MultiheadAttention traced as the ops it computes: the module's output, the relevance of the
same attention written out by hand, call-site names for its parts, torchvision's ViT."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import lrpfx
from lrpfx import composites, rules

EPS = 1e-12
ATTN_LRP = {composites.Kind("dense", "matmul"): rules.Epsilon(EPS),
            composites.Kind("sum"): rules.Norm(EPS),
            composites.Kind("softmax"): rules.SoftmaxTaylor()}


class WithModule(nn.Module):
    def __init__(self, batch_first: bool = True) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(8, 2, batch_first=batch_first)
        self.head = nn.Linear(8, 3)
        self.batch_first = batch_first

    def forward(self, x):  # x: (batch, length, features) either way
        if not self.batch_first:
            x = x.transpose(0, 1)  # the module takes (length, batch, features)
        y, _ = self.attention(x, x, x, need_weights=False)
        return self.head(y.mean(1 if self.batch_first else 0))


class ByHand(nn.Module):
    """The same attention written with the module's tensors: projections, heads, softmax."""

    def __init__(self, model: WithModule) -> None:
        super().__init__()
        self.m, self.head = model.attention, model.head

    def forward(self, x):
        e, h = 8, 2
        q, k, v = (F.linear(x, self.m.in_proj_weight[i * e:(i + 1) * e],
                            self.m.in_proj_bias[i * e:(i + 1) * e]) for i in range(3))
        q, k, v = (t.reshape(t.shape[0], t.shape[1], h, e // h).transpose(1, 2)
                   for t in (q, k, v))
        mixed = F.softmax(q @ k.transpose(-2, -1) / 2.0, -1) @ v
        mixed = mixed.transpose(1, 2).reshape(x.shape[0], x.shape[1], e)
        return self.head(self.m.out_proj(mixed).mean(1))


@pytest.mark.parametrize("batch_first", [True, False])
def test_the_decomposed_module_computes_the_modules_output(batch_first):
    torch.manual_seed(0)
    model = WithModule(batch_first).double().eval()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    out = lrpfx.compile(model, "epsilon")(x, target=0)
    torch.testing.assert_close(out.output, model(x), rtol=1e-12, atol=1e-12)
    assert out.relevance.shape == x.shape and out.relevance.flatten(1).any(1).all()


def test_the_decomposed_module_explains_as_the_attention_written_by_hand():
    torch.manual_seed(0)
    model = WithModule().double().eval()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    got = lrpfx.compile(model, ATTN_LRP)(x, target=2).relevance
    expected = lrpfx.compile(ByHand(model).eval(), ATTN_LRP)(x, target=2).relevance
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_the_parts_of_the_module_are_named_call_sites():
    model = WithModule().eval()
    rule = rules.Epsilon(0.25)
    explainer = lrpfx.compile(model, {"attention.q_proj": rule, **ATTN_LRP},
                              record=["attention.q_proj", "attention.softmax", "attention.mix"])
    nodes = {n.meta.get("lrpfx.path"): n for n in explainer.graph_module.graph.nodes}
    assert nodes["attention.q_proj"].meta["lrpfx.rule"] is rule
    assert nodes["attention.k_proj"].meta["lrpfx.rule"] == rules.Epsilon(EPS)
    out = explainer(torch.randn(2, 5, 8))
    assert set(out.layers) == {"attention.q_proj", "attention.softmax", "attention.mix"}


def test_masks_are_refused_by_name():
    class Masked(WithModule):
        def forward(self, x):
            mask = torch.ones(5, 5, dtype=torch.bool).triu(1)
            y, _ = self.attention(x, x, x, attn_mask=mask)
            return self.head(y.mean(1))

    with pytest.raises(lrpfx.TraceError, match="without attn_mask"):
        lrpfx.compile(Masked().eval())


def test_torchvision_vit_compiles_and_explains():
    """vit_b_16 at 32×32 (four patches): the output is the model's, the relevance is finite
    and not zero (its head is re-initialized: torchvision's starts at zero)."""
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None, image_size=32).float().eval()
    nn.init.normal_(model.heads.head.weight, std=0.02)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float32)
    explainer = lrpfx.compile(model, "epsilon")
    out = explainer(x, target=1)
    torch.testing.assert_close(out.output, model(x), rtol=1e-4, atol=1e-5)
    assert torch.isfinite(out.relevance).all() and out.relevance.flatten(1).any(1).all()
    assert "encoder.layers.encoder_layer_11.self_attention.out_proj" in {
        n.meta.get("lrpfx.path") for n in explainer.graph_module.graph.nodes}
