"""The torch.export front end gives the graph the fx front end gives: the same relevance for a
ViT and a CNN (float64, ≤ 1e-10), the same rules by module type and name, a readable program;
``frontend="auto"`` uses it where fx cannot trace."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx import composites, meta, rules
from tests.test_attention_models import _small_vit


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(inplace=True), nn.AvgPool2d(2))
        self.pool = nn.AdaptiveAvgPool2d((2, 2))
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def _cnn() -> CNN:
    torch.manual_seed(0)
    model = CNN().eval()
    norm = model.features[1]
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    norm.running_mean.normal_()
    norm.running_var.uniform_(0.5, 2.0)
    return model


def _same(model: nn.Module, spec, x: torch.Tensor, target: int, **options) -> lrpfx.Explainer:
    traced = lrpfx.compile(model, spec, example_inputs=x, **options)
    exported = lrpfx.compile(model, spec, example_inputs=x, frontend="export", **options)
    expected, out = traced(x, target=target), exported(x, target=target)
    torch.testing.assert_close(out.output, model(x), rtol=1e-12, atol=1e-14)
    assert expected.relevance.abs().amax() > 0  # not zeros compared
    torch.testing.assert_close(out.relevance, expected.relevance, rtol=0, atol=1e-10)
    if not isinstance(model, type(_small_vit())):  # MHA: one in-projection, three under fx
        assert repr(exported) == repr(traced)  # the same layers of each kind
    return exported


def test_vit_through_both_front_ends():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    model = _small_vit()
    _same(model, composites.AttnLRP(epsilon=1e-15), x, 2)
    _same(model, composites.CPLRP(epsilon=1e-12), x, 1)
    _same(model, composites.AttnLRPGamma(epsilon=1e-12), x, 0)


class Einsum(nn.Module):
    """Two computed operands of an ``einsum`` (MaxViT's and MViT's attention logits)."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bij,bkj->bik", self.q(x), self.k(x)).flatten(1)


def test_einsum_through_both_front_ends():
    torch.manual_seed(0)
    _same(Einsum().eval(), composites.AttnLRP(epsilon=1e-15),
          torch.randn(2, 3, 4, dtype=torch.float64), 4)


@pytest.mark.parametrize("maxpool", ["avg", "wta"])
def test_cnn_through_both_front_ends_with_rules_by_type_and_name(maxpool):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    by_type_and_name = {"features.0": rules.Flat(), nn.Conv2d: rules.ZPlus(),
                        "fc": rules.Epsilon(0.1)}
    _same(_cnn(), by_type_and_name, x, 3, maxpool=maxpool)
    _same(_cnn(), "epsilon-plus-flat", x, 2, maxpool=maxpool)


def test_the_exported_program_reads_like_the_traced_one():
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    explainer = lrpfx.compile(_cnn(), "epsilon-plus", example_inputs=x, frontend="export")
    nodes = {n.meta.get(meta.PATH): n for n in explainer.graph_module.graph.nodes
             if n.meta.get(meta.PATH)}
    assert nodes["fc"].meta[meta.MODULE_TYPE] is nn.Linear
    assert nodes["fc"].meta[meta.ORIGIN] == "aten.linear"
    assert nodes["features.0"].meta[meta.MODULE_TYPE] is nn.Conv2d
    code = explainer.code
    assert "features_0 = torch.conv2d(" in code and "fc = torch._C._nn.linear(" in code
    assert "aten" not in code  # every op canonical, named after its module


class Untraceable(nn.Module):
    """Python control flow on a tensor's dtype: fx cannot trace it without example inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        if x.dtype == torch.float64:
            x = x * 2
        return self.fc(torch.relu(x))


@pytest.mark.parametrize("frontend", ["auto", "export"])
def test_an_untraceable_model_needs_example_inputs_and_is_explained_with_them(frontend):
    """(HuggingFace models, which fx cannot trace even with example inputs, take the export
    front end under "auto": ``tests/test_language_models.py``.)"""
    torch.manual_seed(0)
    model = Untraceable().eval()
    x = torch.randn(3, 4, dtype=torch.float64).abs() + 0.1  # no sample all cut by the ReLU
    with pytest.raises(lrpfx.TraceError, match="or pass example_inputs.*torch.export"):
        lrpfx.compile(model, "epsilon-plus")
    with pytest.raises(ValueError, match="frontend='jit'; use 'auto', 'fx' or 'export'"):
        lrpfx.compile(model, "epsilon-plus", example_inputs=x, frontend="jit")
    explainer = lrpfx.compile(model, "epsilon-plus", example_inputs=x, frontend=frontend)
    out = explainer(x, target=1)
    torch.testing.assert_close(out.output, model(x), rtol=0, atol=0)
    plain = nn.Sequential(nn.ReLU(), model.fc).eval()
    expected = lrpfx.compile(plain, "epsilon-plus")(2 * x, target=1).relevance
    torch.testing.assert_close(out.relevance, expected, rtol=1e-12, atol=1e-14)


def test_export_needs_example_inputs_and_leaves_the_model_alone():
    model = _cnn()
    with pytest.raises(lrpfx.errors.ExampleInputsNeededError, match="example_inputs"):
        lrpfx.compile(model, "epsilon-plus", frontend="export")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    explainer = lrpfx.compile(model, "epsilon-plus", frontend="export",
                              example_inputs=torch.randn(2, 3, 16, 16, dtype=torch.float64))
    explainer(torch.randn(2, 3, 16, 16, dtype=torch.float64))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and not model.training
