"""The model-zoo sweep on one model of each torchvision family (the full sweep is
``examples/model_zoo.py``, its table ``docs/model-zoo.md``).

Each model compiles with ``EpsilonPlusFlat`` and ``EpsilonGammaBox``; the explainer's output is
the model's; the relevance is finite and shaped like the input; and with an ε-only composite
that ignores biases, Σ R_in equals the target logit within 1e-6 relative (float64, small
inputs; the weights are re-drawn where ε-LRP is well conditioned, see the script).
"""

from __future__ import annotations

import pytest
import torch

import lrpfx
from lrpfx import composites
from tests import examples

torchvision = pytest.importorskip("torchvision")

zoo = examples.load("model_zoo")

# the families of the issue, and one (small) model of each for CI
FAMILIES = {
    "alexnet": "alexnet", "vgg": "vgg11_bn", "resnet": "resnet18",
    "resnext": "resnext50_32x4d", "wide_resnet": "wide_resnet50_2", "densenet": "densenet121",
    "googlenet": "googlenet", "inception_v3": "inception_v3", "mobilenet_v2": "mobilenet_v2",
    "mobilenet_v3": "mobilenet_v3_small", "mnasnet": "mnasnet0_5",
    "shufflenet_v2": "shufflenet_v2_x0_5", "squeezenet": "squeezenet1_1",
    "efficientnet": "efficientnet_b0", "regnet": "regnet_y_400mf", "convnext": "convnext_tiny",
}
# attention families; maxvit_t takes 224 × 224 only (a small MaxVit is in test_attention_models)
ATTENTION = {"vit": "vit_b_16", "swin": "swin_t", "swin_v2": "swin_v2_t", "maxvit": "maxvit_t"}


pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_sweep_covers_every_family():
    names = zoo.model_names()
    families = {**FAMILIES, **ATTENTION}
    assert len(names) == 80
    for name in names:  # every model belongs to a family of the issue
        assert any(name.startswith(family) for family in families), name
    assert all(model.startswith(family) for family, model in families.items())
    assert set(families.values()) <= set(names)


@pytest.mark.parametrize("name", ["vit_b_16", "swin_t"])
def test_attention_model_compiles_explains_and_conserves(name):
    """One model per attention family at 32 × 32, through the sweep's own checks."""
    row = zoo.sweep_one(name)
    assert row.finite and row.output_error < 1e-10 and row.conservation < 1e-6, row


@pytest.mark.parametrize("name", list(FAMILIES.values()))
def test_model_compiles_explains_and_conserves(name):
    model, x = zoo.build(name)
    assert x.dtype == torch.float64
    with torch.no_grad():
        expected = model(x)
    for composite in (composites.EpsilonPlusFlat(), composites.EpsilonGammaBox(0.0, 1.0)):
        out = lrpfx.compile(model, composite, maxpool="wta")(x)
        torch.testing.assert_close(out.output, expected, rtol=1e-10, atol=1e-12)
        assert out.relevance.shape == x.shape
        assert torch.isfinite(out.relevance).all()
        assert out.relevance.abs().sum() > 0
    assert zoo.conservation_error(model, x) < 1e-6
