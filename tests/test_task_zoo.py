"""Torchvision segmentation and video models (``examples/task_zoo.py``, the sweep's section
of ``docs/model-zoo.md``): a dict output explained at a region, output equal to the model's,
finite, and conservation of the region's summed logit; the whole sweep per model is slow."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx import composites
from lrpfx.targets import Region, Select
from tests import examples
from tests.gradient_frame import input_times_modified_gradient

torchvision = pytest.importorskip("torchvision")

zoo = examples.load("model_zoo")
tasks = examples.load("task_zoo")

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_sweep_covers_every_segmentation_model_and_the_video_classifiers():
    names = torchvision.models.list_models(module=torchvision.models.segmentation)
    assert set(names) == set(tasks.SEGMENTATION) and len(names) == 6
    video = set(torchvision.models.list_models(module=torchvision.models.video))
    assert set(tasks.VIDEO) <= video


def test_lraspp_explains_a_region_of_its_dict_output():
    """The smallest segmentation model, one sample at 32 × 32: the dict output as the model
    returns it, and Σ R_in = the region's summed logit under ε-LRP without biases."""
    model, x = tasks.build("lraspp_mobilenet_v3_large")
    x = x[:1, :, :32, :32]
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[8:20, 4:30] = True
    epsilon = composites.EpsilonOnly(epsilon=1e-12, stabilizer=1e-12, ignore_bias=True)
    out = lrpfx.compile(model, epsilon)(x, output_relevance=Select("out", Region(mask, 3)))
    expected = model(x)
    assert isinstance(out.output, dict) and out.output.keys() == expected.keys()
    torch.testing.assert_close(out.output["out"], expected["out"], rtol=1e-10, atol=1e-12)
    region = out.output["out"][:, 3][:, mask].sum()
    assert torch.isfinite(out.relevance).all()
    torch.testing.assert_close(out.relevance.sum(), region, rtol=1e-8, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", tasks.NAMES)
def test_task_model_compiles_explains_and_conserves(name):
    row = tasks.sweep_one(name)
    tolerance = 1e-4 if row.dtype == "float32" else 1e-6
    assert row.finite and row.output_error < tolerance * 1e-2 and row.conservation < tolerance


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mvit_v1_b", "mvit_v2_s"])
def test_mvit_equals_the_gradient_frame_reference(name, monkeypatch):
    """Both MViTs at 4 × 32 × 32 through the export front end: v2's relative positions and
    pooled residuals are in-place writes into slices (``attn[:, :, 1:, 1:] += rel_pos``), which
    ``torch.export`` writes as ``slice_scatter`` and ``copy``, routed. With winner-takes-all
    max-pools (the reference differentiates them) and ε → 0: the independent reference."""
    from torchvision.models.video import mvit

    builder = mvit._mvit
    monkeypatch.setattr(mvit, "_mvit", lambda **kwargs: builder(
        **{**kwargs, "spatial_size": (32, 32), "temporal_size": 4}))
    torch.manual_seed(0)
    model = getattr(mvit, name)(num_classes=10).eval()
    nn.init.normal_(model.head[-1].weight, std=0.1)
    x = torch.rand(1, 3, 4, 32, 32)
    explainer = lrpfx.compile(model, composites.AttnLRP(epsilon=1e-15), example_inputs=x,
                              maxpool="wta", frontend="export")
    out = explainer(x, target=3)
    torch.testing.assert_close(out.output, model(x), rtol=1e-10, atol=1e-12)
    expected = input_times_modified_gradient(model, x, 3)
    torch.testing.assert_close(out.relevance, expected, rtol=1e-8,
                               atol=1e-8 * expected.abs().max().item())


@pytest.mark.slow
def test_mvit_v1_b_built_for_a_small_clip_explains(monkeypatch):
    """torchvision builds MViT for 16 × 224 × 224 clips; its builder, given 4 × 32 × 32, makes
    the same architecture at that size (its pooling splits tokens with ``tensor_split``)."""
    from torchvision.models.video import mvit

    builder = mvit._mvit
    monkeypatch.setattr(mvit, "_mvit", lambda **kwargs: builder(
        **{**kwargs, "spatial_size": (32, 32), "temporal_size": 4}))
    model = mvit.mvit_v1_b(num_classes=10).eval()
    x = torch.rand(1, 3, 4, 32, 32)
    out = lrpfx.compile(model, composites.AttnLRP(), example_inputs=x)(x)
    torch.testing.assert_close(out.output, model(x), rtol=1e-10, atol=1e-12)
    assert out.relevance.shape == x.shape and torch.isfinite(out.relevance).all()
    assert out.relevance.abs().sum() > 0
