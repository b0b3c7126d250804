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


def _layer_norm(m: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm with its standard deviation held constant (the LN-rule in the gradient frame)."""
    mean = x.mean(-1, keepdim=True)
    sigma = torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + m.eps).detach()
    return (x - mean) / sigma * m.weight + m.bias


def _identity_rule(f, x: torch.Tensor) -> torch.Tensor:
    """``f(x)`` forward, gradient ``f(x) / x``: relevance passes an elementwise activation."""
    y = f(x)
    return x * (y / x).detach()


def _halved(product: torch.Tensor) -> torch.Tensor:
    return 0.5 * product + 0.5 * product.detach()


def _attention(m: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    e, h = m.embed_dim, m.num_heads
    q, k, v = (F.linear(x, m.in_proj_weight[i * e:(i + 1) * e],
                        m.in_proj_bias[i * e:(i + 1) * e]) for i in range(3))
    q, k, v = (t.reshape(t.shape[0], t.shape[1], h, e // h).transpose(1, 2) for t in (q, k, v))
    scores = _halved(q @ k.transpose(-2, -1)) / (e // h) ** 0.5
    mixed = _halved(F.softmax(scores, -1) @ v)
    return m.out_proj(mixed.transpose(1, 2).reshape(x.shape[0], x.shape[1], e))


def vit_input_times_modified_gradient(model, x: torch.Tensor, target: int) -> torch.Tensor:
    """AttnLRP on torchvision's VisionTransformer in the gradient frame, written from the
    model's tensors: plain gradients through the linear maps, the softmax, the sums and the
    class-token routing; the standard deviation of each LayerNorm held constant; the identity
    rule through GELU; halved after each product of two computed tensors."""
    x = x.clone().requires_grad_(True)
    h = model.conv_proj(x).flatten(2).transpose(1, 2)
    h = torch.cat([model.class_token.expand(h.shape[0], -1, -1), h], 1)
    h = h + model.encoder.pos_embedding
    for layer in model.encoder.layers:
        h = h + _attention(layer.self_attention, _layer_norm(layer.ln_1, h))
        mlp = layer.mlp
        h = h + mlp[3](_identity_rule(mlp[1], mlp[0](_layer_norm(layer.ln_2, h))))
    out = model.heads(_layer_norm(model.encoder.ln, h)[:, 0])
    (grad,) = torch.autograd.grad(out[:, target].sum(), x)
    return (x * grad).detach()


def test_vit_with_attnlrp_rules_equals_input_times_modified_gradient():
    """A small torchvision VisionTransformer (two layers, two heads), float64, ε → 0: lrpfx's
    relevance equals the independent gradient-frame reference."""
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
        num_classes=3).double().eval()
    nn.init.normal_(model.heads.head.weight, std=0.5)
    for p in (model.class_token, model.encoder.pos_embedding):
        nn.init.normal_(p, std=0.5)
    attn_lrp = {**ATTN_LRP, composites.Kind("conv", "dense", "matmul"): rules.Epsilon(EPS),
                composites.Kind("add"): rules.Norm(EPS),
                composites.Kind("layernorm"): rules.LNRule(EPS),
                composites.Kind("activation"): rules.Pass()}
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    got = lrpfx.compile(model, attn_lrp)(x, target=2).relevance
    expected = vit_input_times_modified_gradient(model, x, 2)
    assert expected.flatten(1).abs().amax(1).min() > 1e-3  # not zeros compared
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-8 * expected.abs().max().item())


def test_the_attn_lrp_preset_is_those_rules_and_cp_lrp_stops_at_the_softmax():
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
        num_classes=3).double().eval()
    nn.init.normal_(model.heads.head.weight, std=0.5)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    expected = vit_input_times_modified_gradient(model, x, 0)
    for preset in (composites.AttnLRP(epsilon=EPS), "attn-lrp"):
        explainer = lrpfx.compile(model, preset)
        got = explainer(x, target=0).relevance
        if preset != "attn-lrp":  # the named preset has ε = 1e-6: close, not equal
            torch.testing.assert_close(got, expected, rtol=1e-8,
                                       atol=1e-8 * expected.abs().max().item())
        assert "softmax_taylor" in explainer.code
    attention = "encoder.layers.encoder_layer_0.self_attention"
    cp = lrpfx.compile(model, "cp-lrp", record=[f"{attention}.q_proj", f"{attention}.v_proj"])
    out = cp(x, target=0)
    assert "softmax_taylor" not in cp.code and torch.isfinite(out.relevance).all()
    assert not out.layers[f"{attention}.q_proj"].any()  # the scores get nothing
    assert out.layers[f"{attention}.v_proj"].flatten(1).any(1).all()  # the values take it
