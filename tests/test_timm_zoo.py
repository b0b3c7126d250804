"""The timm sweep (``examples/timm_zoo.py``, its table ``docs/timm-zoo.md``) on a dozen
representative families: timm's own tiny test models where it has them (ResNet, EfficientNet
with BatchNormAct, GroupNorm, EvoNorm and LayerNorm, ConvNeXt, ByobNet, NFNet, ViT, ViT with
relative positions, CoAtNet, MaxViT) and MViTv2, which only the export front end reads. Each
must compile, reproduce the model's output (relative error < 1e-4, float32) and give finite
relevance shaped like the input."""

from __future__ import annotations

import pytest

from tests import examples

timm = pytest.importorskip("timm")

zoo = examples.load("timm_zoo")

MODELS = ["test_resnet", "test_efficientnet", "test_efficientnet_gn", "test_efficientnet_evos",
          "test_efficientnet_ln", "test_convnext", "test_byobnet", "test_nfnet", "test_vit",
          "test_vit_relpos", "test_coatnet", "test_maxvit", "mvitv2_tiny"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _float32():
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)  # the sweep's dtype; conftest sets float64
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("name", MODELS)
def test_timm_model_compiles_and_explains(name):
    result = zoo.check("ci", name, measure_conservation=False)
    assert result.status == "ok", result
    assert result.output_error < zoo.TOLERANCE


def test_the_sweep_covers_every_family():
    chosen = zoo.smallest()
    assert set(chosen) <= set(timm.list_modules())
    assert len(chosen) >= 0.95 * len(timm.list_modules())  # a family without a model is skipped
    for family, model in chosen.items():
        assert model in timm.list_models(module=family), (family, model)


def test_a_blocking_op_is_ranked_by_the_models_it_blocks():
    results = [zoo.Result("a", "m1", "unsupported ops", blocking=["torch.erf", "torch.erf"]),
               zoo.Result("b", "m2", "unsupported ops", blocking=["torch.erf", "F.unfold"]),
               zoo.Result("c", "m3", "ok")]
    assert zoo.ranking(results) == [("torch.erf", 2, 3), ("F.unfold", 1, 1)]
    assert "**1 of 3** (33 %)" in zoo.summary(results)
