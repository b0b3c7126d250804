"""Several targets for one input in one call (``lrpfx.several``): the same as one call per
target, stacked along a leading target dimension; by batch expansion, or one after another for
an explainer with static shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx import composites
from lrpfx.targets import Contrast, Region, Select, Unit, one_hot
from tests.test_outputs import Segmenter


def net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 6),
                         nn.ReLU(), nn.Linear(6, 5)).eval()


def one_by_one(explainer, x, pairs):
    return [explainer(x, target=t, output_relevance=r) for t, r in pairs]


@pytest.mark.parametrize("static", [False, True])
def test_a_list_of_targets_is_one_call_per_target(static):
    model, x = net(), torch.randn(3, 2, 6, 6)
    options = {"example_inputs": x} if static else {}
    explainer = lrpfx.compile(model, "epsilon-plus-flat", record=["3"], **options)
    targets = [3, torch.tensor([0, 4, 1]), None]
    out = explainer(x, target=targets)
    singles = one_by_one(explainer, x, [(t, None) for t in targets])
    assert out.relevance.shape == (3,) + x.shape
    torch.testing.assert_close(out.output, model(x), rtol=1e-12, atol=1e-12)
    for k, single in enumerate(singles):
        torch.testing.assert_close(out.relevance[k], single.relevance, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(out.layers["3"][k], single.layers["3"], rtol=1e-10,
                                   atol=1e-12)


def test_a_list_of_seeds_and_a_seed_with_a_list_of_targets():
    model, x = Segmenter(bias=True).eval(), torch.randn(2, 3, 8, 8)
    explainer = lrpfx.compile(model, composites.EpsilonGammaBox(-4.0, 4.0))
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[4:12, 2:9] = True
    seeds = [Select("out", Region(mask, 1)), Select("aux", Unit((2, 3, 3))),
             Select("out", Contrast(0)), Select("aux", one_hot), None]
    targets = [None, None, 2, 1, None]
    with pytest.raises(ValueError, match="which element the target logit"):
        explainer(x, target=targets, output_relevance=seeds)  # the last: no Select
    out = explainer(x, target=targets[:4], output_relevance=seeds[:4])
    assert isinstance(out.output, dict) and out.output["out"].shape == (2, 4, 16, 16)
    pairs = list(zip(targets, seeds, strict=True))[:4]
    for k, single in enumerate(one_by_one(explainer, x, pairs)):
        torch.testing.assert_close(out.relevance[k], single.relevance, rtol=1e-10, atol=1e-12)
    out = explainer(x, target=[0, 2], output_relevance=Select("aux"))  # one seed for all
    for k, single in enumerate(one_by_one(explainer, x, [(0, Select("aux")),
                                                          (2, Select("aux"))])):
        torch.testing.assert_close(out.relevance[k], single.relevance, rtol=1e-10, atol=1e-12)


def test_lists_that_do_not_pair_and_items_that_do_not_fit_are_refused():
    explainer, x = lrpfx.compile(net()), torch.randn(3, 2, 6, 6)
    with pytest.raises(ValueError, match="target has 2 items and output_relevance 3"):
        explainer(x, target=[1, 2], output_relevance=[one_hot, one_hot, one_hot])
    with pytest.raises(ValueError, match="empty list"):
        explainer(x, target=[])
    with pytest.raises(ValueError, match="target 7 is out of range"):
        explainer(x, target=[1, 7])
    with pytest.raises(ValueError, match="Unit: index 9 is out of range"):
        explainer(x, output_relevance=[Unit(1), Unit(9)])
