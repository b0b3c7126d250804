"""Parity with Zennit 0.5.1 on torchvision ResNet-18 and ResNet-50 (random weights, float64).

Zennit needs its ``ResNetCanonizer`` to see the residual add: it rewrites each block's forward
into ``torch.stack([identity, out], -1)`` and a ``Sum`` module that gets the Norm rule, and it
merges BatchNorms into convolutions. lrpfx reads the same add (``out += identity``) from the
traced graph and gives it the Norm rule by default; BatchNorms fold into new constants. Both
explain the residual sum as ``R_a = a · R / stabilize(a + b)``, so the results must agree.
"""

from __future__ import annotations

import pytest
import torch

from tests.test_zennit_parity import PRESETS, _MergeBatchNorm, assert_parity, randomize_batchnorm

zennit = pytest.importorskip("zennit")
torchvision = pytest.importorskip("torchvision")

from zennit.canonizers import CompositeCanonizer  # noqa: E402
from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer  # noqa: E402


def resnet_canonizer() -> CompositeCanonizer:
    """Zennit's ``ResNetCanonizer`` with the BatchNorm merge that torch >= 2.10 accepts."""
    return CompositeCanonizer((_MergeBatchNorm(), ResNetBottleneckCanonizer(),
                               ResNetBasicBlockCanonizer()))


@pytest.fixture(scope="module", params=["resnet18", "resnet50"])
def model_and_input(request):
    torch.manual_seed(2)
    model = randomize_batchnorm(getattr(torchvision.models, request.param)()).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    return model, x


@pytest.mark.parametrize("preset", list(PRESETS))
def test_resnet_parity_with_zennit(model_and_input, preset):
    model, x = model_and_input
    assert_parity(model, x, preset, [resnet_canonizer()])
