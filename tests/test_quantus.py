"""lrpfx.quantus.explain_func under Quantus itself (the dev extra): two metrics, the shapes
Quantus asserts, and the cache that must see weights written in place."""

import numpy as np
import pytest
import torch
from torch import nn

import lrpfx
import lrpfx.quantus

try:
    import quantus
except Exception as error:  # not installed, or it does not import with this torch/numpy
    pytest.skip(f"quantus is not usable here: {type(error).__name__}: {error}",
                allow_module_level=True)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()  # float64 as the
    # tests' default dtype, which Quantus's torch.Tensor(x) follows; inputs stay float32 numpy


def _batch(n=6):
    x = np.random.default_rng(0).random((n, 1, 8, 8)).astype(np.float32)
    return x


def test_contract_shapes_dtype_and_kwargs():
    model, x = _model(), _batch()
    a = lrpfx.quantus.explain_func(model=model, inputs=x, targets=np.array([0, 1, 2, 0, 1, 2]),
                                   device="cpu", softmax=False, anything="ignored")
    assert isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == (6, 1, 8, 8)
    keep = lrpfx.quantus.explain_func(model, x, np.zeros(6, dtype=int), rules="epsilon",
                                      channels="keep")
    expected = lrpfx.compile(model, "epsilon")(torch.from_numpy(x).double(), target=0).relevance
    np.testing.assert_allclose(keep, expected.numpy(), rtol=1e-5, atol=1e-7)


def test_cache_follows_in_place_writes_not_id():
    model, x = _model(), _batch()
    t = np.zeros(6, dtype=int)
    first = lrpfx.quantus.explain_func(model, x, t)
    assert lrpfx.quantus.explainer_for(model) is lrpfx.quantus.explainer_for(model)  # cached
    with torch.no_grad():
        model[-1].weight.mul_(-1.0)  # what Quantus's randomization does: same object, new values
    second = lrpfx.quantus.explain_func(model, x, t)
    fresh = lrpfx.compile(model, "epsilon-plus-flat")(torch.from_numpy(x).double(),
                                                      target=0).relevance
    np.testing.assert_allclose(second, fresh.sum(1, keepdim=True).numpy(), rtol=1e-5, atol=1e-7)
    assert not np.allclose(first, second)


def test_pixel_flipping_runs_on_lrpfx_relevance():
    model, x = _model(), _batch()
    y = model(torch.from_numpy(x).double()).argmax(1).numpy()
    metric = quantus.PixelFlipping(features_in_step=16, disable_warnings=True)
    scores = metric(model=model, x_batch=x, y_batch=y, explain_func=lrpfx.quantus.explain_func,
                    explain_func_kwargs={"rules": "epsilon-plus-flat"}, device="cpu")
    curves = np.asarray(scores)
    assert curves.shape == (6, 4) and np.isfinite(curves).all()


def test_model_parameter_randomisation_sees_every_layer():
    model, x = _model(), _batch()
    y = model(torch.from_numpy(x).double()).argmax(1).numpy()
    metric = quantus.MPRT(disable_warnings=True, layer_order="top_down")
    scores = metric(model=model, x_batch=x, y_batch=y, explain_func=lrpfx.quantus.explain_func,
                    explain_func_kwargs={"rules": "epsilon"}, device="cpu")
    layers = [k for k in scores if k != "original"]
    assert len(layers) == 3  # three layers with parameters, randomized top down
    correlations = np.array([np.mean(scores[k]) for k in layers])
    assert np.isfinite(correlations).all()
    assert correlations.min() < 0.99  # heatmaps changed: no stale explainer from the cache
