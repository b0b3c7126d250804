"""Random models against an independent reference (hypothesis).

Hypothesis draws a network layer by layer (conv1d/conv2d with random kernel, stride, padding,
dilation, groups and bias, BatchNorm folded or standalone, activations, max/avg/adaptive pools,
flatten, view, unflatten, linear layers), a preset with random parameters and a max-pool mode.
Each model must compile, reproduce the model's output, and give the relevance of a reference
written here from the rules' formulas: every layer becomes its dense matrix (pushed through the
user's own torch module, never through lrpfx), the rule is the matmul formula of
``tests/dense.py``, the preset's assignment is re-implemented from its documentation, in float64,
within 1e-8.

The default profile is short (CI); ``--hypothesis-profile=long`` runs thousands of examples.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import lrpfx
from lrpfx import composites
from tests import dense
from tests.reference import Reference

ACTIVATIONS = [nn.ReLU, lambda: nn.LeakyReLU(0.1), nn.Tanh, nn.Sigmoid, nn.ELU, nn.SiLU,
               nn.GELU, nn.Softplus, nn.ReLU6, nn.Hardswish]


class View(nn.Module):
    """``x.view(n, -1)``: flatten in the method spelling."""

    def forward(self, x):
        return x.view(x.size(0), -1)


@dataclass
class Layer:
    """One step of the drawn network: its modules (a conv/linear may carry its BatchNorm) and
    what it is for the reference."""

    kind: str  # conv, dense, bn, act, avgpool, maxpool, reshape
    modules: list[nn.Module]
    options: dict = field(default_factory=dict)


def _out_shape(modules: list[nn.Module], shape: tuple[int, ...]) -> tuple[int, ...] | None:
    try:
        with torch.no_grad():
            y = nn.Sequential(*modules).eval()(torch.zeros((1, *shape)))
    except RuntimeError:
        return None
    return tuple(y.shape[1:]) if y.numel() else None


def _randomize_bn(bn: nn.Module, draw) -> None:
    with torch.no_grad():
        bn.running_mean.normal_(0, 0.5)
        bn.running_var.uniform_(0.3, 2.0)
        if draw(st.booleans()):
            bn.weight.normal_(1, 0.5)
            bn.bias.normal_(0, 0.5)


def _conv(draw, shape: tuple[int, ...]) -> Layer | None:
    channels, dims = shape[0], len(shape) - 1
    groups = draw(st.sampled_from([g for g in (1, 2, 3) if channels % g == 0]))
    out = groups * draw(st.integers(1, 3))
    kernel = draw(st.integers(1, 3))
    conv = (nn.Conv1d, nn.Conv2d)[dims - 1](
        channels, out, kernel, stride=draw(st.integers(1, 2)), padding=draw(st.integers(0, 1)),
        dilation=draw(st.integers(1, 2)), groups=groups, bias=draw(st.booleans()))
    modules: list[nn.Module] = [conv]
    if draw(st.booleans()):  # followed by BatchNorm: folded into the conv
        bn = (nn.BatchNorm1d, nn.BatchNorm2d)[dims - 1](out)
        _randomize_bn(bn, draw)
        modules.append(bn)
    return Layer("conv", modules)


def _pool(draw, shape: tuple[int, ...], maxpool: str) -> Layer:
    dims = len(shape) - 1
    kind = draw(st.sampled_from(["maxpool", "avgpool", "adaptive"]))
    if kind == "adaptive":
        size = draw(st.integers(1, max(1, min(shape[1:]))))
        return Layer("avgpool", [(nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)[dims - 1](size)])
    kernel = draw(st.integers(1, 3))
    options = {"kernel_size": kernel, "stride": draw(st.integers(1, 2)),
               "padding": draw(st.integers(0, kernel // 2)), "ceil_mode": draw(st.booleans())}
    if kind == "avgpool":
        options["count_include_pad"] = draw(st.booleans())
        return Layer("avgpool", [(nn.AvgPool1d, nn.AvgPool2d)[dims - 1](**options)])
    dilation = draw(st.sampled_from([1, 1, 1, 2]))
    pool = (nn.MaxPool1d, nn.MaxPool2d)[dims - 1](**options, dilation=dilation)
    return Layer("maxpool", [pool], {**options, "dilation": dilation})


def _dense(draw, features: int, out: int | None = None) -> Layer:
    out = out or draw(st.integers(2, 8))
    modules: list[nn.Module] = [nn.Linear(features, out, bias=draw(st.booleans()))]
    if draw(st.booleans()):
        bn = nn.BatchNorm1d(out)
        _randomize_bn(bn, draw)
        modules.append(bn)
    return Layer("dense", modules)


@st.composite
def networks(draw, maxpool: str = "avg"):
    """A drawn network: (layers, input shape without the batch)."""
    dims = draw(st.integers(1, 2))
    shape: tuple[int, ...] = (draw(st.integers(1, 3)), *[draw(st.integers(4, 8))] * dims)
    input_shape = shape
    layers: list[Layer] = []
    for _ in range(draw(st.integers(0, 5))):
        step = draw(st.sampled_from(["conv", "conv", "act", "pool", "bn"]))
        if step == "conv":
            layer = _conv(draw, shape)
        elif step == "act":
            layer = Layer("act", [draw(st.sampled_from(ACTIVATIONS))()])
        elif step == "pool":
            layer = _pool(draw, shape, maxpool)
        else:
            bn = (nn.BatchNorm1d, nn.BatchNorm2d)[len(shape) - 2](shape[0])
            _randomize_bn(bn, draw)
            if layers and layers[-1].kind == "conv":  # right after a conv: folded into it
                layers[-1].modules.append(bn)
                continue
            layer = Layer("bn", [bn])  # elsewhere: an affine layer of its own
        new = _out_shape(layer.modules, shape) if layer else None
        if new is None:
            continue
        layers.append(layer)
        shape = new
    layers.append(Layer("reshape", [draw(st.sampled_from([nn.Flatten, View]))()]))
    features = int(torch.tensor(shape).prod())
    if draw(st.integers(0, 3)) == 0:  # dense → unflatten → conv1d → flatten
        width = draw(st.integers(3, 6))
        layers += [_dense(draw, features, 2 * width), Layer("act", [nn.ReLU()]),
                   Layer("reshape", [nn.Unflatten(1, (2, width))]),
                   Layer("conv", [nn.Conv1d(2, 2, 2)]), Layer("reshape", [nn.Flatten()])]
        features = 2 * (width - 1)
    for _ in range(draw(st.integers(0, 2))):
        layer = _dense(draw, features)
        layers += [layer, Layer("act", [draw(st.sampled_from(ACTIVATIONS))()])]
        features = layer.modules[0].out_features
    layers.append(_dense(draw, features, draw(st.integers(2, 5))))
    return layers, input_shape


PRESETS = {
    "epsilon-plus": composites.EpsilonPlus, "epsilon-plus-flat": composites.EpsilonPlusFlat,
    "epsilon-alpha2-beta1": composites.EpsilonAlpha2Beta1,
    "epsilon-alpha2-beta1-flat": composites.EpsilonAlpha2Beta1Flat,
    "epsilon-gamma-box": composites.EpsilonGammaBox, "epsilon": composites.EpsilonOnly,
}


@st.composite
def presets(draw):
    name = draw(st.sampled_from(sorted(PRESETS)))
    options = {"epsilon": draw(st.sampled_from([1e-6, 0.01, 0.25])),
               "ignore_bias": draw(st.booleans())}
    if name == "epsilon-gamma-box":
        options.update(low=-3.0, high=3.0, gamma=draw(st.sampled_from([0.1, 0.25])))
    return name, options


# -- the reference ---------------------------------------------------------------------------------
def matrix(fn, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, b)`` of an affine ``fn`` on inputs of ``shape``: columns are ``fn(e_j) - fn(0)``."""
    n = int(torch.tensor(shape).prod())
    with torch.no_grad():
        b = fn(torch.zeros((1, *shape))).flatten()
        columns = fn(torch.eye(n).reshape((n, *shape))).reshape(n, -1) - b
    return columns.T, b


def rule_of(preset: str, options: dict, kind: str, first_layer: bool, first_conv: bool):
    """The rule the preset's documentation assigns, as (name, parameters)."""
    eps = options["epsilon"]
    if preset == "epsilon-gamma-box":
        if kind == "conv":
            return ("zbox", {}) if first_conv else ("gamma", {"g": options["gamma"]})
        return "epsilon", {"eps": eps}
    if first_layer and preset.endswith("-flat"):
        return "flat", {}
    if kind == "conv" and preset.startswith("epsilon-plus"):
        return "zplus", {}
    if kind == "conv" and preset.startswith("epsilon-alpha2-beta1"):
        return "alpha_beta", {}
    return "epsilon", {"eps": eps}


def layer_relevance(layer: Layer, x: torch.Tensor, relevance: torch.Tensor, rule, options,
                    maxpool: str) -> torch.Tensor:
    """The relevance of one layer's input from its output's, for a batch, in dense form."""
    shape = tuple(x.shape[1:])
    f = nn.Sequential(*layer.modules).eval()
    if layer.kind in ("act", "bn"):  # activations and unfolded BatchNorm pass relevance
        return relevance.reshape(x.shape)
    if layer.kind == "reshape":
        return relevance.reshape(x.shape)
    if layer.kind == "maxpool" and maxpool == "wta":  # winner takes all: the gradient of max
        xg = x.detach().requires_grad_()
        (grad,) = torch.autograd.grad(f(xg), xg, relevance)
        return grad
    if layer.kind == "maxpool":  # as an average pool over the same windows
        pool = (F.avg_pool1d, F.avg_pool2d)[x.dim() - 3]
        o = layer.options
        f = lambda t: pool(t, o["kernel_size"], o["stride"], o["padding"], o["ceil_mode"], True)  # noqa: E731
    W, b = matrix(f, shape)
    name, params = rule or ("norm", {})  # pools: Norm, the stabilizer 1e-6
    if name == "flat":  # the connectivity: the layer with all weights one
        ones, _ = matrix(dense.with_weight(layer.modules[0], torch.ones_like), shape)
    ignore = options["ignore_bias"]
    out = []
    for xi, ri in zip(x.flatten(1), relevance.flatten(1), strict=True):
        if name == "norm":
            out.append(dense.epsilon(W, b, xi, ri))
        elif name == "flat":
            out.append(dense.flat(ones, ri))
        elif name == "zbox":
            low, high = torch.full_like(xi, -3.0), torch.full_like(xi, 3.0)
            out.append(dense.zbox(W, b, xi, ri, low, high, ignore_bias=ignore))
        elif name == "gamma":
            out.append(dense.gamma(W, b, xi, ri, params["g"], ignore_bias=ignore))
        elif name == "zplus":
            out.append(dense.zplus(W, b, xi, ri, ignore_bias=ignore))
        elif name == "alpha_beta":
            out.append(dense.alpha_beta(W, b, xi, ri, ignore_bias=ignore))
        else:
            out.append(dense.epsilon(W, b, xi, ri, params["eps"], ignore_bias=ignore))
    return torch.stack(out).reshape(x.shape)


def reference(layers: list[Layer], x: torch.Tensor, target: torch.Tensor, preset: str,
              options: dict, maxpool: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The model output and the input relevance, layer by layer, from the formulas."""
    inputs = []
    h = x
    with torch.no_grad():
        for layer in layers:
            inputs.append(h)
            h = nn.Sequential(*layer.modules).eval()(h)
    output = h
    relevance = torch.zeros_like(output)
    relevance[torch.arange(len(target)), target] = output[torch.arange(len(target)), target]
    linear = [i for i, layer in enumerate(layers) if layer.kind in ("conv", "dense")]
    convs = [i for i in linear if layers[i].kind == "conv"]
    for i in reversed(range(len(layers))):
        rule = (rule_of(preset, options, layers[i].kind, i == linear[0],
                        bool(convs) and i == convs[0])
                if layers[i].kind in ("conv", "dense") else None)
        relevance = layer_relevance(layers[i], inputs[i], relevance, rule, options, maxpool)
    return output, relevance


# -- the properties --------------------------------------------------------------------------------
def build(layers: list[Layer]) -> nn.Module:
    return nn.Sequential(*[m for layer in layers for m in layer.modules]).eval()


@given(data=st.data())
def test_random_models_match_the_reference(data):
    maxpool = data.draw(st.sampled_from(["avg", "wta"]), label="maxpool")
    layers, shape = data.draw(networks(maxpool), label="network")
    preset, options = data.draw(presets(), label="preset")
    model = build(layers)
    n = data.draw(st.integers(1, 3), label="batch")
    x = torch.randn((n, *shape))
    classes = layers[-1].modules[0].out_features
    target = torch.tensor(data.draw(st.lists(st.integers(0, classes - 1), min_size=n,
                                             max_size=n), label="target"))
    dilated = any(layer.options.get("dilation", 1) > 1 for layer in layers)
    if dilated and maxpool == "avg":  # no average over dilated windows: refused, never wrong
        with pytest.raises(lrpfx.UnsupportedOperationError, match="maxpool='avg' with dilation"):
            lrpfx.compile(model, PRESETS[preset](**options), maxpool=maxpool)
        return
    explainer = lrpfx.compile(model, PRESETS[preset](**options), maxpool=maxpool)
    out = explainer(x, target)
    output, expected = reference(layers, x, target, preset, options, maxpool)
    torch.testing.assert_close(out.output, model(x).detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.output, output, rtol=1e-10, atol=1e-12)
    scale = float(expected.abs().max())
    assume(scale < 1e8)  # a near-zero denominator: both sides blow up alike, compare the rest
    torch.testing.assert_close(out.relevance, expected, rtol=1e-8, atol=1e-8 * scale + 1e-14)


@given(data=st.data())
def test_random_models_are_untouched_and_batches_are_per_sample(data):
    layers, shape = data.draw(networks(), label="network")
    model = build(layers)
    state = copy.deepcopy(model.state_dict())
    explainer = lrpfx.compile(model, "epsilon-plus-flat")
    x = torch.randn((3, *shape))
    batched = explainer(x)
    for i in range(3):
        one = explainer(x[i : i + 1])
        torch.testing.assert_close(one.relevance[0], batched.relevance[i], rtol=1e-10, atol=1e-14)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


# -- graphs: residual adds and concatenations, against tests/reference.py --------------------------
GRAPH_ACTIVATIONS = [nn.ReLU, lambda: nn.LeakyReLU(0.1), nn.Tanh, nn.ELU, nn.SiLU, nn.GELU,
                     nn.ReLU6, nn.Hardswish]  # the ones the per-node reference passes


def _conv_bn(draw, cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    modules: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2,
                                          bias=draw(st.booleans()))]
    if draw(st.booleans()):
        modules.append(nn.BatchNorm2d(cout))
        _randomize_bn(modules[-1], draw)
    return nn.Sequential(*modules)


class Block(nn.Module):
    """A residual block (identity or 1×1-projection shortcut; the sum spelled ``spelling``) or
    a concatenation of two branches (and the input)."""

    def __init__(self, draw, channels: int) -> None:
        super().__init__()
        self.kind = draw(st.sampled_from(["residual", "projection", "concat"]))
        self.spelling = draw(st.sampled_from(["+", "torch.add", "+=", "add_"]))
        self.act = draw(st.sampled_from(GRAPH_ACTIVATIONS))()
        if self.kind == "concat":
            a, b = draw(st.integers(1, 2)), draw(st.integers(1, 2))
            self.a = _conv_bn(draw, channels, a, draw(st.sampled_from([1, 3])))
            self.b = _conv_bn(draw, channels, b, draw(st.sampled_from([1, 3])))
            self.with_input = draw(st.booleans())
            self.out_channels = a + b + channels * self.with_input
            return
        out = channels if self.kind == "residual" else draw(st.integers(1, 3))
        stride = 1 if self.kind == "residual" else draw(st.integers(1, 2))
        self.a = _conv_bn(draw, channels, out, 3, stride)
        self.b = _conv_bn(draw, out, out, 3)
        self.shortcut = (nn.Identity() if self.kind == "residual"
                         else _conv_bn(draw, channels, out, 1, stride))
        self.out_channels = out

    def forward(self, x):
        if self.kind == "concat":
            parts = [self.a(x), self.act(self.b(x))]
            return torch.cat([*parts, x] if self.with_input else parts, 1)
        out = self.b(self.act(self.a(x)))
        skip = self.shortcut(x)
        if self.spelling == "+":
            out = out + skip
        elif self.spelling == "torch.add":
            out = torch.add(out, skip)
        elif self.spelling == "+=":
            out += skip
        else:
            out.add_(skip)
        return self.act(out)


class Head(nn.Module):
    def __init__(self, draw, channels: int, classes: int) -> None:
        super().__init__()
        self.kind = draw(st.sampled_from(["mean", "adaptive", "maxpool"]))
        self.pool = (nn.AdaptiveAvgPool2d(draw(st.integers(1, 2))) if self.kind == "adaptive"
                     else nn.MaxPool2d(2, ceil_mode=True))
        size = self.pool.output_size ** 2 if self.kind == "adaptive" else 1
        self.fc = nn.LazyLinear(classes) if self.kind == "maxpool" else nn.Linear(
            channels * size, classes)

    def forward(self, x):
        if self.kind == "mean":
            return self.fc(x.mean((2, 3)))
        return self.fc(torch.flatten(self.pool(x), 1))


@st.composite
def graphs(draw):
    """A stem convolution, one or two blocks, a head: (model, input shape)."""
    shape = (draw(st.integers(1, 2)), draw(st.integers(4, 5)), draw(st.integers(4, 5)))
    channels = draw(st.integers(1, 3))
    layers: list[nn.Module] = [_conv_bn(draw, shape[0], channels, 3), nn.ReLU()]
    for _ in range(draw(st.integers(1, 2))):
        layers.append(Block(draw, channels))
        channels = layers[-1].out_channels
    layers.append(Head(draw, channels, draw(st.integers(2, 4))))
    model = nn.Sequential(*layers).eval()
    with torch.no_grad():
        model(torch.zeros((1, *shape)))  # sizes a lazy linear layer
    return model, shape


def out_of_place(model: nn.Module) -> nn.Module:
    """A twin of ``model`` whose sums are spelled ``+`` (the reference re-runs each node on
    fresh inputs, which in-place spellings would write)."""
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if isinstance(m, Block):
            m.spelling = "+"
    return twin


@settings(max_examples=max(6, settings.default.max_examples // 5))  # the reference is slow
@given(data=st.data())
def test_random_graphs_match_the_per_node_reference(data):
    model, shape = data.draw(graphs(), label="graph")
    preset, options = data.draw(presets(), label="preset")
    x = torch.randn((1, *shape))
    out = lrpfx.compile(model, PRESETS[preset](**options), maxpool="wta")(x)
    with torch.no_grad():
        expected_output = model(x.clone())
    torch.testing.assert_close(out.output, expected_output, rtol=1e-10, atol=1e-12)
    R = torch.zeros_like(out.output)
    target = out.output.argmax(1)
    R[0, target] = out.output[0, target]

    def layer_rule(position: int, kind: str) -> tuple:
        name, params = rule_of(preset, options, kind, position == 0, position == 0)
        ignore = options["ignore_bias"]
        return {"flat": ("flat",), "zbox": ("zbox", -3.0, 3.0, 1e-6, ignore),
                "gamma": ("gamma", params.get("g"), 1e-6, ignore), "zplus": ("zplus", 1e-6, ignore),
                "alpha_beta": ("alphabeta", 2.0, 1.0, 1e-6, ignore),
                "epsilon": ("epsilon", params.get("eps"), ignore)}[name]

    expected = Reference(out_of_place(model), layer_rule, maxpool="wta")(x, R)
    scale = float(expected.abs().max())
    assume(scale < 1e8)
    torch.testing.assert_close(out.relevance, expected, rtol=1e-8, atol=1e-8 * scale + 1e-14)
