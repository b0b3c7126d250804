"""Layer relevances compiled into the program: names, conservation across layers, agreement with
explaining the rest of the network from a layer, and nothing changed when recording is off."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx import composites
from tests.test_core import relu_net


@pytest.mark.parametrize("maxpool", ["avg", "wta"])
def test_every_recorded_layer_holds_the_whole_relevance_when_rules_conserve(maxpool):
    """Bias-free LRP-ε with ε → 0 conserves relevance layer by layer: the sum of every recorded
    layer equals the target logit and the input relevance's sum."""
    model = relu_net(bias=False)
    x = torch.randn(4, 3, 12, 12)
    lrp0 = composites.EpsilonOnly(epsilon=1e-12, stabilizer=1e-12)
    out = lrpfx.compile(model, lrp0, maxpool=maxpool, record=True)(x)
    assert list(out.layers) == [str(k) for k in range(10)]  # every module, execution order
    logit = out.output.max(1).values
    torch.testing.assert_close(out.relevance.sum((1, 2, 3)), logit, rtol=1e-8, atol=0)
    for name, relevance in out.layers.items():
        total = relevance.flatten(1).sum(1)
        torch.testing.assert_close(total, logit, rtol=1e-8, atol=0, msg=name)


def test_a_recorded_layer_is_the_input_relevance_of_the_rest_of_the_network():
    """Recording ``k`` gives what explaining ``model[k+1:]`` on the activation of ``model[:k+1]``
    gives as its input relevance (same rules; the composite has no position entries)."""
    model = relu_net()
    x = torch.randn(3, 3, 12, 12)
    target = torch.tensor([1, 4, 0])
    composite = composites.EpsilonPlus(epsilon=0.1)
    out = lrpfx.compile(model, composite, record=["2", "4", "7"])(x, target)
    for k in (2, 4, 7):
        head, tail = model[: k + 1], model[k + 1 :].eval()
        with torch.no_grad():
            activation = head(x)
        rest = lrpfx.compile(tail, composite)(activation, target)
        torch.testing.assert_close(out.layers[str(k)], rest.relevance, rtol=1e-10, atol=1e-12)


class Twice(nn.Module):
    """One module called twice, a BatchNorm to fold, a function call."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.act = nn.ReLU()
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.conv(x)))
        x = torch.relu(self.conv(x))
        return self.fc(x.flatten(1))


def test_names_call_sites_folded_batchnorms_and_functions():
    model = Twice().eval()
    x = torch.randn(2, 2, 4, 4)
    everything = lrpfx.compile(model, "epsilon", record=True)(x)
    names = list(everything.layers)  # module paths; fx names for function calls
    assert names[:4] == ["conv", "act", "conv@2", "relu"] and names[-1] == "fc"
    assert len(names) == 6 and names[4].startswith("flatten")
    chosen = lrpfx.compile(model, "epsilon", record=["bn", "conv@2", "fc"])(x)
    assert list(chosen.layers) == ["bn", "conv@2", "fc"]
    # the folded BatchNorm's output is the convolution's: same relevance
    torch.testing.assert_close(chosen.layers["bn"], everything.layers["conv"])
    assert chosen.layers["conv@2"].shape == (2, 2, 4, 4)
    assert chosen.layers["fc"].shape == (2, 3)
    with pytest.raises(ValueError, match=r"no node named 'nope'.*Recordable: conv, act, conv@2"):
        lrpfx.compile(model, "epsilon", record=["nope"])
    single = lrpfx.compile(model, "epsilon", record="fc")(x)
    assert list(single.layers) == ["fc"]


def test_recording_off_changes_nothing_and_unpacking_stays_a_pair():
    model = relu_net()
    x = torch.randn(2, 3, 12, 12)
    plain = lrpfx.compile(model)
    assert lrpfx.compile(model, record=[]).code == plain.code  # the same program: no cost
    assert "return (" in plain.code and "{" not in plain.code.split("return")[-1]
    out = plain(x)
    output, relevance = out  # a 2-tuple, as before
    assert len(out) == 2 and out[0] is output and out.relevance is relevance
    assert dict(out.layers) == {}
    with pytest.raises(TypeError):
        out.layers["x"] = relevance  # the empty default is read-only
    recorded = lrpfx.compile(model, record=["7"])(x)
    output2, relevance2 = recorded
    torch.testing.assert_close(relevance2, relevance)
    assert repr(recorded) == "Explanation(output=(2, 5), relevance=(2, 3, 12, 12), layers=[7])"
