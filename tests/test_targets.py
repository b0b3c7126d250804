"""What is explained: target logit (default), one-hot, a user tensor, and the contrast of two
classes, which by the linearity of LRP equals the difference of two explanations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx import composites, targets


def net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 6),
                         nn.ReLU(), nn.Linear(6, 5)).eval()


def test_one_hot_puts_relevance_one_on_the_target():
    model = net()
    x = torch.randn(3, 2, 6, 6)
    conserving = composites.EpsilonOnly(epsilon=1e-12, stabilizer=1e-12, ignore_bias=True)
    explainer = lrpfx.compile(model, conserving)
    out = explainer(x, target=2, output_relevance=targets.one_hot)
    torch.testing.assert_close(out.relevance.sum((1, 2, 3)), torch.ones(3), rtol=1e-8, atol=0)
    logit = explainer(x, target=2)  # the default: the target logit, so one-hot = that / logit
    torch.testing.assert_close(out.relevance * out.output[:, 2, None, None, None],
                               logit.relevance, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("rules", ["epsilon-plus", "epsilon-alpha2-beta1", "epsilon"])
def test_contrast_is_the_difference_of_two_explanations(rules):
    model = net()
    x = torch.randn(4, 2, 6, 6)
    explainer = lrpfx.compile(model, rules)
    a, b = 1, torch.tensor([0, 2, 3, 4])
    contrast = explainer(x, target=a, output_relevance=targets.Contrast(b))
    difference = explainer(x, target=a).relevance - explainer(x, target=b).relevance
    torch.testing.assert_close(contrast.relevance, difference, rtol=1e-9, atol=1e-12)


def test_contrast_with_the_runner_up():
    model = net()
    x = torch.randn(4, 2, 6, 6)
    explainer = lrpfx.compile(model, "epsilon-plus")
    out = explainer(x, output_relevance=targets.Contrast())
    top2 = out.output.topk(2, dim=1).indices
    expected = explainer(x, target=top2[:, 0]).relevance - explainer(x, target=top2[:, 1]).relevance
    torch.testing.assert_close(out.relevance, expected, rtol=1e-9, atol=1e-12)


def test_a_user_tensor_is_used_as_is_and_checked():
    model = net()
    x = torch.randn(2, 2, 6, 6)
    explainer = lrpfx.compile(model)
    weights = torch.tensor([[0.0, 1.0, 0.0, -1.0, 0.0], [0.5, 0.0, 0.0, 0.0, 0.5]])
    given = explainer(x, output_relevance=weights)
    by_seed = explainer(x, output_relevance=lambda output, target: weights)
    torch.testing.assert_close(given.relevance, by_seed.relevance)
    with pytest.raises(ValueError, match=r"output_relevance has shape \(2, 4\).*\(2, 5\)"):
        explainer(x, output_relevance=torch.zeros(2, 4))
