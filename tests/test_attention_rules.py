"""The softmax rules on attention: AttnLRP's deep Taylor rule against the Jacobian form and, for a
whole attention block, against an independent reference in the other frame (input × a gradient
halved after each product of two computed tensors); CP-LRP's stop rule conserves."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import lrpfx
from lrpfx import composites, rules

EPS = 1e-12


class Scores(nn.Module):
    """A dense layer, a softmax along the features, a dense head."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.head = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.head(F.softmax(self.fc(x), -1))


def test_softmax_taylor_is_x_times_the_jacobian_transposed_of_r_over_s():
    torch.manual_seed(0)
    model = Scores().double().eval()
    x = torch.randn(3, 4, dtype=torch.float64)
    chosen = {composites.Kind("dense"): rules.Epsilon(EPS),
              composites.Kind("softmax"): rules.SoftmaxTaylor()}
    out = lrpfx.compile(model, chosen, record=["fc", "softmax_1"])(x, target=2)
    for i in range(len(x)):
        z = model.fc(x[i]).detach()
        s = F.softmax(z, -1)
        jacobian = torch.autograd.functional.jacobian(lambda v: F.softmax(v, -1), z)  # J[j, i]
        expected = z * (jacobian.T @ (out.layers["softmax_1"][i] / s))
        torch.testing.assert_close(out.layers["fc"][i], expected, rtol=1e-10, atol=1e-12)


class Attention(nn.Module):
    """Single-head self-attention over the rows of the input, a mean over the rows, a head."""

    def __init__(self, d: int = 4, bias: bool = True) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(d, d, bias=bias) for _ in range(3))
        self.head = nn.Linear(d, 3, bias=bias)

    def forward(self, x):
        scores = self.q(x) @ self.k(x).transpose(1, 2) / 2.0
        return self.head((F.softmax(scores, -1) @ self.v(x)).mean(1))


def halved(product: torch.Tensor) -> torch.Tensor:
    """``product`` forward, half its gradient backward."""
    return 0.5 * product + 0.5 * product.detach()


def input_times_modified_gradient(model: Attention, x: torch.Tensor, target: int) -> torch.Tensor:
    """AttnLRP in the gradient frame (the reference LXT's efficient mode implements): the plain
    gradient through linear layers, the softmax and the mean; halved after each product of two
    computed tensors; relevance = input × that gradient."""
    x = x.clone().requires_grad_(True)
    scores = halved(model.q(x) @ model.k(x).transpose(1, 2)) / 2.0
    out = model.head(halved(F.softmax(scores, -1) @ model.v(x)).mean(1))
    (grad,) = torch.autograd.grad(out[:, target].sum(), x)
    return (x * grad).detach()


ATTN_LRP = {composites.Kind("dense", "matmul"): rules.Epsilon(EPS),
            composites.Kind("sum"): rules.Norm(EPS),
            composites.Kind("softmax"): rules.SoftmaxTaylor()}


def test_attention_with_attnlrp_rules_equals_input_times_modified_gradient():
    torch.manual_seed(0)
    model = Attention().double().eval()
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    got = lrpfx.compile(model, ATTN_LRP)(x, target=1).relevance
    expected = input_times_modified_gradient(model, x, 1)
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-10)
    assert got.flatten(1).any(1).all()


def test_cp_lrp_stops_at_the_softmax_and_conserves():
    """With the attention weights held constant, relevance flows through the values only: with
    zero biases, Σ R_in is the logit (the stopped scores take none and give none)."""
    torch.manual_seed(0)
    model = Attention(bias=False).double().eval()
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    cp_lrp = {**ATTN_LRP, composites.Kind("softmax"): rules.Stop()}
    explainer = lrpfx.compile(model, cp_lrp)
    out = explainer(x, target=0)
    torch.testing.assert_close(out.relevance.sum((1, 2)), out.output[:, 0], rtol=1e-8, atol=0)
    assert "softmax_taylor" not in explainer.code
