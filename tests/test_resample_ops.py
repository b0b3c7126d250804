"""Interpolation, windows (``F.unfold``, ``Tensor.unfold``), ``amax``, ``reshape_as``,
``addcmul`` and norms written by hand against independent dense references (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lrpfx
from lrpfx import composites, rules
from lrpfx.composites import Kind
from tests import dense


def _check(got: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-10) -> None:
    scale = expected.abs().max().clamp(min=1e-300)
    torch.testing.assert_close(got, expected.detach(), rtol=rtol, atol=rtol * scale)


class Fn(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _explain(model: nn.Module, x: torch.Tensor, composite=None) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        R = torch.randn_like(model(x))
    out = lrpfx.compile(model, composite or {Kind("avgpool"): rules.Epsilon()})(
        x, output_relevance=R)
    torch.testing.assert_close(out.output, model(x), rtol=1e-12, atol=1e-12)
    return out.relevance, R


WEIGHING = {
    "bilinear": (nn.Upsample(scale_factor=2, mode="bilinear"), (2, 2, 3, 4)),
    "bilinear-aligned-size": (nn.Upsample(size=(5, 7), mode="bilinear", align_corners=True),
                              (2, 2, 3, 4)),
    "bicubic-down": (Fn(lambda x: F.interpolate(x, size=(3, 2), mode="bicubic")), (2, 2, 5, 5)),
    "linear-1d": (Fn(lambda x: F.interpolate(x, scale_factor=1.5, mode="linear")), (2, 3, 4)),
}
COPYING = {
    "nearest-2d": (nn.Upsample(scale_factor=2), (2, 2, 3, 3)),
    "nearest-exact-size": (Fn(lambda x: F.interpolate(x, size=(5, 3), mode="nearest-exact")),
                           (2, 2, 3, 4)),
    "im2col": (nn.Unfold(3, padding=1, stride=2), (2, 2, 5, 5)),
    "windows": (Fn(lambda x: x.unfold(2, 3, 2).unfold(3, 2, 1)), (2, 2, 7, 5)),
    "reshape_as": (Fn(lambda x: (x * 2).reshape_as(x.flatten(1))), (2, 3, 4)),
    "reflect-2d": (nn.ReflectionPad2d((2, 1, 0, 2)), (2, 2, 3, 4)),
    "replicate-1d": (Fn(lambda x: F.pad(x, (3, 1), mode="replicate")), (2, 2, 3)),
    "circular-2d": (nn.CircularPad2d((1, 2, 2, 1)), (2, 2, 3, 3)),
    "reflect-3d": (Fn(lambda x: F.pad(x, (1, 1, 0, 1, 1, 0), "reflect")), (1, 2, 3, 3, 2)),
    "cast": (Fn(lambda x: x.to(dtype=torch.float64).type_as(x).to(x)), (2, 3, 4)),
}


@pytest.mark.parametrize("name", list(WEIGHING))
def test_interpolation_takes_the_epsilon_rule(name):
    layer, shape = WEIGHING[name]
    x = torch.randn(shape)
    got, R = _explain(layer.eval(), x)
    W, b = dense.as_matrix(layer, shape[1:])
    for i in range(shape[0]):
        _check(got[i].flatten(), dense.epsilon(W, b, x[i].flatten(), R[i].flatten()))


@pytest.mark.parametrize("name", list(COPYING))
def test_copies_send_relevance_back_to_their_source(name):
    layer, shape = COPYING[name]
    x = torch.randn(shape)
    got, R = _explain(layer.eval(), x, composites.EpsilonOnly())
    W, _ = dense.as_matrix(layer, shape[1:])  # a 0/1 matrix (x2 for reshape_as: a scale)
    for i in range(shape[0]):
        _check(got[i].flatten(), (W != 0).to(W.dtype).T @ R[i].flatten())


@pytest.mark.parametrize("keepdim", [True, False])
def test_amax_is_winner_takes_all_with_ties_shared(keepdim):
    x = torch.randint(0, 3, (2, 3, 4, 4)).to(torch.float64)  # many ties
    layer = Fn(lambda v: v.amax((2, 3), keepdim=keepdim)).eval()
    got, R = _explain(layer, x, composites.EpsilonOnly())
    winners = (x == x.amax((2, 3), keepdim=True)).to(x.dtype)
    expected = winners * R.reshape(2, 3, 1, 1) / winners.sum((2, 3), keepdim=True)
    _check(got, expected)


@pytest.mark.parametrize("ignore_bias", [False, True])
def test_addcmul_with_a_constant_factor_is_a_scaled_layer(ignore_bias):
    weight, bias = torch.randn(1, 4, 1, 1), torch.randn(1, 4, 1, 1)
    layer = Fn(lambda v: torch.addcmul(bias, weight, v, value=0.5)).eval()
    x = torch.randn(2, 4, 3, 3)
    got, R = _explain(layer, x, {Kind("add"): rules.Norm(ignore_bias=ignore_bias)})
    if ignore_bias:  # the bias ignored: the identity
        _check(got, R)
        return
    W, b = dense.as_matrix(layer, x.shape[1:])
    for i in range(2):
        _check(got[i].flatten(), dense.epsilon(W, b, x[i].flatten(), R[i].flatten()))


def test_addcmul_of_two_computed_factors_is_refused_naming_the_node():
    layer = Fn(lambda v: torch.addcmul(v, v, v.relu())).eval()
    with pytest.raises(lrpfx.UnsupportedOperationError, match="addcmul"):
        lrpfx.compile(layer, "epsilon")


class HandNorm(nn.Module):
    """LayerNorm over channels written by hand, as timm's ``LayerNorm2d`` fallback does."""

    def __init__(self, statistic: str) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.randn(4)), nn.Parameter(torch.randn(4))
        self.statistic = statistic

    def forward(self, x):
        if self.statistic == "var_mean":  # the mean held constant with the variance
            v, u = torch.var_mean(x, dim=1, unbiased=False, keepdim=True)
            x = (x - u) * torch.rsqrt(v + 1e-5)
        elif self.statistic == "rsqrt":
            x = (x - x.mean(1, keepdim=True)) * torch.rsqrt(torch.var(x, 1, keepdim=True,
                                                                      unbiased=False) + 1e-5)
        else:
            x = (x - x.mean(1, keepdim=True)) / (x.var(1, unbiased=False, keepdim=True)
                                                  + 1e-5).sqrt()
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


@pytest.mark.parametrize("statistic", ["var", "rsqrt"])
def test_a_norm_written_by_hand_is_the_ln_rule(statistic):
    """σ held constant: the same relevance as ``F.layer_norm`` with the LN-rule (up to the
    stabilizers of the intermediate sums, 1e-12 here)."""
    hand = HandNorm(statistic).eval()
    ln = nn.LayerNorm(4).eval()
    ln.load_state_dict({"weight": hand.weight.detach(), "bias": hand.bias.detach()})
    reference = nn.Sequential(Fn(lambda v: v.permute(0, 2, 3, 1)), ln,
                              Fn(lambda v: v.permute(0, 3, 1, 2))).eval()
    x = torch.randn(2, 4, 3, 3)
    composite = composites.EpsilonOnly(epsilon=1e-12, stabilizer=1e-12)
    got, R = _explain(hand, x, composite)
    expected = lrpfx.compile(reference, composite)(x, output_relevance=R).relevance
    _check(got, expected, rtol=1e-6)


def test_var_mean_holds_both_statistics_constant():
    """Mean and variance constant, biases ignored: every step is a scale or a shift by a
    constant, so the relevance passes elementwise unchanged."""
    hand = HandNorm("var_mean").eval()
    x = torch.randn(2, 4, 3, 3)
    got, R = _explain(hand, x, composites.EpsilonOnly(ignore_bias=True))
    _check(got, R)


@pytest.mark.parametrize("pad", [nn.ZeroPad2d((1, 0, 2, 1)), nn.ConstantPad2d(1, 0.5)],
                         ids=["zero", "constant"])
def test_pad_modules_are_f_pad(pad):
    x = torch.randn(2, 2, 3, 3)
    got, R = _explain(pad.eval(), x, composites.EpsilonOnly())
    left, right, top, bottom = pad.padding
    _check(got, R[:, :, top:R.shape[2] - bottom, left:R.shape[3] - right])


def test_pad_by_amounts_computed_from_the_shape():
    """timm pads to a multiple of a window size: ``(-w) % 4`` of the traced shape (a node)."""
    layer = Fn(lambda v: F.pad(v, (0, (-v.shape[-1]) % 4, 0, (-v.shape[-2]) % 4))).eval()
    x = torch.randn(2, 2, 3, 5)
    got, R = _explain(layer, x, composites.EpsilonOnly())
    assert R.shape == (2, 2, 4, 8)
    _check(got, R[:, :, :3, :5])


@pytest.mark.parametrize("shape", ["shape", "size"])
def test_expand_and_view_to_a_traced_shape(shape):
    """timm's EvoNorm: ``std.expand(x.shape)``; ``view(x.size())``."""
    def fn(v):
        s = v.shape if shape == "shape" else v.size()
        return v.sum(1, keepdim=True).expand(s).view(s) + v

    layer = Fn(fn).eval()
    x = torch.randn(2, 3, 4)
    got, R = _explain(layer, x, composites.EpsilonOnly(1e-12, stabilizer=1e-12))
    W, b = dense.as_matrix(layer, x.shape[1:])  # layer-wise ε equals the map's, up to ε
    for i in range(2):
        _check(got[i].flatten(), dense.epsilon(W, b, x[i].flatten(), R[i].flatten(), 1e-12),
               rtol=1e-8)


def test_reshape_to_a_shape_computed_from_the_traced_shape():
    """timm's MaxViT: ``x.reshape(restore_shape + (-1,))`` with ``restore_shape = x.shape[:-1]``."""
    layer = Fn(lambda v: (v.transpose(1, 2) * 3).reshape(v.shape[:-1] + (-1,))).eval()
    x = torch.randn(2, 3, 4)
    got, R = _explain(layer, x, composites.EpsilonOnly())
    _check(got, R.reshape(2, 4, 3).transpose(1, 2))


def test_division_by_a_sum_of_the_numerator_is_a_scale():
    """ConViT: ``attn /= attn.sum(-1).unsqueeze(-1)``: the normalizer held constant, so the
    relevance passes; a divisor computed otherwise from the input is refused."""
    def renormalize(v):
        a = v.sigmoid()
        a /= a.sum(dim=-1).unsqueeze(-1) + 1e-6
        return a

    got, R = _explain(Fn(renormalize).eval(), torch.randn(2, 3, 4), composites.EpsilonOnly())
    _check(got, R)
    with pytest.raises(lrpfx.UnsupportedOperationError, match="division by a tensor"):
        lrpfx.compile(Fn(lambda v: v / v.relu().sum(-1, keepdim=True)).eval(), "epsilon")


@pytest.mark.parametrize("square", ["pow", "operator", "square"])
def test_rms_norm_written_by_hand_is_the_scale_rule(square):
    """timm's ``rms_norm2d``: ``x * rsqrt(mean(x²) + eps) * w``: the normalizer held constant,
    as ``F.rms_norm`` (AttnLRP's identity rule): relevance passes elementwise."""
    def rms(v):
        sq = {"pow": lambda t: t.pow(2), "operator": lambda t: t ** 2,
              "square": lambda t: t.square()}[square](v)
        return v * torch.rsqrt(torch.mean(sq, dim=1, keepdim=True) + 1e-5) * 1.5

    x = torch.randn(2, 4, 3)
    got, R = _explain(Fn(rms).eval(), x, composites.EpsilonOnly())
    _check(got, R)


@pytest.mark.parametrize("dim", [0, 1, None])
def test_repeat_interleave_adds_the_copies_up(dim):
    """GCViT: ``q_global.repeat_interleave(B // B_, dim=0)`` (a number computed from shapes)."""
    layer = Fn(lambda v: (v * 2).repeat_interleave(v.shape[0] // 1 + 1, dim=dim)).eval()
    x = torch.randn(2, 3, 2)
    got, R = _explain(layer, x, composites.EpsilonOnly())
    copies = torch.arange(x.numel()).reshape(x.shape).repeat_interleave(3, dim=dim)
    expected = torch.zeros(x.numel()).index_add_(0, copies.flatten(), R.flatten())
    _check(got, expected.reshape(x.shape))


@pytest.mark.parametrize("layer", [nn.Fold((4, 5), (2, 3), stride=1),
                                   nn.Fold((6, 6), 3, padding=1, stride=2, dilation=1)],
                         ids=["overlapping", "strided"])
def test_fold_sums_windows_by_the_epsilon_rule(layer):
    blocks = F.unfold(torch.zeros(1, 2, *layer.output_size), layer.kernel_size,
                      layer.dilation, layer.padding, layer.stride).shape[1:]
    x = torch.randn(2, *blocks)
    got, R = _explain(layer.eval(), x, {Kind("sum"): rules.Epsilon()})
    W, b = dense.as_matrix(layer, tuple(blocks))
    for i in range(2):
        _check(got[i].flatten(), dense.epsilon(W, b, x[i].flatten(), R[i].flatten()))


def test_a_cast_sends_relevance_back_in_the_input_dtype():
    layer = Fn(lambda x: (x.to(torch.float32) * 2).to(dtype=x.dtype)).eval()
    x = torch.randn(2, 3)
    got, R = _explain(layer, x, composites.EpsilonOnly())
    assert got.dtype == torch.float64
    _check(got, R, rtol=1e-6)


@pytest.mark.parametrize("spelling", [lambda x: x ** 2, lambda x: torch.pow(x, 3),
                                      lambda x: x.square(), lambda x: x.relu().pow(2)],
                         ids=["operator", "torch.pow", "square", "method"])
def test_a_power_is_an_activation_relevance_passes(spelling):
    layer = Fn(lambda x: spelling(x) * 3).eval()
    x = torch.randn(2, 3)
    got, R = _explain(layer, x, composites.EpsilonOnly())
    _check(got, R)


def test_a_power_with_a_computed_exponent_is_refused_by_name():
    layer = Fn(lambda x: x.sigmoid() ** x).eval()
    with pytest.raises(lrpfx.LrpfxError, match="exponent"):
        lrpfx.compile(layer, composites.EpsilonOnly())(torch.rand(2, 3) + 1)


@pytest.mark.parametrize("keepdim", [True, False])
def test_the_maxima_of_max_over_a_dimension_are_winner_takes_all(keepdim):
    x = torch.randint(0, 3, (2, 3, 4)).to(torch.float64)  # ties
    layer = Fn(lambda v: v.max(1, keepdim=keepdim)[0]).eval()
    got, R = _explain(layer, x, composites.EpsilonOnly())
    out = x.amax(1, keepdim=True)
    winners = (x == out).to(x.dtype)
    expected = winners * (R if keepdim else R.unsqueeze(1)) / winners.sum(1, keepdim=True)
    _check(got, expected)


def test_max_of_everything_is_amax():
    x = torch.randint(0, 3, (2, 3)).to(torch.float64)
    got, R = _explain(Fn(lambda v: torch.max(v).expand(2)).eval(), x, composites.EpsilonOnly())
    winners = (x == x.max()).to(x.dtype)
    _check(got, winners * R.sum() / winners.sum())


def test_max_of_two_tensors_is_refused_by_name():
    layer = Fn(lambda v: torch.max(v, v.flip(0))).eval()
    with pytest.raises(lrpfx.LrpfxError, match="max of two tensors"):
        lrpfx.compile(layer, composites.EpsilonOnly())
