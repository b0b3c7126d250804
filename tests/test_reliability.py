"""Models lrpfx cannot take as they are: every refusal is a named error that says where and what
to do, and each documented fix (leaf_modules=, concrete_args=, lrpfx.register) works."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.fx
from torch import nn

import lrpfx
from lrpfx import composites, rules
from lrpfx.ops import table
from tests import dense


@pytest.fixture
def registry():
    """Registrations made by a test are undone after it."""
    before = set(table.OPS)
    yield
    table.unregister(*(set(table.OPS) - before))


# -- untraceable models ----------------------------------------------------------------------------
class Gate(nn.Module):
    """Doubles its input when the input sums to a positive value: data-dependent control flow."""

    def forward(self, x):
        if x.sum() > 0:  # fx cannot trace a branch on values
            return x * 2
        return x


class Gated(nn.Module):
    def __init__(self, gate: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.block = nn.Sequential(nn.ReLU(), Gate() if gate else nn.Identity())
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.block(self.conv(x)), 1))


def test_control_flow_in_a_submodule_names_it_the_line_and_the_fixes():
    with pytest.raises(lrpfx.TraceError) as info:
        lrpfx.compile(Gated().eval())
    message = str(info.value)
    assert isinstance(info.value.__cause__, torch.fx.proxy.TraceError)  # fx's own error, chained
    assert "symbolically traced variables cannot be used as inputs to control flow" in message
    assert "in submodule 'block.1' (Gate)" in message
    assert "test_reliability.py" in message and "if x.sum() > 0:" in message
    assert "leaf_modules=[Gate] or leaf_modules=['block.1']" in message
    assert "@lrpfx.register(Gate" in message and "concrete_args=" in message


class RootBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.mean() > 0:
            x = -x
        return self.fc(x)


class ItemAssignment(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x[:, 0] = 0.0
        return self.fc(x)


@pytest.mark.parametrize("model, says", [
    (RootBranch(), "in RootBranch.forward: TraceError"),
    (ItemAssignment(), "in ItemAssignment.forward: TypeError: 'Proxy' object does not support "
                       "item assignment"),
])
def test_untraceable_root_forward_is_named(model, says):
    with pytest.raises(lrpfx.TraceError) as info:
        lrpfx.compile(model.eval())
    assert says in str(info.value)
    assert "torch.where" in str(info.value)  # the fix for branches on values


def _double_gate(registry) -> None:
    @lrpfx.register(Gate, kind="activation", rules=(rules.Pass,))
    def _gate(b, node, rel, rule):
        """Pass: the relevance of the gate's output is the relevance of its input."""
        return [(node.args[0], rel)]


def _without_gate(model: Gated) -> Gated:
    """The same network with the gate (×2 on non-negative inputs) folded into the last layer."""
    plain = Gated(gate=False).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        plain.fc.weight.mul_(2)
    return plain


@pytest.mark.parametrize("leaf", [[Gate], ["block.1"], []], ids=["class", "name", "registered"])
def test_a_leaf_module_with_a_registered_implementation_is_explained(registry, leaf):
    model = Gated().eval()
    with pytest.raises(lrpfx.UnsupportedOperationError) as info:
        lrpfx.compile(model, leaf_modules=[Gate])  # kept whole, but nothing says how to explain
    assert "module 'block.1'" in str(info.value) and "no relevance implementation for Gate" in (
        str(info.value)) and "@lrpfx.register(" in str(info.value)

    _double_gate(registry)  # a registered module class is a leaf, leaf_modules= or not
    explainer = lrpfx.compile(model, "epsilon-plus-flat", leaf_modules=leaf)
    x = torch.randn(3, 3, 6, 6)
    out = explainer(x)
    torch.testing.assert_close(out.output, model(x), rtol=1e-12, atol=1e-12)
    reference = lrpfx.compile(_without_gate(model), "epsilon-plus-flat")(x)
    torch.testing.assert_close(out.relevance, reference.relevance, rtol=1e-12, atol=1e-14)


class Flagged(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x, flip: bool = False, mask: torch.Tensor | None = None):
        if flip:
            x = x.flip(-1)
        if mask is not None:
            x = x * mask
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


def test_concrete_args_fix_python_control_flow_on_other_arguments():
    model = Flagged().eval()
    with pytest.raises(lrpfx.UnsupportedOperationError, match="Tensor.flip"):
        lrpfx.compile(model, concrete_args={"flip": True})  # a given value beats the default
    x = torch.randn(2, 3, 6, 6)
    explainer = lrpfx.compile(model)  # optional arguments at their defaults are not inputs
    assert [n.name for n in explainer.program.graph.nodes if n.op == "placeholder"] == [
        "x", "target", "output_relevance"]  # the fixed arguments and their guards are gone
    out = explainer(x, target=1)
    torch.testing.assert_close(out.output, model(x), rtol=1e-12, atol=1e-12)
    plain = nn.Sequential(model.conv, nn.ReLU(), nn.Flatten(), model.fc).eval()
    expected = lrpfx.compile(plain)(x, target=1).relevance
    torch.testing.assert_close(out.relevance, expected, rtol=0, atol=0)


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x, scale):
        return self.fc(x) * scale


def test_a_second_tensor_input_is_refused_with_the_fix():
    with pytest.raises(lrpfx.TraceError) as info:
        lrpfx.compile(TwoInputs().eval())
    assert "one tensor input; TwoInputs.forward takes 2: x, scale" in str(info.value)
    assert "concrete_args={'scale': ...}" in str(info.value)


# -- unsupported ops and op/rule pairs -------------------------------------------------------------
def soft_threshold(x: torch.Tensor) -> torch.Tensor:
    """The user's own elementwise function."""
    return torch.sign(x) * torch.clamp(x.abs() - 0.1, min=0)


torch.fx.wrap("soft_threshold")  # traced as one call, like a library function


class Odd(nn.Module):
    """Unknown to lrpfx; kept whole by leaf_modules."""

    def forward(self, x):
        return x.roll(1, -1)


class Unexplainable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 6)
        self.odd = Odd()
        self.fc2 = nn.Linear(6, 6)
        self.fc3 = nn.Linear(6, 3)

    def forward(self, x):
        x = soft_threshold(self.fc1(x))
        x = self.odd(x)
        x = torch.cumsum(soft_threshold(self.fc2(x)), -1)
        return self.fc3(x)


def test_every_unsupported_node_is_listed_at_once_with_where_and_hint():
    with pytest.raises(lrpfx.UnsupportedOperationError) as info:
        lrpfx.compile(Unexplainable().eval(), leaf_modules=["odd"])
    nodes = info.value.nodes
    assert len(nodes) == 4 and str(info.value).startswith("4 node(s) cannot be explained:")
    assert sum("soft_threshold" in line for line in nodes) == 2  # both call sites
    assert any("module 'odd'" in line and "Odd" in line for line in nodes)
    assert any("torch.cumsum" in line for line in nodes)
    assert all("test_reliability.py" in line and "line " in line for line in nodes)  # sources
    assert "Fix: register a relevance implementation with @lrpfx.register(" in str(info.value)


def test_an_unsupported_rule_for_an_op_and_unmatched_nodes_are_listed():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                          nn.Linear(2, 2)).eval()
    with pytest.raises(lrpfx.UnsupportedOperationError) as info:
        lrpfx.compile(model, {nn.AvgPool2d: rules.Flat()})
    assert "rule Flat(stabilizer=1e-06) is not supported by 'avgpool' ops (accepted: " in (
        str(info.value))
    bare = composites.Composite([(composites.Kind("dense"), rules.Epsilon())])
    with pytest.raises(lrpfx.UnsupportedOperationError) as info:
        lrpfx.compile(model, bare)
    assert len(info.value.nodes) == 3  # conv, relu and pool: no entry matches them
    assert all("no composite entry matches it" in line for line in info.value.nodes)


def test_a_registered_function_makes_the_model_explainable(registry):
    @lrpfx.register(soft_threshold, kind="activation", rules=(rules.Pass,))
    def _soft_threshold(b, node, rel, rule):
        """Pass: elementwise, so relevance goes straight back."""
        return [(node.args[0], rel)]

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(6, 5), nn.Linear(5, 3)

        def forward(self, x):
            return self.fc2(soft_threshold(self.fc1(x)))

    model = Model().eval()
    x = torch.randn(4, 6)
    out = lrpfx.compile(model, rules.Epsilon(0.01))(x, target=2)
    torch.testing.assert_close(out.output, model(x), rtol=1e-12, atol=1e-12)
    for i in range(4):  # dense reference: ε on fc2, pass through the function, ε on fc1
        h = soft_threshold(model.fc1(x[i]))
        r2 = torch.zeros(3, dtype=torch.float64)
        r2[2] = model(x[i : i + 1])[0, 2]
        rh = dense.epsilon(model.fc2.weight, model.fc2.bias, h, r2, 0.01)
        rx = dense.epsilon(model.fc1.weight, model.fc1.bias, x[i], rh, 0.01)
        torch.testing.assert_close(out.relevance[i], rx.detach(), rtol=1e-10, atol=1e-12)


def test_the_readme_registry_example_runs(registry):
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("**Your own modules and functions.**"):]
    start = section.index("```python") + len("```python")
    code = section[start:section.index("```", start)]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # the documented example, as written
    out, explainer = namespace["out"], namespace["explainer"]
    assert out.relevance.shape == (4, 3, 8, 8) and torch.isfinite(out.relevance).all()
    kept = [n for n in explainer.program.graph.nodes if n.op == "call_module"]
    assert len(kept) == 1  # the Gate, called whole by the program
