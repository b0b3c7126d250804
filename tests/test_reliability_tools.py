"""``torch.where`` explained against a dense reference; ``lrpfx.show``, heatmaps and the command
line given bad input: named errors (the CLI: one line and exit status 2), never a traceback."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch import nn

import lrpfx
from lrpfx import cli, heatmap, rules


# -- torch.where -----------------------------------------------------------------------------------
class Select(nn.Module):
    """Two branches chosen per sample by a condition on the input, then a leaky selection."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.fc = nn.Linear(4, 5), nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        h = torch.where(x.sum(1, keepdim=True) > 0, self.a(x), self.b(x))
        return self.fc(torch.where(h.gt(0), h, 0.5))  # a number as a branch: a constant


def _epsilon(x, layer, r, eps):
    """LRP-ε through ``layer`` (dense): x · Wᵀ (R / stabilize(z))."""
    z = layer(x)
    return x * ((r / (z + eps * torch.where(z >= 0, 1.0, -1.0))) @ layer.weight)


def test_torch_where_routes_relevance_to_the_selected_branch():
    model, eps = Select().eval(), 1e-6
    x = torch.randn(8, 4)
    out = lrpfx.compile(model, rules.Epsilon(eps))(x, target=1)
    torch.testing.assert_close(out.output, model(x), rtol=0, atol=0)
    with torch.no_grad():  # the dense reference
        pick = x.sum(1, keepdim=True) > 0
        h = torch.where(pick, model.a(x), model.b(x))
        r_out = torch.zeros(8, 3)
        r_out[:, 1] = model(x)[:, 1]
        kept = torch.where(h > 0, h, 0.5)
        r_kept = _epsilon(kept, model.fc, r_out, eps)
        r_h = torch.where(h > 0, r_kept, 0.0)  # the constant 0.5 keeps its share
        r_a, r_b = torch.where(pick, r_h, 0.0), torch.where(pick, 0.0, r_h)
        expected = _epsilon(x, model.a, r_a, eps) + _epsilon(x, model.b, r_b, eps)
    torch.testing.assert_close(out.relevance, expected, rtol=1e-10, atol=1e-12)


def test_a_comparison_carries_no_relevance_and_where_conserves():
    model = nn.Sequential(nn.Linear(4, 4, bias=False)).eval()

    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x):
            h = self.inner(x)
            return torch.where(torch.lt(h, 0), -h, h * 2)  # |h| with a twist; lt is a mask

    x = torch.randn(5, 4)
    out = lrpfx.compile(Gate().eval(), rules.Epsilon(0.0))(x, output_relevance=torch.ones(5, 4))
    torch.testing.assert_close(out.relevance.sum(1), torch.full((5,), 4.0))


# -- lrpfx.show and heatmaps -----------------------------------------------------------------------
def test_show_with_a_wrong_example_is_a_named_error():
    explainer = lrpfx.compile(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(),
                                            nn.Linear(4 * 6 * 6, 2)).eval())
    console = Console(file=io.StringIO())
    with pytest.raises(ValueError, match=r"example: x has 1 channels .* takes 3"):
        lrpfx.show(explainer, console, example=torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"example: x of shape \(1, 3, 9, 9\) does not fit"):
        lrpfx.show(explainer, console, example=torch.randn(1, 3, 9, 9))
    with pytest.raises(TypeError, match="example: x must be a torch.Tensor"):
        lrpfx.show(explainer, console, example=[1, 2])
    lrpfx.show(explainer, console, example=torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize(("relevance", "error", "says"), [
    (torch.zeros(0, 3, 4, 4), ValueError, r"non-empty relevance, got shape \(0, 3, 4, 4\)"),
    (torch.zeros(2, 3, 0, 4), ValueError, "non-empty relevance"),
    (torch.tensor([[[1.0, float("nan")]]]).expand(2, 2, 2).clone(), ValueError,
     r"relevance of sample\(s\) \[0, 1\] contains NaN/Inf"),
    ([[1.0]], TypeError, "heatmaps take a relevance tensor, got list"),
])
def test_heatmaps_of_empty_or_nan_relevance_are_errors(relevance, error, says):
    with pytest.raises(error, match=says):
        heatmap.heatmap(relevance)
    with pytest.raises(error, match=says):
        heatmap.overlay(torch.rand(2, 3, 4, 4), relevance)


def test_a_zero_relevance_is_a_blank_heatmap():
    assert heatmap.heatmap(torch.zeros(1, 3, 4, 4)).double().allclose(torch.ones(1, 3, 4, 4))


# -- the command line ------------------------------------------------------------------------------
FACTORY = '''
from torch import nn

def tiny():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(16, 5))

def flat():  # takes 10 features, not images
    return nn.Sequential(nn.Flatten(), nn.Linear(10, 5))
'''


def _run(*argv: object) -> tuple[int, str]:
    buffer = io.StringIO()
    status = cli.main([str(a) for a in argv], Console(file=buffer, width=400, color_system=None))
    return status, buffer.getvalue()


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "zoo.py").write_text(FACTORY)
    (tmp_path / "images").mkdir()
    heatmap.write_png(torch.full((3, 20, 20), 90, dtype=torch.uint8), tmp_path / "images/a.png")
    (tmp_path / "a_file").write_text("not a folder")
    torch.save(nn.Linear(2, 2), tmp_path / "whole.pt")
    return {"tmp": tmp_path}


@pytest.mark.parametrize(("options", "says"), [
    (["--top-k", "0"], "--top-k is a percentage: more than 0 and at most 100, got 0"),
    (["--top-k", "150"], "--top-k is a percentage: more than 0 and at most 100, got 150"),
    (["--size", "0"], "--size must be a positive number of pixels, got 0"),
    (["--size", "-3"], "--size must be a positive number of pixels, got -3"),
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--out", "{tmp}/a_file"], "--out {tmp}/a_file is a file; give a folder"),
    (["--arch", "{tmp}/zoo.py:flat"], "--arch {tmp}/zoo.py:flat does not take 16x16 RGB images "
     "(--size 16): x of shape (1, 3, 16, 16) does not fit the model: it fails at '1'"),
    (["--weights", "{tmp}/whole.pt"], "--weights {tmp}/whole.pt: holds pickled Python objects "
     "(a whole model saved with torch.save(model)?)"),
    (["--target", "-1"], "--target -1 is not a class of this model (0..4)"),
])
def test_every_bad_option_is_one_line_and_status_2(setup, options, says):
    tmp = setup["tmp"]
    argv = ["explain", tmp / "images", "--arch", f"{tmp}/zoo.py:tiny", "--size", "16",
            "--out", tmp / "out", *[o.format(tmp=tmp) for o in options]]
    status, text = _run(*argv)
    assert status == 2, text
    errors = [line for line in text.splitlines() if "error" in line]
    assert len(errors) == 1 and says.format(tmp=tmp) in errors[0], text
    assert "Traceback" not in text


def test_show_with_a_model_that_does_not_take_images_is_one_line(setup):
    status, text = _run("show", "--arch", f"{setup['tmp']}/zoo.py:flat", "--size", "16")
    assert status == 2 and text.count("\n") == 1 and "does not take 16x16 RGB images" in text


def test_good_options_still_explain(setup):
    tmp = setup["tmp"]
    status, text = _run("explain", tmp / "images", "--arch", f"{tmp}/zoo.py:tiny", "--size",
                        "16", "--top-k", "100", "--out", tmp / "out")
    assert status == 0, text
    assert (tmp / "out" / "a.png").is_file()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_the_finite_check_finds_every_nan_and_infinity(dtype):
    """``runtime.finite`` (one ``aminmax``) agrees with ``isfinite(t).all()``."""
    from lrpfx import runtime as rt

    t = torch.randn(3, 40, dtype=torch.float64).to(dtype)
    assert rt.finite(t) and rt.finite(t[:0]) and rt.finite(torch.arange(3))
    for bad in (float("nan"), float("inf"), float("-inf")):
        u = t.clone()
        u[2, 17] = bad
        assert not rt.finite(u)
        assert not rt.finite(u[2:])
