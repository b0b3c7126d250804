"""Concept relevance (CRP): conditional heatmaps add up to the unconditional one, each equals the
layer's relevance masked by hand and propagated by an independent path (a separately compiled
lower network, and a dense hand-written LRP-0), and channel relevances are the recorded layer
relevance summed over space."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx import composites, concepts
from tests.test_core import relu_net

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(("layer", "channels"), [("0", 8), ("3", 8), ("4", 8), ("7", 16)])
def test_conditional_heatmaps_of_all_channels_sum_to_the_unconditional_one(layer, channels):
    model = relu_net()
    x = torch.randn(3, 3, 12, 12)
    target = torch.tensor([1, 4, 0])
    crp = concepts.compile(model, "epsilon-plus-flat", layer=layer)
    out = crp(x, concepts=list(range(channels)), target=target)
    plain = lrpfx.compile(model, "epsilon-plus-flat", record=[layer])(x, target)
    assert out.relevance.shape == (3, channels, 3, 12, 12)
    torch.testing.assert_close(out.relevance.sum(1), plain.relevance, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.output, plain.output, rtol=1e-12, atol=1e-15)
    expected = plain.layers[layer].flatten(2).sum(2) if channels == 8 else plain.layers[layer]
    torch.testing.assert_close(out.concepts, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(crp.relevances(x, target), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("layer", [3, 4, 7])
def test_each_conditional_heatmap_is_the_masked_layer_relevance_explained_below(layer):
    """Reference: the layer relevance recorded by plain ``lrpfx.compile``, masked by hand and
    given as the output relevance of the network up to the layer, compiled on its own."""
    model = relu_net()
    x = torch.randn(2, 3, 12, 12)
    composite = composites.EpsilonPlusFlat(epsilon=0.1)
    chosen = [[0], [5], [1, 2, 7], [3, 6]]
    out = concepts.compile(model, composite, layer=str(layer))(x, concepts=chosen, target=2)
    recorded = lrpfx.compile(model, composite, record=[str(layer)])(x, 2).layers[str(layer)]
    head = lrpfx.compile(model[: layer + 1].eval(), composite)
    for k, concept in enumerate(chosen):
        mask = torch.zeros(recorded.shape[1])
        mask[concept] = 1
        masked = recorded * mask.view(1, -1, *(1,) * (recorded.dim() - 2))
        reference = head(x, output_relevance=masked).relevance
        torch.testing.assert_close(out.relevance[:, k], reference, rtol=1e-10, atol=1e-13)
    assert out.relevance[:, 0].abs().sum() > 0


def test_conditional_relevance_equals_a_dense_hand_written_lrp_zero():
    """A three-layer ReLU MLP, LRP-0 written with matrices; the concepts are the units of the
    middle layer."""
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(),
                          nn.Linear(5, 3)).eval()
    x = torch.randn(5, 4)
    crp = concepts.compile(model, composites.EpsilonOnly(epsilon=1e-12, stabilizer=1e-12),
                           layer="2")
    chosen = [[0], [1, 3], [4], [0, 1, 2, 3, 4]]
    out = crp(x, concepts=chosen, target=1)
    (w1, b1), (w2, b2), (w3, b3) = [(m.weight, m.bias) for m in model if isinstance(m, nn.Linear)]
    a1 = torch.relu(x @ w1.T + b1)
    z2 = a1 @ w2.T + b2
    a2 = torch.relu(z2)
    z3 = a2 @ w3.T + b3
    r3 = torch.zeros_like(z3)
    r3[:, 1] = z3[:, 1]
    r2 = a2 * ((r3 / z3) @ w3)  # the relevance at the output of layer "2" (through the ReLU)
    for k, concept in enumerate(chosen):
        mask = torch.zeros(5)
        mask[concept] = 1
        r_a1 = a1 * (((r2 * mask) / z2) @ w2)
        r_x = x * ((r_a1 / (x @ w1.T + b1)) @ w1)
        torch.testing.assert_close(out.relevance[:, k], r_x, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(out.concepts, r2, rtol=1e-10, atol=1e-14)


def test_a_residual_network_and_per_sample_targets():
    from torchvision.models import resnet18

    model = resnet18(num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    target = torch.tensor([3, 5])
    with pytest.warns(UserWarning, match="bypasses layer 'layer1.0.conv2'"):
        assert concepts.compile(model, "epsilon-plus", layer="layer1.0.conv2").bypassed
    crp = concepts.compile(model, "epsilon-plus", layer="layer1.0.relu@2")  # a block's output
    assert not crp.bypassed
    groups = [list(range(k, 64, 4)) for k in range(4)]  # a partition of the 64 channels
    out = crp(x, concepts=groups, target=target)
    plain = lrpfx.compile(model, "epsilon-plus")(x, target)
    torch.testing.assert_close(out.relevance.sum(1), plain.relevance, rtol=1e-9, atol=1e-12)
    assert out.concepts.shape == (2, 64)
    single = crp(x[1:], concepts=groups[2:3], target=5)
    torch.testing.assert_close(single.relevance[0, 0], out.relevance[1, 2], rtol=1e-10,
                               atol=1e-13)


def test_the_program_is_one_generated_function_and_errors_are_named():
    model = relu_net()
    crp = concepts.compile(model, "epsilon-plus", layer="3", record=["7"])
    assert "condition(" in crp.code and "concept_channels" in crp.code
    x = torch.randn(1, 3, 12, 12)
    out = crp(x, concepts=[2, [0, 1]])
    assert set(out.layers) == {"7"} and out.layers["7"].shape == (1, 2, 16)
    torch.testing.assert_close(out.layers["7"][:, 0], out.layers["7"][:, 1])  # above: same
    with pytest.raises(ValueError, match="concept channel 8 is not a channel"):
        crp(x, concepts=[8])  # checked before the call: the layer's width is known
    fresh = concepts.compile(model, "epsilon-plus", layer="3")
    with pytest.raises(ValueError, match="concept channel 9 is not a channel .*0..7"):
        fresh(x, concepts=[1, 9])  # checked in the program: its first call
    with pytest.raises(ValueError, match="non-empty list"):
        crp(x, concepts=[[]])
    with pytest.raises(ValueError, match="at least one concept"):
        crp(x, concepts=[])
    with pytest.raises(ValueError, match="no node named 'nope'"):
        concepts.compile(model, "epsilon-plus", layer="nope")
    plain = crp.explain(x)  # unconditional, with the layer recorded
    torch.testing.assert_close(plain.relevance, lrpfx.compile(model, "epsilon-plus")(x).relevance)


def test_a_folded_batchnorm_name_and_winner_takes_all_pools():
    """The layer may be named by a BatchNorm folded into its convolution; max-pools routed
    winner-takes-all are linear in the relevance too, so the sum still holds."""
    from tests.test_record import Twice

    model = Twice().eval()
    x = torch.randn(2, 2, 4, 4)
    crp = concepts.compile(model, "epsilon-plus", layer="bn", maxpool="wta")
    out = crp(x, concepts=[0, 1], target=torch.tensor([2, 0]))
    plain = lrpfx.compile(model, "epsilon-plus", maxpool="wta")(x, torch.tensor([2, 0]))
    torch.testing.assert_close(out.relevance.sum(1), plain.relevance, rtol=1e-10, atol=1e-12)
    net = relu_net()
    y = torch.randn(2, 3, 12, 12)
    wta = concepts.compile(net, "epsilon-plus", layer="4", maxpool="wta")(y, list(range(8)))
    reference = lrpfx.compile(net, "epsilon-plus", maxpool="wta")(y).relevance
    torch.testing.assert_close(wta.relevance.sum(1), reference, rtol=1e-10, atol=1e-12)
