"""Misuse of ``lrpfx.compile`` and of an explainer: each is a typed error (or a warning) that
names the argument, module or key and the fix, never a raw torch error or a silent no-op."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx import composites, rules, targets


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()


X = torch.randn(2, 4, dtype=torch.float64)  # the tests run in float64 (conftest)


# -- arguments of compile --------------------------------------------------------------------------
@pytest.mark.parametrize(("model", "spec", "error", "says"), [
    (lambda x: x, "epsilon", TypeError, "model must be a torch.nn.Module, got the function"),
    (nn.Linear, "epsilon", TypeError, "model must be a torch.nn.Module"),
    (mlp(), 3, TypeError, r"rules must be a preset name .*, got int"),
    (mlp(), ["0", "2"], TypeError, r"got list of names; give each name its rule"),
    (mlp(), rules.Epsilon, TypeError, r"got the class Epsilon; pass an instance: Epsilon\(\)"),
    (mlp(), {"0": 3}, TypeError, r"rules: the value for '0' must be a Rule"),
    (mlp(), {3: rules.Flat()}, TypeError, r"rules: the key 3 is not a module class"),
])
def test_wrong_argument_types_to_compile_name_the_argument(model, spec, error, says):
    with pytest.raises(error, match=says):
        lrpfx.compile(model, spec)


@pytest.mark.parametrize(("make", "error", "says"), [
    (lambda: rules.Epsilon(-1e-3), ValueError, "Epsilon epsilon must be a finite number >= 0"),
    (lambda: rules.Epsilon("1e-6"), TypeError, "Epsilon epsilon must be a number, got str"),
    (lambda: rules.Epsilon(float("nan")), ValueError, "Epsilon epsilon must be a finite"),
    (lambda: rules.Gamma(-0.25), ValueError, "Gamma gamma must be a finite number >= 0"),
    (lambda: rules.Gamma(gamma=None), TypeError, "Gamma gamma must be a number"),
    (lambda: rules.ZPlus(stabilizer=-1.0), ValueError, "ZPlus stabilizer must be a finite"),
    (lambda: rules.AlphaBeta(1.0, -0.0 - 1), ValueError, "AlphaBeta beta must be"),
    (lambda: rules.Epsilon(ignore_bias="yes"), TypeError, "ignore_bias must be True or False"),
    (lambda: rules.ZBox("low", 1.0), TypeError, "ZBox low must be a number or a tensor"),
    (lambda: rules.ZBox(1.0, -1.0), ValueError, "ZBox needs low <= high"),
])
def test_bad_rule_parameters_are_refused_at_construction(make, error, says):
    with pytest.raises(error, match=says):
        make()


def test_good_rule_parameters_are_accepted():
    rules.Epsilon(0)  # LRP-0
    rules.Gamma(0.0), rules.ZPlus(stabilizer=0), rules.AlphaBeta(1, 0)
    rules.ZBox(torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1))


def test_a_name_key_matching_no_layer_is_warned_about_with_the_closest_names():
    model = nn.Sequential()
    model.add_module("features", nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    model.add_module("head", nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 3)))
    with pytest.warns(UserWarning, match=r"rules: the name 'feature.0' matches no layer of the "
                      r"model, so its rule is used nowhere; closest names: 'features.0'"):
        lrpfx.compile(model.eval(), {"feature.0": rules.Flat(), "head.1": rules.Epsilon()})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a glob that matches is fine
        lrpfx.compile(model.eval(), {"feat*.0": rules.Flat(), "head.1": rules.Epsilon()})


# -- wrapped, scripted, meta and lazy models; inference mode ---------------------------------------
def test_wrapped_models_are_unwrapped():
    model = mlp()
    expected = lrpfx.compile(model, {"0": rules.Flat()})(X, target=1)
    for wrapped in (nn.DataParallel(model), torch.compile(model)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "0" names the same layer: no warning
            out = lrpfx.compile(wrapped, {"0": rules.Flat()})(X, target=1)
        torch.testing.assert_close(out.relevance, expected.relevance, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated
@pytest.mark.parametrize("script", [lambda m: torch.jit.script(m), lambda m: torch.jit.trace(m, X)])
def test_a_torchscript_module_is_refused_with_what_to_pass(script):
    with pytest.raises(TypeError, match=r"model is a TorchScript module .* Pass the original "
                       r"nn.Module"):
        lrpfx.compile(script(mlp()))


def test_meta_and_uninitialized_lazy_models_are_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"model's tensor '0.weight' is on the meta device.*"
                       r"to_empty"):
        lrpfx.compile(nn.Sequential(nn.Linear(4, 3, device="meta")).eval())
    lazy = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.LazyLinear(3)).eval()
    with pytest.raises(ValueError, match=r"module '2' \(LazyLinear\) is a lazy module not "
                       r"initialized yet.*model\(x\)"):
        lrpfx.compile(lazy)
    lazy(X)  # initialized: fine
    torch.testing.assert_close(lrpfx.compile(lazy)(X).output, lazy(X))


def test_compile_and_explain_inside_inference_mode():
    model = mlp()
    expected = lrpfx.compile(model)(X, target=0)
    with torch.inference_mode():
        out = lrpfx.compile(model)(X, target=0)
        born_there = nn.Sequential(nn.Linear(4, 3)).eval()  # inference tensors
        explainer = lrpfx.compile(born_there)
        inside = explainer(X, target=0)
    torch.testing.assert_close(out.relevance, expected.relevance, rtol=0, atol=0)
    torch.testing.assert_close(explainer(X, target=0).relevance, inside.relevance)


# -- what is explained: output_relevance, Contrast, target -----------------------------------------
@pytest.mark.parametrize(("seed", "error", "says"), [
    (lambda o, t: o[:, 0], ValueError, r"output_relevance <lambda> returned \(2,\) .* the model "
     r"output is \(2, 3\)"),
    (lambda o, t: o.long(), TypeError, "must return a floating-point tensor.*got dtype"),
    (lambda o, t: 1.0, TypeError, "must return a floating-point tensor.*got float"),
    (lambda o, t: o / 0, ValueError, "output_relevance <lambda> returned NaN/Inf"),
    (lambda o, t: o[:, 7], ValueError, r"output_relevance <lambda> failed on the model output "
     r"of shape \(2, 3\): IndexError"),
])
def test_an_output_relevance_callable_is_checked_like_a_tensor(seed, error, says):
    with pytest.raises(error, match=says):
        lrpfx.compile(mlp())(X, output_relevance=seed)


@pytest.mark.parametrize(("other", "error", "says"), [
    (3, ValueError, "Contrast's other class 3 is out of range.*valid classes are 0 to 2"),
    (1.5, TypeError, "Contrast's other class must be an int"),
    (torch.tensor([0, 1, 2]), ValueError, r"Contrast's other class has shape \(3,\)"),
])
def test_contrast_is_checked_like_a_target(other, error, says):
    with pytest.raises(error, match=says):
        lrpfx.compile(mlp())(X, target=0, output_relevance=targets.Contrast(other))


@pytest.mark.parametrize("target", [2**63, -(2**70), 2**64 + 1, torch.tensor([0, 2**40])])
def test_a_target_beyond_int64_or_the_classes_is_out_of_range(target):
    with pytest.raises(ValueError, match="is out of range.*valid targets are 0 to 2"):
        lrpfx.compile(mlp())(X, target=target)


def test_a_segmentation_map_is_explained_at_every_position():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 1)).eval()
    explainer = lrpfx.compile(model, composites.EpsilonOnly())
    x = torch.randn(2, 3, 5, 5)
    output = model(x).detach()
    mask = torch.zeros_like(output).scatter(1, output.argmax(1, keepdim=True), 1.0)
    default = explainer(x)  # each position's own argmax class
    given = explainer(x, output_relevance=output * mask)
    torch.testing.assert_close(default.relevance, given.relevance)
    one = explainer(x, target=2)  # class 2 at every position
    torch.testing.assert_close(one.relevance,
                               explainer(x, output_relevance=output * (torch.arange(5) == 2)
                                         .reshape(1, 5, 1, 1)).relevance)
