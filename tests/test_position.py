"""Rules by position: the VGG-16 recipe of the LRP overview written with ``Position`` equals the
same rules assigned layer by layer; ``Epsilon(scale="std")`` against a dense reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

import lrpfx
from lrpfx import composites, meta, rules
from lrpfx.composites import Position


class VGG16Layout(nn.Module):
    """VGG-16's 13 convolutions, 5 max-pools and 3 dense layers, 32x fewer channels."""

    def __init__(self) -> None:
        super().__init__()
        self.features = make_layers([v if v == "M" else int(v) // 32 for v in cfgs["D"]])
        self.avgpool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Sequential(nn.Linear(16 * 4, 12), nn.ReLU(), nn.Dropout(),
                                        nn.Linear(12, 12), nn.ReLU(), nn.Dropout(),
                                        nn.Linear(12, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


LOW, HIGH = -2.0, 2.5
CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]


def recipe() -> composites.Composite:
    """The recipe in four lines."""
    return composites.Composite([
        (Position(0, 1), rules.ZBox(LOW, HIGH)),
        (Position(1, 7), rules.Gamma(0.25)),
        (Position(7, 13), rules.Epsilon(0.25, scale="std")),
        (Position(13, None), rules.Epsilon(1e-9)),
    ], defaults=composites.base_entries())


def by_hand() -> dict[str, rules.Rule]:
    """The same, written out for each layer by its name."""
    table: dict[str, rules.Rule] = {"features.0": rules.ZBox(LOW, HIGH)}
    table.update({f"features.{k}": rules.Gamma(0.25) for k in CONVS[1:7]})
    table.update({f"features.{k}": rules.Epsilon(0.25, scale="std") for k in CONVS[7:]})
    table.update({f"classifier.{k}": rules.Epsilon(1e-9) for k in (0, 3, 6)})
    return table


def test_the_position_recipe_equals_the_per_layer_assignment():
    model = VGG16Layout().eval()
    x = torch.randn(2, 3, 32, 32).clamp(LOW, HIGH)
    by_position = lrpfx.compile(model, recipe())
    by_name = lrpfx.compile(model, composites.Composite(by_hand(),
                                                        defaults=composites.base_entries()))
    assigned = {n.meta[meta.PATH]: n.meta.get(meta.RULE)
                for n in by_position.graph_module.graph.nodes if n.meta.get(meta.PATH)}
    written = by_hand()
    assert isinstance(assigned.pop("features.0"), rules.ZBox)  # ZBox compares by identity
    written.pop("features.0")
    assert {path: assigned[path] for path in written} == written
    assert sum(isinstance(r, rules.Gamma) for r in assigned.values()) == 6
    assert by_position.code == by_name.code
    a, b = by_position(x), by_name(x)
    assert torch.equal(a.relevance, b.relevance)
    assert torch.isfinite(a.relevance).all() and a.relevance.abs().sum() > 0


def test_positions_slice_like_python():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3), nn.ReLU(),
                          nn.Linear(3, 2)).eval()
    composite = composites.Composite([(Position(-1), rules.Epsilon(0.5)),
                                      (Position(0, 2), rules.ZPlus())],
                                     defaults=composites.base_entries())
    explainer = lrpfx.compile(model, composite)
    got = {n.meta[meta.PATH]: n.meta.get(meta.RULE) for n in explainer.graph_module.graph.nodes
           if n.meta.get(meta.PATH) in ("0", "2", "4")}
    assert got == {"0": rules.ZPlus(), "2": rules.ZPlus(), "4": rules.Epsilon(0.5)}


@pytest.mark.parametrize("factor", [0.25, 1.0])
def test_epsilon_scaled_by_the_std_of_z(factor):
    """Dense reference: ε' = factor·sqrt(mean z²) + 1e-9 per sample."""
    layer = nn.Linear(5, 4).eval()
    x = torch.randn(3, 5)
    rule = rules.Epsilon(factor, scale="std")
    out = lrpfx.compile(layer, rule)(x)
    z = layer(x).detach()
    eps = factor * z.square().mean(1, keepdim=True).sqrt() + 1e-9
    r_out = torch.zeros_like(z).scatter(1, z.argmax(1, keepdim=True), z.max(1, keepdim=True).values)
    stabilized = z + eps * torch.where(z >= 0, 1.0, -1.0)
    expected = x * ((r_out / stabilized) @ layer.weight.detach())
    torch.testing.assert_close(out.relevance, expected, rtol=1e-10, atol=1e-12)
    # per sample: a batch gives what each sample gives alone
    alone = torch.cat([lrpfx.compile(layer, rule)(x[i : i + 1]).relevance for i in range(3)])
    torch.testing.assert_close(out.relevance, alone, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="scale must be None or 'std'"):
        rules.Epsilon(0.25, scale="max")  # type: ignore[arg-type]
