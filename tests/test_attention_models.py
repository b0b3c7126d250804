"""Attention models explained with AttnLRP's rules equal the independent gradient-frame reference
(``tests/gradient_frame.py``: input × a modified gradient, by autograd on the eager model),
float64, ε → 0."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import lrpfx
from lrpfx import composites
from tests.gradient_frame import input_times_modified_gradient
from tests.test_decompositions import vit_input_times_modified_gradient

EPS = 1e-15


def _random_biases(model: nn.Module, std: float = 0.1) -> nn.Module:
    """Non-zero biases and embeddings, so that they are part of what is compared."""
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if name.endswith(("bias", "class_token", "pos_embedding", "head.weight")):
            nn.init.normal_(p, std=std if "head" not in name else 0.5)
    return model


def _small_vit() -> nn.Module:
    return _random_biases(torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
        num_classes=3).double().eval())


def _small_maxvit() -> nn.Module:
    return _random_biases(torchvision.models.MaxVit(
        input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[16, 32],
        block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.0, num_classes=3
    ).double().eval())


def _small_swin(v2: bool = False) -> nn.Module:
    from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformerBlockV2

    version = {"block": SwinTransformerBlockV2, "downsample_layer": PatchMergingV2} if v2 else {}
    return _random_biases(torchvision.models.SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=[4, 4],
        stochastic_depth_prob=0.0, num_classes=3, **version).double().eval())


def _assert_equal_to_reference(model: nn.Module, x: torch.Tensor, target: int) -> None:
    """Output and relevance; with static shapes (``example_inputs``), which Swin needs."""
    explainer = lrpfx.compile(model, composites.AttnLRP(epsilon=EPS), example_inputs=x)
    out = explainer(x, target=target)
    torch.testing.assert_close(out.output, model(x), rtol=1e-10, atol=1e-12)
    expected = input_times_modified_gradient(model, x, target)
    assert expected.flatten(1).abs().amax(1).min() > 0  # not zeros compared
    scale = expected.abs().max().item()
    torch.testing.assert_close(out.relevance, expected, rtol=1e-8, atol=1e-8 * scale)


def test_the_reference_is_the_one_written_for_vit_by_hand():
    """The generic reference agrees with the ViT reference written out layer by layer."""
    torch.manual_seed(0)
    model = _small_vit()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(input_times_modified_gradient(model, x, 1),
                               vit_input_times_modified_gradient(model, x, 1),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("make", [_small_vit, _small_maxvit, _small_swin,
                                  lambda: _small_swin(v2=True)],
                         ids=["vit", "maxvit", "swin", "swin-v2"])
def test_attn_lrp_equals_input_times_modified_gradient(make):
    """36 × 36 input, 4 × 4 patches, 4 × 4 windows: Swin pads 9 × 9 tokens to 12 × 12 and
    shifts its windows (masks); the other models take 32 × 32."""
    torch.manual_seed(0)
    size = 36 if make not in (_small_vit, _small_maxvit) else 32
    _assert_equal_to_reference(make(), torch.randn(2, 3, size, size, dtype=torch.float64), 2)


def test_swin_without_example_inputs_is_told_to_pass_them():
    with pytest.raises(lrpfx.ExampleInputsNeededError,
                       match=r"shifted_window_attention.*wrapped with torch.fx.wrap.*"
                             r"pass example_inputs="):
        lrpfx.compile(_small_swin(), "attn-lrp")


def test_static_shapes_refuse_another_shape_and_leave_the_model_as_it_was():
    model = _small_swin()
    attributes = dict(vars(model))
    x = torch.randn(1, 3, 36, 36, dtype=torch.float64)
    explainer = lrpfx.compile(model, "attn-lrp", example_inputs=x)
    assert vars(model).keys() == attributes.keys()  # no traced constants left on the model
    assert explainer(x, target=0).relevance.shape == x.shape
    with pytest.raises(ValueError, match=r"example_inputs of shape \(1, 3, 36, 36\).*"
                                         r"x has shape \(2, 3, 36, 36\)"):
        explainer(torch.randn(2, 3, 36, 36, dtype=torch.float64), target=0)


@pytest.mark.slow
@pytest.mark.parametrize("name, size", [("vit_b_16", 64), ("maxvit_t", 224), ("swin_t", 64),
                                        ("swin_v2_t", 64)])
def test_torchvision_attention_models_equal_the_reference(name, size):
    """torchvision's own architectures, random weights, at the smallest input they take."""
    torch.manual_seed(0)
    kwargs = {"image_size": size} if name.startswith("vit") else {}
    model = _random_biases(getattr(torchvision.models, name)(weights=None, **kwargs))
    _assert_equal_to_reference(model.double().eval(),
                               torch.randn(1, 3, size, size, dtype=torch.float64), 3)


def _zero_biases(model: nn.Module) -> nn.Module:
    """Every additive constant zero: biases, BatchNorm shifts, the class token, positions."""
    for name, p in model.named_parameters():
        if name.endswith(("bias", "class_token", "pos_embedding", "relative_position_bias_table")):
            nn.init.zeros_(p)
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            nn.init.zeros_(b)
    return model


@pytest.mark.parametrize("make", [_small_vit, _small_maxvit, _small_swin],
                         ids=["vit", "maxvit", "swin"])
def test_cp_lrp_with_zero_biases_conserves_the_logit(make):
    """CP-LRP holds the attention weights constant: with no additive constant anywhere, every
    rule conserves, so the input's relevance sums to the explained logit."""
    torch.manual_seed(0)
    model = _zero_biases(make())
    size = 36 if make is _small_swin else 32
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    out = lrpfx.compile(model, composites.CPLRP(epsilon=1e-12), example_inputs=x)(x, target=1)
    torch.testing.assert_close(out.relevance.sum((1, 2, 3)), out.output[:, 1],
                               rtol=1e-6, atol=1e-9)


def test_the_vit_gamma_preset_reaches_every_linear_call_site_with_its_own_gamma():
    """γ for the patch convolution and γ for linear layers, the attention's q/k/v and output
    projections included (LXT's recipe, by module type, never reaches them)."""
    model = _small_vit()
    explainer = lrpfx.compile(model, composites.AttnLRPGamma(conv_gamma=0.5, linear_gamma=0.1))
    rules_by_path = {n.meta.get("lrpfx.path"): n.meta.get("lrpfx.rule")
                     for n in explainer.graph_module.graph.nodes}
    attention = "encoder.layers.encoder_layer_1.self_attention"
    assert rules_by_path["conv_proj"] == lrpfx.rules.Gamma(0.5, 1e-6)
    for part in ("q_proj", "k_proj", "v_proj", "out_proj"):
        assert rules_by_path[f"{attention}.{part}"] == lrpfx.rules.Gamma(0.1, 1e-6), part
    assert rules_by_path["heads.head"] == lrpfx.rules.Gamma(0.1, 1e-6)
    assert isinstance(rules_by_path[f"{attention}.softmax"], lrpfx.rules.SoftmaxTaylor)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    out = lrpfx.compile(model, "attn-lrp-gamma")(x, target=0)
    assert torch.isfinite(out.relevance).all() and out.relevance.flatten(1).any(1).all()
    plain = lrpfx.compile(model, composites.AttnLRP())(x, target=0).relevance
    assert not torch.allclose(out.relevance, plain)  # γ changed the explanation
