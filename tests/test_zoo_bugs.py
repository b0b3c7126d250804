"""Bugs the zoo sweeps found, each a test: functional conv/linear spellings, weights computed
in forward, recording through chunk, tensors made from shapes, vanishing relevance."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import lrpfx
from lrpfx import composites, rules
from lrpfx.errors import VanishedRelevanceWarning


class Functional(nn.Module):
    """A conv and a dense layer called through their functional forms, in one spelling each."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        w, b = self.conv.weight, self.conv.bias
        h = {
            "module": lambda: self.conv(x),
            "positional": lambda: F.conv2d(x, w, b, 2, 1),
            "keywords": lambda: F.conv2d(x, w, bias=b, stride=2, padding=1),
            "mixed": lambda: F.conv2d(x, w, b, (2, 2), padding=(1, 1), dilation=1, groups=1),
            "torch": lambda: torch.conv2d(x, w, b, stride=2, padding=1),
        }[self.how]()
        h = torch.relu(h).flatten(1)
        if self.how == "module":
            return self.fc(h)
        if self.how == "positional":
            return F.linear(h, self.fc.weight, self.fc.bias)
        return F.linear(h, self.fc.weight, bias=self.fc.bias)


@pytest.mark.parametrize("how", ["positional", "keywords", "mixed", "torch"])
@pytest.mark.parametrize("preset", ["epsilon-plus-flat", "epsilon-alpha2-beta1"])
def test_every_spelling_of_a_functional_conv_and_linear_is_the_module(how, preset):
    torch.manual_seed(0)
    reference = Functional("module").double().eval()
    model = Functional(how).double().eval()
    model.load_state_dict(reference.state_dict())
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    expected = lrpfx.compile(reference, preset)(x, target=1)
    got = lrpfx.compile(model, preset)(x, target=1)
    torch.testing.assert_close(got.output, expected.output, rtol=0, atol=0)
    torch.testing.assert_close(got.relevance, expected.relevance, rtol=0, atol=0)


def test_a_linear_without_bias_in_functional_form():
    model = nn.Sequential(nn.Linear(4, 3, bias=False)).double().eval()

    class NoBias(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = model[0].weight

        def forward(self, x):
            return F.linear(x, self.weight)

    x = torch.randn(2, 4, dtype=torch.float64)
    got = lrpfx.compile(NoBias().eval(), rules.Epsilon(1e-12))(x, target=0)
    expected = lrpfx.compile(model, rules.Epsilon(1e-12))(x, target=0)
    torch.testing.assert_close(got.relevance, expected.relevance, rtol=0, atol=0)


def test_a_string_padding_in_functional_form_is_refused_by_name():
    class Same(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(2, 3, 3, 3))

        def forward(self, x):
            return F.conv2d(x, self.weight, padding="same").flatten(1)

    with pytest.raises(lrpfx.UnsupportedOperationError, match="padding='same': give the padding"):
        lrpfx.compile(Same().eval())


class StandardizedConv(nn.Conv2d):
    """Weight standardisation (NFNets): the weight is computed in ``forward``."""

    def standardized(self) -> torch.Tensor:
        w = self.weight
        return (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)

    def forward(self, x):
        return F.conv2d(x, self.standardized(), self.bias, self.stride, self.padding)


def test_a_weight_computed_in_forward_is_folded_into_a_constant():
    """The explainer equals the one of a plain convolution that stores the computed weight, with
    the BatchNorm after it folded as usual; the user's weight is untouched."""
    torch.manual_seed(0)
    conv = StandardizedConv(3, 4, 3, padding=1)
    model = nn.Sequential(conv, nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3))
    model = model.double().eval()
    model[1].running_mean.uniform_(-1, 1)
    weight = conv.weight.detach().clone()
    plain = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), *model[1:]).double().eval()
    with torch.no_grad():
        plain[0].weight.copy_(conv.standardized())
        plain[0].bias.copy_(conv.bias)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    explainer = lrpfx.compile(model, composites.EpsilonGammaBox(-3.0, 3.0))
    got = explainer(x, target=2)
    expected = lrpfx.compile(plain, composites.EpsilonGammaBox(-3.0, 3.0))(x, target=2)
    torch.testing.assert_close(got.output, model(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.relevance, expected.relevance, rtol=1e-10, atol=1e-12)
    nodes = [n for n in explainer.graph_module.graph.nodes if n.op == "call_function"]
    assert [n.meta.get("lrpfx.folded") for n in nodes if n.target is F.conv2d] == [["1"]]
    assert torch.equal(conv.weight, weight)


def test_record_through_chunk_records_each_piece():
    class Halves(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.out = nn.Linear(4, 6), nn.Linear(3, 2)

        def forward(self, x):
            a, b = self.fc(x).chunk(2, 1)
            return self.out(torch.relu(a) + b)

    model = Halves().double().eval()
    x = torch.randn(3, 4, dtype=torch.float64)
    out = lrpfx.compile(model, "epsilon", record=True)(x, target=0)
    assert {"fc", "getitem", "getitem_1", "out"} <= set(out.layers)
    pieces = torch.cat([out.layers["getitem"], out.layers["getitem_1"]], 1)
    torch.testing.assert_close(out.layers["fc"], pieces)  # the chunk routes, exactly


class FromShapes(nn.Module):
    """Tensors made from the input's shape, dtype and device only: none carries relevance."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        positions = torch.arange(x.shape[1], dtype=x.dtype) / x.shape[1]
        offset = x.new_zeros(x.size(0), 4) + x.new_ones(x.shape) * 0.5
        return self.fc(x + positions + offset + torch.zeros_like(x))


def test_tensors_made_from_shapes_carry_no_relevance():
    """No unsupported-op error for arange, new_zeros, new_ones, zeros_like; they are biases of the
    sum (constants), so with the bias ignored the relevance is the plain layer's."""
    model = FromShapes().double().eval()
    x = torch.randn(2, 4, dtype=torch.float64)
    lrp0 = {composites.Kind("dense"): rules.Epsilon(1e-12),
            composites.Kind("add"): rules.Norm(1e-12, ignore_bias=True)}
    out = lrpfx.compile(model, lrp0)(x, target=3)
    h = x + torch.arange(4.0, dtype=x.dtype) / 4 + 0.5  # the constants added: biases, ignored
    torch.testing.assert_close(out.relevance, (h * model.fc.weight[3]).detach())


def test_a_vanishing_relevance_warns_and_names_where():
    """Activations shrinking by 1e-3 per layer: with ε = 1e-6 the relevance underflows to 0 in
    float32. The warning names the node of the program where it became zero."""
    torch.manual_seed(0)
    layers = []
    for _ in range(8):
        linear = nn.Linear(6, 6)
        nn.init.normal_(linear.weight, std=1e-3)
        nn.init.zeros_(linear.bias)
        layers += [linear, nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(6, 2)).float().eval()
    x = torch.rand(3, 6, dtype=torch.float32) + 1
    with pytest.warns(VanishedRelevanceWarning, match="first becomes zero at node 'r_"):
        out = lrpfx.compile(model, "epsilon")(x, target=0)
    assert not out.relevance.any()
    with warnings.catch_warnings():  # a tiny ε in float64 keeps it: no warning
        warnings.simplefilter("error", VanishedRelevanceWarning)
        out = lrpfx.compile(model.double(), rules.Epsilon(1e-300))(x.double(), target=0)
    assert out.relevance.any()


def test_random_efficientnet_degenerates_and_the_warning_says_so():
    """torchvision's EfficientNet-B0 with random weights at 96×96: its own activations shrink
    from 2 to 5e-14 across the stages, so ε = 1e-6 swamps every z and relevance underflows; the
    model, not the propagation, degenerates. The warning names where it vanished."""
    torch.manual_seed(0)
    model = torchvision.models.efficientnet_b0(weights=None).float().eval()
    x = torch.randn(1, 3, 96, 96, dtype=torch.float32)
    assert model(x).abs().max() < 1e-10
    with pytest.warns(VanishedRelevanceWarning, match="vanished"):
        lrpfx.compile(model, "epsilon-plus-flat")(x)
