"""Seeds beyond a class logit (``Region``, ``Unit``, ``Select``) and models whose output is a
dict / tuple / list of tensors: each seed against a hand-built tensor, Region's conservation
and its equality with input × gradient under LRP-0, and the argument checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lrpfx
from lrpfx import composites
from lrpfx.errors import UnsupportedOperationError
from lrpfx.targets import Contrast, Region, Select, Unit, one_hot

LRP0 = composites.EpsilonOnly(epsilon=1e-12, stabilizer=1e-12, ignore_bias=True)


class Segmenter(nn.Module):
    """A tiny segmentation net: conv, ReLU, 1×1 classifier, bilinear upsampling ×2; returns
    ``{"out": (N, 4, 2H, 2W), "aux": (N, 3, H, W)}`` as torchvision's segmentation models."""

    def __init__(self, bias: bool = False) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 6, 3, padding=1, bias=bias)
        self.head = nn.Conv2d(6, 4, 1, bias=bias)
        self.aux = nn.Conv2d(6, 3, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.relu(self.body(x))
        out = F.interpolate(self.head(h), scale_factor=2, mode="bilinear", align_corners=False)
        return {"out": out, "aux": self.aux(h)}


class Out(nn.Module):
    """Element ``key`` of a model's structured output: the one-tensor model it explains."""

    def __init__(self, model: nn.Module, key: object) -> None:
        super().__init__()
        self.model, self.key = model, key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[self.key]


def mask_of(h: int, w: int) -> torch.Tensor:
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[2:7, 3:11] = True
    return mask


# -- the seeds, by hand ----------------------------------------------------------------------------
def test_region_keeps_the_class_logits_inside_the_mask():
    output = torch.randn(2, 3, 4, 5)
    mask = torch.zeros(4, 5, dtype=torch.bool)
    mask[1, 2] = mask[3, 0] = True
    expected = torch.zeros_like(output)
    for n in range(2):
        expected[n, 1, 1, 2] = output[n, 1, 1, 2]
        expected[n, 1, 3, 0] = output[n, 1, 3, 0]
    assert torch.equal(Region(mask, 1)(output, None), expected)
    per_sample = torch.stack([mask, ~mask])  # (N, H, W): the second sample's complement
    expected[1, 1] = torch.where(~mask, output[1, 1], 0.0)
    assert torch.equal(Region(per_sample, 1)(output, None), expected)


def test_region_without_a_mask_takes_the_pixels_predicted_as_the_class():
    output = torch.randn(2, 3, 4, 5)
    predicted = output.argmax(1) == 2
    expected = torch.zeros_like(output)
    expected[:, 2] = torch.where(predicted, output[:, 2], 0.0)
    assert torch.equal(Region(None, 2)(output, None), expected)


def test_unit_keeps_one_output_unit():
    output = torch.randn(3, 4, 2)
    expected = torch.zeros_like(output)
    expected[:, 1, 0] = output[:, 1, 0]
    assert torch.equal(Unit((1, 0))(output, None), expected)
    expected = torch.zeros_like(output)
    expected[:, 3] = output[:, 3]  # a shorter index: the whole slice
    assert torch.equal(Unit(-1)(output, None), expected)


def test_select_seeds_one_element_and_zeros_the_others():
    a, b = torch.randn(2, 5), torch.randn(2, 3, 4)
    r = Select("b", Unit((0, 1)))({"a": a, "b": b}, None)
    assert torch.equal(r["a"], torch.zeros_like(a))
    assert torch.equal(r["b"], Unit((0, 1))(b, None))
    r = Select(0)((a, [b]), torch.tensor([4, 1]))  # no inner: the target logit
    assert torch.equal(r[0], lrpfx.targets.logit(a, torch.tensor([4, 1])))
    assert isinstance(r, tuple) and isinstance(r[1], list) and not r[1][0].any()
    r = Select(1, Select(0, one_hot))((a, [b]), torch.tensor([1, 2]))  # nested
    assert torch.equal(r[1][0], one_hot(b, torch.tensor([1, 2])))


# -- through a model -------------------------------------------------------------------------------
def test_a_dict_output_is_returned_as_the_model_returns_it():
    model = Segmenter(bias=True).eval()
    x = torch.randn(2, 3, 8, 8)
    out = lrpfx.compile(model)(x, output_relevance=Select("out"))
    expected = model(x)
    assert isinstance(out.output, dict) and list(out.output) == ["out", "aux"]
    for key in expected:
        torch.testing.assert_close(out.output[key], expected[key], rtol=1e-12, atol=1e-12)
    assert "dict {'out': (2, 4, 16, 16), 'aux': (2, 3, 8, 8)}" in repr(out)


def test_region_conserves_the_regions_summed_logit():
    model = Segmenter().eval()
    x = torch.randn(3, 3, 8, 8)
    mask = mask_of(16, 16)
    out = lrpfx.compile(model, LRP0)(x, output_relevance=Select("out", Region(mask, 2)))
    region = out.output["out"][:, 2][:, mask].sum(1)
    torch.testing.assert_close(out.relevance.sum((1, 2, 3)), region, rtol=1e-8, atol=1e-10)


def test_region_under_lrp0_is_input_times_gradient():
    """LRP-0 on a ReLU net without biases (bilinear upsampling is linear) is x · ∇f."""
    model = Segmenter().eval()
    x = torch.randn(2, 3, 8, 8)
    mask = torch.stack([mask_of(16, 16), ~mask_of(16, 16)])
    out = lrpfx.compile(model, LRP0)(x, output_relevance=Select("out", Region(mask, 1)))
    xg = x.clone().requires_grad_(True)
    (model(xg)["out"][:, 1] * mask).sum().backward()
    torch.testing.assert_close(out.relevance, x * xg.grad, rtol=1e-6, atol=1e-8)


def test_select_explains_the_element_as_a_model_returning_it_alone():
    model = Segmenter(bias=True).eval()
    x = torch.randn(2, 3, 8, 8)
    explainer = lrpfx.compile(model, "epsilon-plus-flat")
    for key, seed, target in [("aux", None, 1), ("out", Contrast(0), 3),
                              ("out", Region(None, 2), None), ("aux", Unit(1), None)]:
        out = explainer(x, target=target, output_relevance=Select(key, seed))
        alone = lrpfx.compile(Out(model, key).eval(), "epsilon-plus-flat")
        expected = alone(x, target=target, output_relevance=seed)
        torch.testing.assert_close(out.relevance, expected.relevance, rtol=1e-10, atol=1e-12)


def test_unit_of_a_regression_output_conserves_its_value():
    model = nn.Sequential(nn.Linear(5, 7, bias=False), nn.ReLU(), nn.Linear(7, 2, bias=False))
    x = torch.randn(4, 5)
    out = lrpfx.compile(model.eval(), LRP0)(x, output_relevance=Unit(1))
    torch.testing.assert_close(out.relevance.sum(1), out.output[:, 1], rtol=1e-8, atol=1e-10)


def test_a_structure_of_tensors_seeds_each_element():
    model = Segmenter().eval()
    x = torch.randn(2, 3, 8, 8)
    explainer = lrpfx.compile(model, LRP0)
    output = model(x)
    given = {"out": Region(None, 1)(output["out"], None), "aux": torch.ones(2, 3, 8, 8)}
    both = explainer(x, output_relevance=given).relevance
    one = explainer(x, output_relevance=Select("out", Region(None, 1))).relevance
    other = explainer(x, output_relevance=Select("aux", torch.ones(2, 3, 8, 8))).relevance
    torch.testing.assert_close(both, one + other, rtol=1e-9, atol=1e-10)  # LRP is linear


def test_a_tensor_returned_twice_gets_both_relevances():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3, bias=False)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = self.fc(x)
            return y, y

    x = torch.randn(2, 4)
    explainer = lrpfx.compile(Twice().eval(), LRP0)
    out = explainer(x, output_relevance=lambda o, t: (Unit(0)(o[0], t), Unit(2)(o[1], t)))
    torch.testing.assert_close(out.relevance.sum(1), out.output[0][:, 0] + out.output[1][:, 2])


# -- what is refused -------------------------------------------------------------------------------
@pytest.mark.parametrize("seed, error, match", [
    (None, ValueError, r"dict \{'out': \(2, 4, 16, 16\), 'aux'.*Select\('out'\)"),
    (Region(None, 1), ValueError, r"which element Region.*Select\('out', \.\.\.\)"),
    (Select("logits"), ValueError, r"without that key; its keys are \['out', 'aux'\]"),
    (Select("out", Region(torch.ones(3, 16, 16, dtype=torch.bool), 1)), ValueError,
     r"mask has shape \(3, 16, 16\).*\(16, 16\) \(every sample\) or \(2, 16, 16\)"),
    (Select("out", Region(torch.ones(16, 16), 1)), TypeError, "mask must be a bool tensor"),
    (Select("out", Region(None, 4)), ValueError, "class 4 is out of range.*0 to 3"),
    (Select("aux", Unit((1, 8))), ValueError, r"index \(1, 8\) is out of range.*\(3, 8, 8\)"),
    (Select("aux", Unit(1.5)), TypeError, "index must be an int or a tuple of ints"),
    ({"out": torch.zeros(2, 4, 16, 16)}, ValueError, r"no tensor for output\['aux'\]"),
])
def test_seeds_that_do_not_fit_the_output_are_refused(seed, error, match):
    explainer = lrpfx.compile(Segmenter().eval())
    with pytest.raises(error, match=match):
        explainer(torch.randn(2, 3, 8, 8), output_relevance=seed)


def test_a_target_with_a_seed_that_picks_its_own_is_refused():
    explainer = lrpfx.compile(Segmenter().eval())
    with pytest.raises(ValueError, match="Region says what is explained; pass no target"):
        explainer(torch.randn(2, 3, 8, 8), target=1,
                  output_relevance=Select("out", Region(None, 1)))
    with pytest.raises(ValueError, match="target 5 is out of range.*3 classes"):
        explainer(torch.randn(2, 3, 8, 8), target=5, output_relevance=Select("aux"))


def test_region_needs_positions_and_select_needs_a_structure():
    explainer = lrpfx.compile(nn.Sequential(nn.Linear(4, 3)).eval())
    with pytest.raises(ValueError, match=r"Region needs an output with positions.*\(2, 3\)"):
        explainer(torch.randn(2, 4), output_relevance=Region(None, 0))
    with pytest.raises(ValueError, match=r"Select\('out'\) picks an element.*drop the Select"):
        explainer(torch.randn(2, 4), output_relevance=Select("out"))


def test_an_output_that_is_not_made_of_tensors_is_refused_at_compile():
    class Counted(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
            return x * 2.0, 3

    with pytest.raises(UnsupportedOperationError, match=r"output\[1\] is int"):
        lrpfx.compile(Counted().eval())
