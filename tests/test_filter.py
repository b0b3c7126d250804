"""The top-k relevance filter: exactly k % kept per sample, applied before the layer's rule,
usable in composites and as a wrapper of a whole composite."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx import composites, filters, rules
from lrpfx.show import describe_rule


@pytest.mark.parametrize(("percent", "shape", "kept"), [
    (10, (3, 100), 10), (25, (2, 4, 5, 5), 25), (50, (4, 7), 3), (0.5, (2, 10), 1),
    (100, (2, 9), 9),
])
def test_top_k_keeps_exactly_k_percent_per_sample(percent, shape, kept):
    r = torch.randn(shape)
    out = filters.top_k(r, percent)
    assert out.shape == r.shape
    flat, original = out.flatten(1), r.flatten(1)
    assert ((flat != 0).sum(1) == kept).all()
    for sample in range(r.shape[0]):
        largest = original[sample].topk(kept).values
        assert torch.equal(flat[sample][flat[sample] != 0].sort().values, largest.sort().values)


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)).eval()


def test_the_filter_acts_on_the_relevance_arriving_at_the_layer():
    """Dense reference: the relevance at the output of layer 0 (recorded), filtered, then
    LRP-ε of layer 0 by hand."""
    model = mlp()
    x = torch.randn(5, 6)
    epsilon = rules.Epsilon(0.01)
    plain = lrpfx.compile(model, {nn.Linear: epsilon}, record=["0"])(x)
    filtered = lrpfx.compile(model, {"0": filters.TopK(epsilon, 25), nn.Linear: epsilon})(x)
    arriving = filters.top_k(plain.layers["0"], 25)
    assert ((arriving != 0).sum(1) <= 2).all()  # 25 % of 8 (a kept entry may be 0)
    w, b = model[0].weight, model[0].bias
    z = x @ w.T + b
    z = z + 0.01 * torch.where(z >= 0, 1.0, -1.0)
    expected = x * ((arriving / z) @ w)
    torch.testing.assert_close(filtered.relevance, expected, rtol=1e-10, atol=1e-12)
    assert "top_k" in lrpfx.compile(model, {nn.Linear: filters.TopK(epsilon, 25)}).code


def test_filtered_composite_wraps_every_layer_rule_and_shows_it():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    inner = composites.EpsilonPlusFlat()
    explainer = lrpfx.compile(model.eval(), filters.Filtered(inner, percent=10))
    layer_rules = {n.meta.get("lrpfx.path"): n.meta.get("lrpfx.rule")
                   for n in explainer.graph_module.graph.nodes}
    filters_by_path = {n.meta.get("lrpfx.path"): n.meta.get(filters.FILTER)
                       for n in explainer.graph_module.graph.nodes}
    assert layer_rules["0"] == rules.Flat() and layer_rules["3"] == rules.Epsilon()
    assert filters_by_path["0"] == filters.TopK(rules.Flat(), 10)
    assert filters_by_path["3"] == filters.TopK(rules.Epsilon(), 10)
    assert filters_by_path["1"] is None  # activations: no filter
    assert explainer.code.count("top_k") == 2
    out = explainer(torch.randn(2, 1, 6, 6))
    assert out.relevance.shape == (2, 1, 6, 6) and torch.isfinite(out.relevance).all()
    assert describe_rule(filters_by_path["3"]) == "TopK(10%, Epsilon(ε=1e-06))"


def test_filter_is_not_conservative_and_validates_its_arguments():
    model = mlp()
    x = torch.randn(3, 6)
    conserving = {nn.Linear: rules.Epsilon(1e-12, ignore_bias=True)}
    full = lrpfx.compile(model, conserving)(x)
    cut = lrpfx.compile(model, {"0": filters.TopK(rules.Epsilon(1e-12, ignore_bias=True), 25),
                                **conserving})(x)
    torch.testing.assert_close(full.relevance.sum(1), full.output.max(1).values)
    assert not torch.allclose(cut.relevance.sum(1), cut.output.max(1).values)
    with pytest.raises(ValueError, match=r"percent must be in \(0, 100\]"):
        filters.TopK(rules.ZPlus(), 0)
    with pytest.raises(TypeError, match="wraps one rule"):
        filters.TopK(filters.TopK(rules.ZPlus()), 10)
