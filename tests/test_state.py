"""Nothing of the user's is ever changed: parameters, buffers (tensor by tensor: same objects,
same storage, same values, same version counters), hooks, training flags and requires_grad stay
as they were through compile and explain, across the torchvision zoo; the input is never written
either. In-place ops in the model give the same relevance as out-of-place ones."""

from __future__ import annotations

import itertools
import os
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import lrpfx
from lrpfx import rules
from lrpfx.frontend.fx import Tracer
from lrpfx.ops import table

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
               "_load_state_dict_post_hooks", "_forward_hooks_with_kwargs",
               "_forward_pre_hooks_with_kwargs")


def snapshot(model: nn.Module) -> dict:
    """Everything of ``model`` that lrpfx could change, by identity and by value."""
    tensors = {}
    for name, t in itertools.chain(model.named_parameters(remove_duplicate=False),
                                   model.named_buffers(remove_duplicate=False)):
        tensors[name] = (id(t), t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape),
                         t.stride(), t.requires_grad, t.grad, t.detach().clone())
    modules = {
        name: (id(m), type(m), m.training, sorted(vars(m)), list(m._parameters),
               list(m._buffers), list(m._modules),
               tuple(dict(getattr(m, d, {})) for d in _HOOK_DICTS))
        for name, m in model.named_modules(remove_duplicate=False)
    }
    state = {k: (id(v), v.data_ptr()) for k, v in model.state_dict(keep_vars=True).items()}
    hooks = nn.modules.module
    global_hooks = (dict(hooks._global_forward_hooks), dict(hooks._global_forward_pre_hooks),
                    dict(hooks._global_backward_hooks))
    return {"tensors": tensors, "modules": modules, "state": state, "global": global_hooks}


def assert_unchanged(before: dict, after: dict) -> None:
    assert before["state"] == after["state"]
    assert before["modules"] == after["modules"]
    assert before["global"] == after["global"]
    assert before["tensors"].keys() == after["tensors"].keys()
    for name, (*meta, value) in before["tensors"].items():
        *meta2, value2 = after["tensors"][name]
        assert meta == meta2, name  # identity, storage, version counter, dtype, grad, ...
        assert torch.equal(value, value2), name


def count_calls(model: nn.Module) -> list:
    """Hooks on every module that record each call. Tracing runs the modules it traces through
    (not the layers it keeps whole), as torch.fx does; explaining calls none."""
    calls: list = []
    for name, m in model.named_modules():
        m.register_forward_pre_hook(lambda *a, name=name: calls.append(name))
        m.register_forward_hook(lambda *a, name=name: calls.append(name))
    return calls


# -- the torchvision zoo ---------------------------------------------------------------------------
# one model of each family in the normal run; LRPFX_ZOO=all runs every model of the zoo sweep
ZOO_CI = ["alexnet", "resnet18", "densenet121", "googlenet", "mobilenet_v3_small", "mnasnet0_5",
          "shufflenet_v2_x0_5", "squeezenet1_1", "efficientnet_b0", "regnet_x_400mf"]
ZOO_ALL = ZOO_CI + [
    "vgg11", "vgg11_bn", "vgg16", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "densenet169",
    "inception_v3", "mobilenet_v2", "mobilenet_v3_large", "mnasnet1_0", "shufflenet_v2_x1_0",
    "squeezenet1_0", "efficientnet_b1", "efficientnet_v2_s", "regnet_y_400mf", "convnext_tiny",
]
ZOO = ZOO_ALL if os.environ.get("LRPFX_ZOO") == "all" else ZOO_CI
SIZE = {"alexnet": 64, "inception_v3": 75}


def zoo_model(name: str) -> nn.Module:
    options = {"aux_logits": False, "init_weights": False} if name in ("googlenet",
                                                                       "inception_v3") else {}
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(**options).float()


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_state_is_untouched_by_compile_and_explain(name):
    model = zoo_model(name).eval()
    first = next(model.parameters())
    first.requires_grad_(False)  # a mix of frozen and trainable parameters
    calls = count_calls(model)
    before = snapshot(model)
    with pytest.warns(UserWarning, match="the explainer does not run forward hooks of layers"):
        explainer = lrpfx.compile(model, "epsilon-plus-flat")
    layers = {n for n, m in model.named_modules() if Tracer().is_leaf_module(m, n)}
    assert calls and not layers & set(calls)  # tracing went through containers, not layers
    calls.clear()
    size = SIZE.get(name, 32)
    x = torch.randn(1, 3, size, size, dtype=torch.float32)
    out = explainer(x)
    assert out.relevance.shape == x.shape and torch.isfinite(out.relevance).all()
    assert calls == []  # explaining calls no module of the user's
    assert_unchanged(before, snapshot(model))
    with torch.no_grad():
        torch.testing.assert_close(out.output, model(x), rtol=1e-4, atol=1e-4)


def test_a_model_in_training_mode_is_explained_in_eval_mode_and_keeps_its_flags():
    model = zoo_model("resnet18").train()
    model.layer1.eval()  # mixed flags are kept as they are
    before = snapshot(model)
    with pytest.warns(UserWarning, match=r"ResNet is in training mode \(\(the model itself\), "
                                         r"conv1, bn1 and \d+ more\); lrpfx explains a copy"):
        explainer = lrpfx.compile(model)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float32)
    out = explainer(x)
    assert_unchanged(before, snapshot(model))
    assert model.training and not model.layer1.training
    with torch.no_grad():
        torch.testing.assert_close(out.output, model.eval()(x), rtol=1e-4, atol=1e-4)


def test_a_submodule_in_training_mode_alone_is_warned_about():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2)).eval()
    model[1].train()
    with pytest.warns(UserWarning, match=r"training mode \(1\)"):
        explainer = lrpfx.compile(model)
    x = torch.randn(3, 4)
    torch.testing.assert_close(explainer(x).output, model.eval()(x))  # no dropout


# -- what is done to the explainer never reaches the model -----------------------------------------
class Scale(nn.Module):
    """A user module with a parameter, registered below."""

    def __init__(self) -> None:
        super().__init__()
        self.factor = nn.Parameter(torch.full((4,), 2.0))

    def forward(self, x):
        return x * self.factor


@pytest.fixture
def scale_registered():
    @lrpfx.register(Scale, kind="activation", rules=(rules.Pass,))
    def _scale(b, node, rel, rule):
        return [(node.args[0], rel)]

    yield
    table.unregister(Scale)


def test_converting_or_loading_the_explainer_never_writes_the_model(scale_registered):
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16, 4), Scale(), nn.Linear(4, 3)).float().eval()
    other = nn.Sequential(*[type(m)() if isinstance(m, Scale | nn.ReLU | nn.Flatten) else m
                            for m in model]).float().eval()
    other.load_state_dict({k: torch.rand_like(v) + 0.5 if v.is_floating_point() else v
                           for k, v in model.state_dict().items()})
    before = snapshot(model)
    explainer = lrpfx.compile(model)
    x = torch.randn(2, 2, 4, 4)
    explainer.double()(x)
    explainer.to(torch.bfloat16).to(torch.float32)
    explainer.requires_grad_(False)
    explainer.load_state_dict(lrpfx.compile(other).state_dict())  # another model's tensors
    explainer.zero_grad()
    assert_unchanged(before, snapshot(model))
    saved = lrpfx.compile(other)(x.float())
    torch.testing.assert_close(explainer(x.float()).relevance, saved.relevance, rtol=0, atol=0)


# -- the model changes after compile: refused, never a mix of old and new weights ------------------
def test_an_explainer_refuses_to_explain_a_model_changed_after_compile():
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16, 3)).eval()
    explainer = lrpfx.compile(model)
    x = torch.randn(2, 2, 4, 4)
    explainer(x)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(x).sum().backward()
    optimizer.step()  # writes the weights in place; the folded conv+BN was computed before
    with pytest.raises(lrpfx.errors.StaleExplainerError, match=r"the model changed after it was "
                       r"compiled: the (model's|explainer's) tensor '.*weight' was written in "
                       r"place .* Compile the model again"):
        explainer(x)
    explainer = lrpfx.compile(model)
    model.train()(x)  # a forward in training mode updates the BatchNorm statistics in place
    with pytest.raises(lrpfx.errors.StaleExplainerError, match="'1.num_batches_tracked'"):
        explainer(x)
    fresh = lrpfx.compile(model.eval())(x)
    assert torch.isfinite(fresh.relevance).all()


# -- in-place ops ----------------------------------------------------------------------------------
class Residual(nn.Module):
    """conv → BN → act → conv → BN, plus a skip, → act → linear; ``how`` spells the in-place
    ops (or not)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.conv1, self.bn1 = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.conv2, self.bn2 = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.act = nn.ReLU(inplace=how == "module")
        self.fc = nn.Linear(3 * 5 * 5, 4)

    def relu(self, x):
        if self.how == "method":
            return x.relu_()
        if self.how == "functional":
            return F.relu(x, inplace=True)
        if self.how == "torch":
            return torch.relu_(x)
        return self.act(x)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.how in ("module", "method"):
            out += x
        elif self.how == "functional":
            out.add_(x)
        else:
            out = out + x
        out = self.relu(out)
        return self.fc(out.flatten(1))


@pytest.mark.parametrize("how", ["module", "method", "functional", "torch"])
def test_in_place_ops_give_the_relevance_of_out_of_place_ones(how):
    torch.manual_seed(1)
    reference = Residual("out-of-place").eval()
    for bn in (reference.bn1, reference.bn2):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    model = Residual(how).eval()
    model.load_state_dict(reference.state_dict())
    x = torch.randn(3, 3, 5, 5)
    x_before = (x.clone(), x._version)
    out = lrpfx.compile(model, "epsilon-plus")(x)
    assert torch.equal(x, x_before[0]) and x._version == x_before[1]  # the input is not written
    expected = lrpfx.compile(reference, "epsilon-plus")(x)
    torch.testing.assert_close(out.output, reference(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.relevance, expected.relevance, rtol=0, atol=0)


class WritesItsInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        x.relu_()  # eager mode writes the caller's tensor
        return self.fc(x)


def test_the_explainer_never_writes_the_input_even_when_the_model_does():
    model = WritesItsInput().eval()
    x = torch.randn(4, 5)
    x_before, version = x.clone(), x._version
    out = lrpfx.compile(model, rules.Epsilon())(x)
    assert torch.equal(x, x_before) and x._version == version
    torch.testing.assert_close(out.output, model(x.clone()))


class StaleName(nn.Module):
    """``identity`` names the tensor ``y += x`` writes: eager mode reads the sum through it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc0, self.fc = nn.Linear(5, 5), nn.Linear(5, 3)

    def forward(self, x):
        y = self.fc0(x)
        identity = y
        y += x
        n = x.size(0)
        rows = n
        n *= 2  # on an int: a rebinding, ``rows`` keeps the old value
        return (self.fc(y) + self.fc(identity)).reshape(rows, -1)


def test_augmented_assignment_is_traced_with_eager_semantics():
    model = StaleName().eval()
    x = torch.randn(4, 5)
    out = lrpfx.compile(model, rules.Epsilon())(x)
    torch.testing.assert_close(out.output, model(x.clone()), rtol=1e-12, atol=1e-12)


class WritesAView(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(2, 3, 3), nn.Linear(3 * 4 * 4, 4)

    def forward(self, x):
        y = self.conv(x)
        v = y.view(y.size(0), -1)
        v.relu_()  # writes y as well
        return self.fc(y.flatten(1))


class WritesAParameter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        self.fc.bias.add_(0.0)
        return self.fc(x)


@pytest.mark.parametrize("model, says", [
    (WritesAView(), "writes 'view' in place, and 'conv' (the same memory under another name) is "
                    "read afterwards"),
    (WritesAParameter(), "writes the model's own tensor 'fc.bias' in place"),
])
def test_in_place_writes_seen_through_another_name_are_refused(model, says):
    model.eval()
    before = snapshot(model)
    with pytest.raises(lrpfx.UnsupportedOperationError) as info:
        lrpfx.compile(model)
    assert says in str(info.value) and "test_state.py" in str(info.value)
    assert "Fix: write these ops out of place" in str(info.value)
    assert_unchanged(before, snapshot(model))


def test_failed_compiles_leave_the_model_untouched():
    for model in (WritesAView(), nn.Sequential(nn.Linear(3, 3), nn.Softmax(1))):
        model.train()
        before = snapshot(model)
        with warnings.catch_warnings(), pytest.raises(lrpfx.LrpfxError):
            warnings.simplefilter("ignore")
            lrpfx.compile(model)
        assert_unchanged(before, snapshot(model))
