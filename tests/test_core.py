"""Whole-network properties of the core compiler: conservation, LRP-0 = input × gradient,
spellings, passes, the user's model untouched, and a golden snapshot of the generated code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lrpfx
from lrpfx import composites, passes, rules
from lrpfx.frontend.fx import trace

GOLDEN = Path(__file__).parent / "golden"


def relu_net(bias: bool = True) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=bias), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, stride=2, bias=bias), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(32, 16, bias=bias), nn.ReLU(), nn.Linear(16, 5, bias=bias),
    ).eval()


@pytest.mark.parametrize("maxpool", ["avg", "wta"])
def test_epsilon_zero_conserves_relevance_without_biases(maxpool):
    model = relu_net(bias=False)
    x = torch.randn(4, 3, 12, 12)
    composite = composites.EpsilonOnly(epsilon=1e-12, stabilizer=1e-12)  # pools too: ε → 0
    out = lrpfx.compile(model, composite, maxpool=maxpool)(x)
    total = out.relevance.sum((1, 2, 3))
    logit = out.output.gather(1, out.output.argmax(1, keepdim=True))[:, 0]
    torch.testing.assert_close(total, logit, rtol=1e-8, atol=0)


@pytest.mark.parametrize("bias", [True, False])
def test_lrp_zero_equals_input_times_gradient(bias):
    model = relu_net(bias)
    x = torch.randn(3, 3, 12, 12, requires_grad=True)
    target = torch.tensor([0, 3, 4])
    lrp0 = composites.EpsilonOnly(epsilon=0.0, stabilizer=1e-12)  # pools: ε → 0 as well
    out = lrpfx.compile(model, lrp0, maxpool="wta")(x, target)
    (grad,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)
    torch.testing.assert_close(out.relevance, x.detach() * grad, rtol=1e-9, atol=1e-12)


class Spelled(nn.Module):
    """One network; ``how`` picks the spelling of its ReLUs and its flatten."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(2, 4, 3)
        self.act = nn.ReLU(inplace=how == "inplace-module")
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def relu(self, x: torch.Tensor) -> torch.Tensor:
        how = self.how
        if how in ("module", "inplace-module"):
            return self.act(x)
        if how == "F.relu":
            return F.relu(x)
        if how == "torch.relu":
            return torch.relu(x)
        if how == "method":
            return x.relu()
        return x.relu_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv(x))
        x = torch.flatten(x, 1) if self.how != "method" else x.view(x.size(0), -1)
        return self.fc(x)


SPELLINGS = ["module", "inplace-module", "F.relu", "torch.relu", "method", "relu_"]


def test_every_spelling_gives_the_same_relevance():
    x = torch.randn(2, 2, 6, 6)
    reference = None
    for how in SPELLINGS:
        torch.manual_seed(0)
        model = Spelled(how).eval()
        relevance = lrpfx.compile(model, "epsilon-plus-flat")(x).relevance
        if reference is None:
            reference = relevance
        torch.testing.assert_close(relevance, reference, rtol=0, atol=0, msg=how)


def test_normalize_leaves_one_function_per_op():
    for how in SPELLINGS:
        gm = passes.normalize(trace(Spelled(how).eval()))
        targets = [n.target for n in gm.graph.nodes if n.op.startswith("call")]
        assert targets.count(torch.relu) == 1, how
        assert not [n for n in gm.graph.nodes if n.op == "call_module"], how
        assert {n.target for n in gm.graph.nodes if n.op == "call_method"} <= {"size"}, how


def bn_net() -> nn.Module:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        nn.BatchNorm2d(4),  # follows a ReLU: cannot be folded
        nn.Flatten(), nn.Linear(4 * 4 * 4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2),
    )
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
                m.weight.normal_()
                m.bias.normal_()
    return model.eval()


def test_fold_batchnorm_removes_foldable_batchnorms_and_keeps_outputs():
    model = bn_net()
    gm = passes.fold_batchnorm(passes.normalize(trace(model)))
    affine = [n for n in gm.graph.nodes if n.target is lrpfx.runtime.affine]
    assert len(affine) == 1 and affine[0].meta["lrpfx.path"] == "3"
    folded = [n.meta.get("lrpfx.folded") for n in gm.graph.nodes if n.meta.get("lrpfx.folded")]
    assert folded == [["1"], ["6"]]
    x = torch.randn(5, 3, 6, 6)
    torch.testing.assert_close(gm(x), model(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lrpfx.compile(model)(x).output, model(x), rtol=1e-12, atol=1e-12)


def _snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: (v.clone(), v.data_ptr(), v.dtype, v.device)
                  for k, v in model.state_dict(keep_vars=True).items()},
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "training": {k: m.training for k, m in model.named_modules()},
        "hooks": {k: (dict(m._forward_hooks), dict(m._forward_pre_hooks),
                      dict(m._backward_hooks)) for k, m in model.named_modules()},
        "modules": {k: type(m) for k, m in model.named_modules()},
    }


def _assert_same(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for key, (value, ptr, dtype, device) in before["state"].items():
        value2, ptr2, dtype2, device2 = after["state"][key]
        assert (ptr, dtype, device) == (ptr2, dtype2, device2), key
        assert torch.equal(value, value2), key
    for part in ("requires_grad", "training", "hooks", "modules"):
        assert before[part] == after[part], part


@pytest.mark.parametrize("training", [False, True])
def test_the_users_model_is_never_modified(training):
    model = bn_net().float().train(training)
    model[0].weight.requires_grad_(False)
    calls = []
    model[2].register_forward_hook(lambda *a: calls.append(1))
    before = _snapshot(model)
    with pytest.warns(UserWarning, match="training mode") if training else _nothing():
        explainer = lrpfx.compile(model, composites.EpsilonGammaBox(-3.0, 3.0))
    explainer(torch.randn(2, 3, 6, 6, dtype=torch.float32))
    explainer.double()(torch.randn(2, 3, 6, 6))
    explainer.to(torch.float32)
    _assert_same(before, _snapshot(model))
    assert calls == []  # explaining never calls the user's modules (or their hooks)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * 2 * 2, 3),
    ).eval()


def test_golden_code_of_a_tiny_network():
    """The generated program of a conv+BN+ReLU+pool+linear net. A change to codegen shows up
    here; if it is intended, rerun with LRPFX_UPDATE_GOLDEN=1 and review the diff."""
    code = lrpfx.compile(tiny_net(), "epsilon-plus-flat").code.strip() + "\n"
    path = GOLDEN / "tiny_net.py.txt"
    if os.environ.get("LRPFX_UPDATE_GOLDEN"):
        path.write_text(code)
    assert code == path.read_text()


def test_targets_and_output_relevance():
    model = relu_net()
    explainer = lrpfx.compile(model, "epsilon-plus")
    x = torch.randn(3, 3, 12, 12)
    y = model(x)
    by_argmax = explainer(x)
    by_tensor = explainer(x, y.argmax(1))
    by_relevance = explainer(x, output_relevance=y * F.one_hot(y.argmax(1), 5))
    torch.testing.assert_close(by_argmax.relevance, by_tensor.relevance)
    torch.testing.assert_close(by_argmax.relevance, by_relevance.relevance)
    per_sample = torch.stack([explainer(x[i:i + 1], 2).relevance[0] for i in range(3)])
    torch.testing.assert_close(explainer(x, 2).relevance, per_sample)


def test_presets_by_name_and_class_agree():
    model = relu_net()
    x = torch.randn(2, 3, 12, 12)
    for name, cls in composites.PRESETS.items():
        if name == "epsilon-gamma-box":
            continue
        by_name = lrpfx.compile(model, name)(x).relevance
        by_class = lrpfx.compile(model, cls())(x).relevance
        torch.testing.assert_close(by_name, by_class, rtol=0, atol=0)
    with pytest.raises(ValueError, match="needs the input bounds"):
        lrpfx.compile(model, "epsilon-gamma-box")
    with pytest.raises(ValueError, match="unknown composite"):
        lrpfx.compile(model, "epsilon-pluss")


def test_first_layer_is_first_in_execution_order():
    class Reordered(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(8, 2)  # registered first, runs last
            self.body = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return self.head(torch.flatten(torch.relu(self.body(x)), 1))

    explainer = lrpfx.compile(Reordered().eval(), "epsilon-plus-flat")
    assigned = {n.meta.get("lrpfx.path"): n.meta.get("lrpfx.rule")
                for n in explainer.graph_module.graph.nodes}
    assert isinstance(assigned["body"], rules.Flat)
    assert isinstance(assigned["head"], rules.Epsilon)


def test_custom_map_names_before_classes_and_first_match_wins():
    model = relu_net()
    explainer = lrpfx.compile(model, {nn.Conv2d: rules.ZPlus(), "0": rules.Flat(),
                                      nn.Linear: rules.Epsilon(0.1), "9": rules.Epsilon(0.2)})
    assigned = {n.meta.get("lrpfx.path"): n.meta.get("lrpfx.rule")
                for n in explainer.graph_module.graph.nodes}
    assert assigned["0"] == rules.Flat()
    assert assigned["3"] == rules.ZPlus()
    assert assigned["7"] == rules.Epsilon(0.1)
    assert assigned["9"] == rules.Epsilon(0.2)
    assert assigned["1"] == rules.Pass()


def test_unsupported_nodes_are_all_listed_at_compile_time():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect")
            self.up = nn.Upsample(scale_factor=2, mode="area")  # other modes are explained

        def forward(self, x):
            return torch.cumsum(self.up(self.conv(x)), -1).flatten(1)

    with pytest.raises(lrpfx.UnsupportedOperationError) as info:
        lrpfx.compile(Odd().eval())
    message = str(info.value)
    assert "3 node(s)" in message
    assert "padding_mode='reflect'" in message and "Upsample" in message
    assert "torch.cumsum" in message and "test_core.py" in message
    assert "Fix:" in message


def test_first_layer_key_in_a_custom_map():
    model = relu_net()
    explainer = lrpfx.compile(model, {composites.First(): rules.WSquare(),
                                      composites.Position(-1): rules.Epsilon(0.0),
                                      nn.Conv2d: rules.Gamma(0.5)})
    assigned = {n.meta.get("lrpfx.path"): n.meta.get("lrpfx.rule")
                for n in explainer.graph_module.graph.nodes}
    assert assigned["0"] == rules.WSquare()
    assert assigned["3"] == rules.Gamma(0.5)
    assert assigned["7"] == rules.Epsilon()  # the default for dense layers
    assert assigned["9"] == rules.Epsilon(0.0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16],
                         ids=str)
def test_stabilize_adds_exactly_plus_or_minus_epsilon(dtype):
    """``z + ε·sign0(z)``, sign0(0) = +1, bit for bit as ``where(z >= 0, ε, −ε)`` in z's dtype,
    in place or not."""
    from lrpfx import runtime as rt

    z = torch.randn(64, 33).to(dtype)
    z[0, :5] = 0.0
    z[1, :3] = -0.0
    for epsilon in (1e-6, 1e-9, 0.25, 1e-15, 0.0):
        eps = torch.full((), epsilon, dtype=dtype)
        expected = z + torch.where(z >= 0, eps, -eps)
        assert torch.equal(rt.stabilize(z, epsilon), expected)
        assert torch.equal(rt.stabilize_(z.clone(), epsilon), expected)
        assert torch.equal(rt.stabilize(z, torch.tensor(epsilon)), expected)
