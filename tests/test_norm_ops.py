"""Functional BatchNorm and GroupNorm (``lrpfx.ops.norms``) against independent dense references
(float64), and the optional arguments of ``forward`` left at their defaults."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lrpfx
from lrpfx import rules
from lrpfx.composites import Kind
from lrpfx.frontend import canonical
from tests import dense


def _check(got: torch.Tensor, expected: torch.Tensor) -> None:
    scale = expected.abs().max().clamp(min=1e-300)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10 * scale)


def _randomized(bn: nn.BatchNorm2d) -> nn.BatchNorm2d:
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
        bn.weight.normal_()
        bn.bias.normal_()
    return bn.eval()


class BatchNormAct(nn.Module):
    """``F.batch_norm`` as timm's ``BatchNormAct2d`` calls it, after a conv or alone."""

    def __init__(self, conv: bool, training: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3) if conv else nn.Identity()
        self.bn = _randomized(nn.BatchNorm2d(4 if conv else 3))
        self.training_flag = training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        bn = self.bn
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                            self.training_flag, 0.1, bn.eps)


def test_functional_batchnorm_after_a_conv_is_folded_into_it():
    model = BatchNormAct(conv=True).eval()
    gm = canonical(model)
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert F.batch_norm not in targets and lrpfx.runtime.affine not in targets
    assert targets == [F.conv2d]
    x = torch.randn(2, 3, 6, 6)
    R = torch.randn(2, 4, 4, 4)
    out = lrpfx.compile(model, {Kind("conv"): rules.Epsilon()})(x, output_relevance=R)
    torch.testing.assert_close(out.output, model(x), rtol=1e-12, atol=1e-12)
    folded = nn.Sequential(model.conv, model.bn).eval()  # conv then BN: one linear layer
    W, b = dense.as_matrix(folded, (3, 6, 6))
    for i in range(2):
        _check(out.relevance[i].flatten(),
               dense.epsilon(W, b, x[i].flatten(), R[i].flatten()))


@pytest.mark.parametrize("rule", [rules.Pass(), rules.Epsilon(), rules.ZPlus()],
                         ids=["pass", "epsilon", "zplus"])
def test_standalone_functional_batchnorm_is_an_affine_layer(rule):
    model = BatchNormAct(conv=False).eval()
    x = torch.randn(2, 3, 4, 4)
    R = torch.randn_like(x)
    out = lrpfx.compile(model, {Kind("batchnorm"): rule})(x, output_relevance=R)
    torch.testing.assert_close(out.output, model(x), rtol=1e-12, atol=1e-12)
    if isinstance(rule, rules.Pass):
        _check(out.relevance, R)
        return
    W, b = dense.as_matrix(model.bn, x.shape[1:])
    reference = dense.epsilon if isinstance(rule, rules.Epsilon) else dense.zplus
    for i in range(2):
        _check(out.relevance[i].flatten(), reference(W, b, x[i].flatten(), R[i].flatten()))


def test_functional_batchnorm_with_batch_statistics_is_refused():
    with pytest.raises(lrpfx.UnsupportedOperationError, match="batch statistics"):
        lrpfx.compile(BatchNormAct(conv=True, training=True).eval())


class FrozenGroupNorm(nn.Module):
    """GroupNorm with σ computed from a fixed ``x0``: the linear map the LN-rule sees."""

    def __init__(self, gn: nn.GroupNorm, x0: torch.Tensor) -> None:
        super().__init__()
        self.gn, self.x0 = gn, x0

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        g = self.gn.num_groups
        grouped = v.reshape(v.shape[0], g, -1)
        sigma = (self.x0.reshape(1, g, -1).var(-1, unbiased=False, keepdim=True)
                 + self.gn.eps).sqrt()
        y = ((grouped - grouped.mean(-1, keepdim=True)) / sigma).reshape(v.shape)
        return y * self.gn.weight.reshape(1, -1, 1, 1)


@pytest.mark.parametrize("ignore_bias", [False, True], ids=["bias", "nobias"])
@pytest.mark.parametrize("groups", [1, 2, 6])
def test_group_norm_ln_rule_matches_dense_reference(groups, ignore_bias):
    gn = nn.GroupNorm(groups, 6).eval()
    with torch.no_grad():
        gn.weight.normal_()
        gn.bias.normal_()
    x = torch.randn(2, 6, 3, 3)
    R = torch.randn_like(x)
    rule = rules.LNRule(ignore_bias=ignore_bias)
    out = lrpfx.compile(gn, {Kind("layernorm"): rule})(x, output_relevance=R)
    torch.testing.assert_close(out.output, gn(x), rtol=1e-12, atol=1e-12)
    for i in range(2):
        W, _ = dense.as_matrix(FrozenGroupNorm(gn, x[i]), x.shape[1:])
        bias = gn.bias.repeat_interleave(9)
        expected = dense.epsilon(W, bias, x[i].flatten(), R[i].flatten(), ignore_bias=ignore_bias)
        _check(out.relevance[i].flatten(), expected.detach())


def test_functional_group_norm_is_the_module():
    gn = nn.GroupNorm(3, 6).eval()

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.gn = gn

        def forward(self, x):
            return F.group_norm(x, 3, self.gn.weight, self.gn.bias, eps=self.gn.eps)

    x = torch.randn(2, 6, 4, 4)
    R = torch.randn_like(x)
    got = lrpfx.compile(Functional().eval(), "epsilon")(x, output_relevance=R).relevance
    _check(got, lrpfx.compile(gn, "epsilon")(x, output_relevance=R).relevance)


class Optional(nn.Module):
    """timm's ``forward(x, attn_mask=None, is_causal=False)``: only ``x`` is given."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x, attn_mask=None, is_causal=False, *, scale=1.0):
        y = self.fc(x) * scale
        if attn_mask is not None:
            y = y + attn_mask
        return -y if is_causal else y


def test_optional_arguments_at_their_defaults_are_not_inputs():
    model = Optional().eval()
    x = torch.randn(2, 4)
    explainer = lrpfx.compile(model, "epsilon")
    torch.testing.assert_close(explainer(x).output, model(x))
    static = lrpfx.compile(model, "epsilon", example_inputs=x)
    torch.testing.assert_close(static(x).output, model(x))
    fixed = lrpfx.compile(model, "epsilon", concrete_args={"is_causal": True})
    torch.testing.assert_close(fixed(x).output, -model(x))


def test_an_unsupported_call_inside_a_submodule_names_the_module():
    model = nn.Sequential(nn.ReLU(), BatchNormAct(conv=True, training=True)).eval()
    with pytest.raises(lrpfx.UnsupportedOperationError) as info:
        lrpfx.compile(model)
    assert "batch_norm (F.batch_norm, in module '1' (BatchNormAct)) at File" in str(info.value)
    assert "batch statistics" in str(info.value)
