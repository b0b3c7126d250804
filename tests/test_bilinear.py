"""Matrix products: the ε-rule on each operand, halved between two computed operands (AttnLRP,
Prop. 3.3), against the formula written out with einsum; with a constant operand, the linear
map's ε-rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lrpfx
from lrpfx import composites, rules
from tests import dense

EPS = 1e-9
LRP = {composites.Kind("dense", "matmul"): rules.Epsilon(EPS)}


class Product(nn.Module):
    """``A @ B`` of two matrices computed from the input, then a dense head."""

    def __init__(self, how: str = "@") -> None:
        super().__init__()
        self.how = how
        self.fa, self.fb, self.head = nn.Linear(5, 6), nn.Linear(5, 12), nn.Linear(8, 3)

    def forward(self, x):
        a = self.fa(x).view(-1, 2, 3)
        b = self.fb(x).view(-1, 3, 4)
        o = {"@": lambda: a @ b, "torch.matmul": lambda: torch.matmul(a, b),
             "bmm": lambda: torch.bmm(a, b), "method": lambda: a.matmul(b)}[self.how]()
        return self.head(o.flatten(1))


def test_two_computed_operands_share_by_the_uniform_epsilon_rule():
    torch.manual_seed(0)
    model = Product().double().eval()
    x = torch.randn(4, 5, dtype=torch.float64)
    out = lrpfx.compile(model, LRP)(x, target=1)
    for i in range(len(x)):
        a = model.fa(x[i]).view(2, 3)
        b = model.fb(x[i]).view(3, 4)
        o = a @ b
        r_out = torch.zeros(3, dtype=x.dtype)
        r_out[1] = model(x[i : i + 1])[0, 1]
        r_o = dense.epsilon(model.head.weight, model.head.bias, o.flatten(), r_out, EPS).view(2, 4)
        s = r_o / (2 * dense.stab(o, EPS))  # Prop. 3.3: R^A_ji = Σ_p A_ji B_ip R_jp / (2 O_jp)
        r_a = torch.einsum("ji,ip,jp->ji", a, b, s)
        r_b = torch.einsum("ji,ip,jp->ip", a, b, s)
        expected = (dense.epsilon(model.fa.weight, model.fa.bias, x[i], r_a.flatten(), EPS)
                    + dense.epsilon(model.fb.weight, model.fb.bias, x[i], r_b.flatten(), EPS))
        torch.testing.assert_close(out.relevance[i], expected.detach(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("how", ["torch.matmul", "bmm", "method"])
def test_every_spelling_of_a_matrix_product_is_one(how):
    torch.manual_seed(0)
    reference = Product().double().eval()
    model = Product(how).double().eval()
    model.load_state_dict(reference.state_dict())
    x = torch.randn(3, 5, dtype=torch.float64)
    expected = lrpfx.compile(reference, LRP)(x, target=0).relevance
    torch.testing.assert_close(lrpfx.compile(model, LRP)(x, target=0).relevance, expected,
                               rtol=0, atol=0)


class TimesWeight(nn.Module):
    """``x @ W`` with a parameter ``W``: a dense layer without bias, written as a product."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x):
        return torch.relu(x @ self.weight)


def test_a_constant_operand_is_the_linear_maps_epsilon_rule():
    torch.manual_seed(0)
    linear = nn.Linear(6, 16, bias=False).double()
    model = nn.Sequential(TimesWeight(linear.weight.detach().T.clone()), nn.Linear(16, 2))
    model = model.double().eval()
    plain = nn.Sequential(linear, nn.ReLU(), model[1]).double().eval()
    x = torch.randn(5, 6, dtype=torch.float64)
    got = lrpfx.compile(model, LRP)(x, target=1)
    expected = lrpfx.compile(plain, LRP)(x, target=1)
    torch.testing.assert_close(got.output, expected.output, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.relevance, expected.relevance, rtol=1e-10, atol=1e-12)
    assert got.relevance.flatten(1).any(1).all()


def test_rules_a_product_does_not_take_are_named():
    model = nn.Sequential(TimesWeight(torch.randn(6, 4)), nn.Linear(4, 2)).eval()
    with pytest.raises(lrpfx.UnsupportedOperationError,
                       match=r"not supported by 'matmul' ops \(accepted: Epsilon, Norm\)"):
        lrpfx.compile(model, {composites.Kind("matmul"): rules.ZPlus()})


class Attention(nn.Module):
    """One head of self-attention over the rows of the input, then a mean and a head."""

    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        scores = self.q(x) @ self.k(x).transpose(1, 2) / 2.0
        attended = F.softmax(scores, -1) @ self.v(x)
        return self.head(attended.mean(1))


def test_an_attention_block_compiles_and_explains_with_the_presets():
    torch.manual_seed(0)
    model = Attention().double().eval()
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    for preset in ("epsilon", "epsilon-plus-flat"):
        out = lrpfx.compile(model, preset)(x, target=2)
        torch.testing.assert_close(out.output, model(x), rtol=1e-12, atol=1e-12)
        assert out.relevance.shape == x.shape and torch.isfinite(out.relevance).all()
        assert out.relevance.flatten(1).any(1).all()


def test_a_vector_operand_is_refused_when_the_program_runs():
    class Vector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(x) @ x[0]

    with pytest.raises(ValueError, match="unsqueeze a vector operand"):
        lrpfx.compile(Vector().eval(), LRP)(torch.randn(2, 3), output_relevance=torch.ones(2))


class Einsum(Product):
    """``A @ B`` of ``Product`` written as an einsum, in the spelling ``how``."""

    def forward(self, x):
        a = self.fa(x).view(-1, 2, 3)
        b = self.fb(x).view(-1, 3, 4)
        o = {"plain": lambda: torch.einsum("bij,bjk->bik", a, b),
             "spaces": lambda: torch.einsum("b i j, b j k -> b i k", a, b),
             "list": lambda: torch.einsum("bij,bjk->bik", [a, b]),
             "ellipsis": lambda: torch.einsum("...ij,...jk->...ik", a, b)}[self.how]()
        return self.head(o.flatten(1))


@pytest.mark.parametrize("how", ["plain", "spaces", "list", "ellipsis"])
def test_an_einsum_is_the_matrix_product_it_writes(how):
    torch.manual_seed(0)
    reference = Product().double().eval()
    model = Einsum(how).double().eval()
    model.load_state_dict(reference.state_dict())
    x = torch.randn(3, 5, dtype=torch.float64)
    expected = lrpfx.compile(reference, LRP)(x, target=0)
    got = lrpfx.compile(model, LRP)(x, target=0)
    torch.testing.assert_close(got.output, expected.output, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.relevance, expected.relevance, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("equation, shapes", [
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("ij,bjk->bki", [(3, 4), (2, 4, 5)]),  # a broadcast operand, an output permuted
    ("bi,bj->bij", [(2, 3), (2, 4)]),  # an outer product
    ("bij,bkj->b", [(2, 3, 4), (2, 5, 4)]),  # i and k summed within one operand each
    ("...ij,...jk->...ik", [(1, 3, 4), (2, 1, 4, 5)]),  # ellipses of two ranks, broadcast
    ("ij,jk", [(3, 4), (4, 5)]),  # implicit output: the indices used once, in order
    ("bhid,bhjd->bhij", [(2, 2, 3, 4), (2, 2, 5, 4)]),  # attention scores
])
def test_the_einsum_transpose_is_the_vector_jacobian_product(equation, shapes):
    """``einsum_transpose(s, eq, a, b, i)`` is ``s`` pulled back onto operand ``i``: the
    gradient of ``⟨s, einsum(eq, a, b)⟩`` by autograd."""
    from lrpfx import kernels

    torch.manual_seed(0)
    a, b = (torch.randn(*shape, dtype=torch.float64, requires_grad=True) for shape in shapes)
    out = torch.einsum(equation, a, b)
    s = torch.randn_like(out)
    grads = torch.autograd.grad((out * s).sum(), (a, b))
    for i, grad in enumerate(grads):
        got = kernels.einsum_transpose(s, equation, a.detach(), b.detach(), i)
        torch.testing.assert_close(got, grad, rtol=1e-12, atol=1e-12)


class Contraction(nn.Module):
    def __init__(self, equation: str) -> None:
        super().__init__()
        self.equation, self.fc = equation, nn.Linear(4, 4)

    def forward(self, x):
        h = self.fc(x)
        if self.equation.count(",") == 2:
            return torch.einsum(self.equation, h, h, h)
        return torch.einsum(self.equation, h.view(-1, 2, 2), h)


def test_an_einsum_of_three_operands_or_a_diagonal_is_refused_by_name():
    x = torch.randn(3, 4)
    with pytest.raises(lrpfx.UnsupportedOperationError, match="einsum of 3 operands"):
        lrpfx.compile(Contraction("bi,bi,bi->bi").eval(), LRP)(x, target=0)
    with pytest.raises(lrpfx.UnsupportedOperationError, match="repeats an index"):
        lrpfx.compile(Contraction("bii,bj->bij").eval(), LRP)(x, target=0)
