"""Parity with Zennit 0.5.1 on torchvision VGG-16, VGG-16-BN and AlexNet (random weights).

Zennit canonizes (merges BatchNorm into the convolutions) by mutating the model; lrpfx folds into
new constants. Both use the same rules, winner-takes-all max-pools and the same output relevance.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx import composites

zennit = pytest.importorskip("zennit")
torchvision = pytest.importorskip("torchvision")

from zennit import composites as zc  # noqa: E402
from zennit.attribution import Gradient  # noqa: E402
from zennit.canonizers import SequentialMergeBatchNorm  # noqa: E402
from zennit.torchvision import VGGCanonizer  # noqa: E402

LOW, HIGH = -2.5, 2.7
PRESETS = {
    "epsilon-plus": (lambda: composites.EpsilonPlus(), lambda c: zc.EpsilonPlus(canonizers=c)),
    "epsilon-plus-flat": (lambda: composites.EpsilonPlusFlat(),
                          lambda c: zc.EpsilonPlusFlat(canonizers=c)),
    "epsilon-alpha2-beta1": (lambda: composites.EpsilonAlpha2Beta1(),
                             lambda c: zc.EpsilonAlpha2Beta1(canonizers=c)),
    "epsilon-alpha2-beta1-flat": (lambda: composites.EpsilonAlpha2Beta1Flat(),
                                  lambda c: zc.EpsilonAlpha2Beta1Flat(canonizers=c)),
    "epsilon-gamma-box": (lambda: composites.EpsilonGammaBox(LOW, HIGH),
                          lambda c: zc.EpsilonGammaBox(LOW, HIGH, canonizers=c)),
}


class _MergeBatchNorm(SequentialMergeBatchNorm):
    """Zennit's BatchNorm merge, with a tiny positive ``eps`` for the emptied BatchNorm.

    Zennit 0.5.1 sets ``eps = 0`` on the merged BatchNorm; torch >= 2.10 rejects that
    (zennit#234). ``1e-300`` leaves ``x / sqrt(1 + eps)`` equal to ``x`` in float64.
    """

    def merge_batch_norm(self, modules, batch_norm):  # noqa: ANN001, ANN201
        super().merge_batch_norm(modules, batch_norm)
        batch_norm.eps = 1e-300


def randomize_batchnorm(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.running_mean.normal_(0, 0.3)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.3)
    return model


MODELS = {
    "vgg16": lambda: torchvision.models.vgg16(),
    "vgg16_bn": lambda: randomize_batchnorm(torchvision.models.vgg16_bn()),
    "alexnet": lambda: torchvision.models.alexnet(),
}


@pytest.fixture(scope="module", params=list(MODELS))
def model_and_input(request):
    torch.manual_seed(1)
    model = MODELS[request.param]().double().eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    return model, x


def zennit_relevance(model, composite, x, target):
    one_hot = torch.eye(1000, dtype=x.dtype)[target]
    x = x.clone().requires_grad_(True)
    with Gradient(model=model, composite=composite) as attributor:
        output, relevance = attributor(x, lambda y: y * one_hot)
    return output, relevance


def assert_parity(model, x, preset, canonizers):
    """lrpfx with ``maxpool="wta"`` and Zennit with ``canonizers`` explain the same target:
    the same output, and max |Δ| <= 1e-8 max |R|."""
    ours, theirs = PRESETS[preset]
    explained = lrpfx.compile(model, ours(), maxpool="wta")(x)
    target = explained.output.argmax(1)
    output, relevance = zennit_relevance(model, theirs(canonizers), x, target)
    torch.testing.assert_close(explained.output, output.detach(), rtol=1e-10, atol=1e-10)
    scale = relevance.abs().max()
    delta = (explained.relevance - relevance).abs().max()
    assert delta <= 1e-8 * scale, f"max |Δ| = {delta:.3g}, max |R| = {scale:.3g}"


@pytest.mark.parametrize("preset", list(PRESETS))
def test_parity_with_zennit(model_and_input, preset):
    model, x = model_and_input
    batch_norm = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert_parity(model, x, preset, [_MergeBatchNorm()] if batch_norm else [VGGCanonizer()])
