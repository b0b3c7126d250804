"""Where hook-based LRP fails and a traced graph does not.

Zennit attaches rules to modules. What a model writes inside ``forward`` — ``torch.relu``,
``x + y``, ``torch.cat``, ``F.silu``, a module called twice — is invisible to it: such ops get
the plain gradient, and a module's stored state belongs to its last call. lrpfx sees every op
in the traced graph. Each model below is explained by both with the same rules (ε everywhere,
no biases, Pass on activations, Norm on sums and average pools): lrpfx conserves relevance
(Σ R_in = logit) and matches the independent reference; Zennit does not. The numbers are in
the README ("Any graph").
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lrpfx
from lrpfx import composites
from tests.reference import Reference

zennit = pytest.importorskip("zennit")


pytestmark = pytest.mark.usefixtures("one_thread")


from zennit.attribution import Gradient  # noqa: E402
from zennit.composites import LayerMapComposite  # noqa: E402
from zennit.rules import Epsilon, Norm, Pass  # noqa: E402
from zennit.types import Activation, AvgPool, Convolution  # noqa: E402

EPS = 1e-12


class Residual(nn.Module):
    """``torch.relu``, a residual ``h + f(h)`` and ``torch.cat`` written in ``forward``."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = (nn.Conv2d(3, 8, 3, padding=1, bias=False),
                                     nn.Conv2d(8, 8, 3, padding=1, bias=False),
                                     nn.Conv2d(8, 8, 1, bias=False))
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(16, 5, bias=False)

    def forward(self, x):
        h = torch.relu(self.c1(x))
        h = h + torch.relu(self.c2(h))
        h = torch.cat([h, self.c3(h)], 1)
        return self.fc(torch.flatten(self.pool(h), 1))


class Functional(nn.Module):
    """Activations written as functions: ``F.silu``, ``torch.tanh``."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = (nn.Conv2d(3, 8, 3, padding=1, bias=False),
                            nn.Conv2d(8, 8, 3, padding=1, bias=False))
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 5, bias=False)

    def forward(self, x):
        h = torch.tanh(self.c2(F.silu(self.c1(x))))
        return self.fc(torch.flatten(self.pool(h), 1))


class Shared(nn.Module):
    """One conv applied to two inputs, the results concatenated (``torch.cat``)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.shared = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 5, bias=False)
        self.relu = nn.ReLU()

    def forward(self, x):
        h = self.relu(self.c1(x))
        a, b = h[:, :4], h[:, 4:]
        h = torch.cat([self.shared(a), self.shared(b * 3.0)], 1)
        return self.fc(torch.flatten(self.pool(self.relu(h)), 1))


def _nonnegative(model: nn.Module) -> nn.Module:
    """|w| (every z > 0): the rules are well conditioned, differences come from the ops."""
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
    return model.eval()


def _setup(cls):
    torch.manual_seed(0)
    model = _nonnegative(cls())
    x = torch.rand(2, 3, 8, 8)
    return model, x


def ours(model, x):
    out = lrpfx.compile(model, composites.EpsilonOnly(EPS, EPS), maxpool="wta")(x)
    logit = out.output.gather(1, out.output.argmax(1, keepdim=True))[:, 0]
    return out, logit


def theirs(model, x, target):
    composite = LayerMapComposite([(Activation, Pass()), (AvgPool, Norm(EPS)),
                                   ((Convolution, nn.Linear), Epsilon(EPS))])
    one_hot = torch.eye(5, dtype=x.dtype)[target]
    with Gradient(model=model, composite=composite) as attributor:
        output, relevance = attributor(x.clone().requires_grad_(True), lambda y: y * one_hot)
    return relevance


def conservation(relevance, logit):
    return ((relevance.flatten(1).sum(1) - logit).abs() / logit.abs()).max().item()


@pytest.mark.parametrize("cls", [Residual, Functional, Shared])
def test_lrpfx_conserves_and_matches_the_reference_zennit_does_not(cls):
    model, x = _setup(cls)
    out, logit = ours(model, x)
    target = out.output.argmax(1)
    zennit_relevance = theirs(model, x, target)
    ours_error = conservation(out.relevance, logit)
    assert ours_error < 1e-9, ours_error
    R = torch.zeros_like(out.output)
    R[torch.arange(2), target] = logit
    reference = Reference(model, lambda i, kind: ("epsilon", EPS), stabilizer=EPS)(x, R)
    scale = reference.abs().max()
    assert (out.relevance - reference).abs().max() <= 1e-10 * scale
    zennit_gap = ((zennit_relevance - reference).abs().max() / scale).item()
    assert zennit_gap > 0.05, zennit_gap
    assert conservation(zennit_relevance, logit) > 0.05


def hook_failure_numbers() -> dict[str, tuple[float, float, float]]:
    """``{model: (lrpfx conservation error, Zennit's, Zennit's max |Δ| to the reference)}``."""
    numbers = {}
    for cls in (Residual, Functional, Shared):
        model, x = _setup(cls)
        out, logit = ours(model, x)
        target = out.output.argmax(1)
        R = torch.zeros_like(out.output)
        R[torch.arange(2), target] = logit
        reference = Reference(model, lambda i, kind: ("epsilon", EPS), stabilizer=EPS)(x, R)
        z = theirs(model, x, target)
        numbers[cls.__name__] = (conservation(out.relevance, logit), conservation(z, logit),
                                 ((z - reference).abs().max() / reference.abs().max()).item())
    return numbers


if __name__ == "__main__":  # prints the README's table
    torch.set_default_dtype(torch.float64)
    for name, (a, b, c) in hook_failure_numbers().items():
        print(f"| {name} | {a:.1e} | {b:.2f} | {c:.2f} |")
