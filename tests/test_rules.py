"""Every rule on every linear layer type against the independent dense reference (float64)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx import rules
from lrpfx.composites import Kind
from tests import dense

LAYERS = {
    "linear": (lambda bias: nn.Linear(6, 5, bias=bias), (3, 6)),
    "conv1d": (lambda bias: nn.Conv1d(2, 4, 3, bias=bias), (2, 2, 7)),
    "conv1d-s2-p1-g2": (lambda bias: nn.Conv1d(2, 4, 3, 2, 1, groups=2, bias=bias), (2, 2, 8)),
    "conv2d": (lambda bias: nn.Conv2d(3, 4, 3, bias=bias), (2, 3, 5, 5)),
    "conv2d-s2-p1": (lambda bias: nn.Conv2d(3, 4, 3, 2, 1, bias=bias), (2, 3, 6, 6)),
    "conv2d-g3-d2": (lambda bias: nn.Conv2d(3, 6, 2, 1, 2, dilation=2, groups=3, bias=bias),
                     (2, 3, 5, 5)),
    "conv3d": (lambda bias: nn.Conv3d(2, 3, 2, bias=bias), (2, 2, 3, 4, 3)),
    "conv3d-s2-p1": (lambda bias: nn.Conv3d(2, 2, 3, 2, 1, bias=bias), (1, 2, 4, 4, 4)),
    "deconv1d-s2": (lambda bias: nn.ConvTranspose1d(2, 3, 3, 2, bias=bias), (2, 2, 5)),
    "deconv2d-s2-p1-op1-g2": (lambda bias: nn.ConvTranspose2d(4, 2, 3, 2, 1, output_padding=1,
                                                              groups=2, bias=bias), (2, 4, 3, 3)),
    "deconv2d-d2": (lambda bias: nn.ConvTranspose2d(3, 2, 2, dilation=2, bias=bias),
                    (2, 3, 3, 4)),
    "deconv3d": (lambda bias: nn.ConvTranspose3d(2, 2, 2, 2, bias=bias), (1, 2, 2, 3, 2)),
}

LOW = torch.tensor(-1.5)


def _low_high(shape):
    return torch.full(shape[1:], -1.5, dtype=torch.float64), torch.full(shape[1:], 2.0,
                                                                         dtype=torch.float64)


RULES = {
    "epsilon": (rules.Epsilon(1e-6), lambda W, b, x, R, lo, hi: dense.epsilon(W, b, x, R)),
    "epsilon-0.5": (rules.Epsilon(0.5), lambda W, b, x, R, lo, hi: dense.epsilon(W, b, x, R, 0.5)),
    "epsilon-nobias": (rules.Epsilon(1e-6, ignore_bias=True),
                       lambda W, b, x, R, lo, hi: dense.epsilon(W, b, x, R, ignore_bias=True)),
    "norm": (rules.Norm(), lambda W, b, x, R, lo, hi: dense.epsilon(W, b, x, R)),
    "norm-nobias": (rules.Norm(ignore_bias=True),
                    lambda W, b, x, R, lo, hi: dense.epsilon(W, b, x, R, ignore_bias=True)),
    "zplus": (rules.ZPlus(), lambda W, b, x, R, lo, hi: dense.zplus(W, b, x, R)),
    "zplus-nobias": (rules.ZPlus(ignore_bias=True),
                     lambda W, b, x, R, lo, hi: dense.zplus(W, b, x, R, ignore_bias=True)),
    "alpha2beta1": (rules.AlphaBeta(2, 1), lambda W, b, x, R, lo, hi: dense.alpha_beta(W, b, x, R)),
    "alpha1beta0": (rules.AlphaBeta(1, 0),
                    lambda W, b, x, R, lo, hi: dense.alpha_beta(W, b, x, R, 1.0, 0.0)),
    "gamma": (rules.Gamma(0.25), lambda W, b, x, R, lo, hi: dense.gamma(W, b, x, R)),
    "gamma-0.5-nobias": (rules.Gamma(0.5, ignore_bias=True),
                         lambda W, b, x, R, lo, hi: dense.gamma(W, b, x, R, 0.5, ignore_bias=True)),
    "zbox": (None, lambda W, b, x, R, lo, hi: dense.zbox(W, b, x, R, lo, hi)),
    "wsquare": (rules.WSquare(), lambda W, b, x, R, lo, hi: dense.wsquare(W, b, R)),
    "wsquare-nobias": (rules.WSquare(ignore_bias=True),
                       lambda W, b, x, R, lo, hi: dense.wsquare(W, b, R, ignore_bias=True)),
}


def _explain(model: nn.Module, rule: rules.Rule, x: torch.Tensor, R: torch.Tensor):
    explainer = lrpfx.compile(model, {Kind("conv", "dense"): rule})
    out = explainer(x, output_relevance=R)
    torch.testing.assert_close(out.output, model(x), rtol=1e-12, atol=1e-12)
    return out.relevance


def _check(got: torch.Tensor, expected: torch.Tensor) -> None:
    scale = expected.abs().max().clamp(min=1e-300)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10 * scale)


@pytest.mark.parametrize("after_relu", [False, True], ids=["signed", "after-relu"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("rule_name", list(RULES))
@pytest.mark.parametrize("layer_name", list(LAYERS))
def test_rule_matches_dense_reference(layer_name, rule_name, bias, after_relu):
    make, shape = LAYERS[layer_name]
    layer = make(bias).eval()
    if bias:  # a bias comparable to the contributions, so bias handling matters
        with torch.no_grad():
            layer.bias.normal_()
    rule, reference = RULES[rule_name]
    low, high = _low_high(shape)
    if rule is None:
        rule = rules.ZBox(low, high)
    x = torch.randn(shape)
    model = (nn.Sequential(nn.ReLU(), layer) if after_relu else layer).eval()
    inputs = x.relu() if after_relu else x
    with torch.no_grad():
        R = torch.randn_like(layer(inputs))
    got = _explain(model, rule, x, R)

    W, b = dense.as_matrix(layer, shape[1:])
    for i in range(shape[0]):
        xi = inputs[i].flatten()
        expected = reference(W, b, xi, R[i].flatten(), low.flatten(), high.flatten())
        _check(got[i].flatten(), expected)


@pytest.mark.parametrize("layer_name", list(LAYERS))
def test_flat_matches_dense_reference(layer_name):
    make, shape = LAYERS[layer_name]
    layer = make(True).eval()
    x = torch.randn(shape)
    with torch.no_grad():
        R = torch.randn_like(layer(x))
    got = _explain(layer, rules.Flat(), x, R)
    ones, _ = dense.as_matrix(dense.with_weight(layer, torch.ones_like), shape[1:])
    for i in range(shape[0]):
        _check(got[i].flatten(), dense.flat(ones, R[i].flatten()))


POOLS = {
    "avgpool2d": (nn.AvgPool2d(2), (2, 3, 6, 6)),
    "avgpool2d-k3-s2-p1": (nn.AvgPool2d(3, 2, 1), (2, 3, 7, 7)),
    "avgpool1d": (nn.AvgPool1d(3, 2), (2, 3, 9)),
    "avgpool3d": (nn.AvgPool3d(2), (1, 2, 4, 4, 4)),
    "adaptive2d": (nn.AdaptiveAvgPool2d((2, 3)), (2, 3, 5, 7)),
    "adaptive1d": (nn.AdaptiveAvgPool1d(3), (2, 3, 7)),
}


@pytest.mark.parametrize("pool_name", list(POOLS))
def test_pool_norm_matches_dense_reference(pool_name):
    pool, shape = POOLS[pool_name]
    pool.eval()
    x = torch.randn(shape)
    R = torch.randn_like(pool(x))
    got = lrpfx.compile(pool, "epsilon")(x, output_relevance=R).relevance
    W, b = dense.as_matrix(pool, shape[1:])
    for i in range(shape[0]):
        _check(got[i].flatten(), dense.epsilon(W, b, x[i].flatten(), R[i].flatten()))


@pytest.mark.parametrize("pool", [nn.MaxPool2d(2).eval(), nn.MaxPool2d(3, 2, 1).eval()],
                         ids=["k2", "k3s2p1"])
def test_maxpool_avg_mode_is_the_average_pool_z_rule(pool):
    x = torch.randn(2, 3, 7, 7)
    R = torch.randn_like(pool(x))
    got = lrpfx.compile(pool, "epsilon", maxpool="avg")(x, output_relevance=R).relevance
    average = nn.AvgPool2d(pool.kernel_size, pool.stride, pool.padding)
    W, b = dense.as_matrix(average, x.shape[1:])
    for i in range(2):
        _check(got[i].flatten(), dense.epsilon(W, b, x[i].flatten(), R[i].flatten()))


def test_maxpool_wta_mode_is_the_gradient():
    pool = nn.MaxPool2d(3, 2, 1).eval()
    x = torch.randn(2, 3, 7, 7, requires_grad=True)
    R = torch.randn_like(pool(x))
    got = lrpfx.compile(pool, "epsilon", maxpool="wta")(x, output_relevance=R).relevance
    (grad,) = torch.autograd.grad(pool(x), x, R)
    _check(got, grad)


@pytest.mark.parametrize("rule", [rules.Pass(), rules.Epsilon(), rules.ZPlus()],
                         ids=["pass", "epsilon", "zplus"])
def test_standalone_batchnorm_is_an_affine_layer(rule):
    bn = nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
        bn.weight.normal_()
        bn.bias.normal_()
    x = torch.randn(2, 3, 4, 4)
    R = torch.randn_like(x)
    got = lrpfx.compile(bn, {nn.BatchNorm2d: rule})(x, output_relevance=R).relevance
    if isinstance(rule, rules.Pass):
        _check(got, R)
        return
    W, b = dense.as_matrix(bn, x.shape[1:])
    reference = dense.epsilon if isinstance(rule, rules.Epsilon) else dense.zplus
    for i in range(2):
        _check(got[i].flatten(), reference(W, b, x[i].flatten(), R[i].flatten()))


def test_alpha_beta_rejects_invalid_parameters():
    with pytest.raises(ValueError, match="alpha - beta"):
        rules.AlphaBeta(2.0, 2.0)
