"""PatternNet and PatternAttribution (Kindermans et al. 2018).

Fitted patterns against the paper's linear toy example and an independent dense reference
(layer inputs unfolded explicitly, the paper's formula with matmuls over the whole data); the
rules against their closed forms, a dense Jacobian and the gradient; errors for bad input.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lrpfx
from lrpfx import composites, rules
from lrpfx.errors import UnsupportedOperationError
from lrpfx.patterns import PatternError, Patterns, fit
from tests import dense


def batches(x: torch.Tensor, batch_size: int) -> DataLoader:
    return DataLoader(TensorDataset(x, torch.zeros(len(x))), batch_size=batch_size)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.detach().flatten(), b.detach().flatten(), dim=0))


# -- an independent reference: the paper's formulas over all samples at once ------------------
def reference_pattern(X, Y, W, kind, center="regime"):
    """``X`` (samples, in), ``Y`` (samples, out), ``W`` (out, in): the pattern per output unit.

    ``c / wᵀc`` with ``c = E₊[xy] − E₊[x] E₊[y]`` (E₊: over the samples with y > 0 for
    "positive", all for "linear"), or ``E₊[xy] − E₊[x] E[y]`` (center="all", the paper's
    printed formula); zero for a unit never active.
    """
    X, Y, W = X.detach(), Y.detach(), W.detach()
    M = (Y > 0).to(Y) if kind == "positive" else torch.ones_like(Y)
    n = M.sum(0)[:, None]
    Exy = (M * Y).T @ X / n
    Ex = M.T @ X / n
    Ey = Y.mean(0)[:, None] if center == "all" else (M * Y).sum(0)[:, None] / n
    num = Exy - Ex * Ey
    norm = (W * num).sum(1, keepdim=True)
    return torch.where((n > 0) & (norm != 0), num / norm, 0.0)


def unfold_reference(conv: nn.Conv2d, x: torch.Tensor, kind: str,
                     center: str = "regime") -> torch.Tensor:
    """The pattern of a Conv2d from explicitly unfolded patches, group by group."""
    y = conv(x).detach()
    cols = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)  # N, C·k·k, L
    X = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    Y = y.flatten(2).transpose(1, 2).reshape(-1, y.shape[1])
    W = conv.weight.detach().flatten(1)
    g, per_in, per_out = conv.groups, W.shape[1], y.shape[1] // conv.groups
    parts = [reference_pattern(X[:, i * per_in:(i + 1) * per_in],
                               Y[:, i * per_out:(i + 1) * per_out],
                               W[i * per_out:(i + 1) * per_out], kind, center)
             for i in range(g)]
    return torch.cat(parts).reshape(conv.weight.shape)


def dense_samples(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])


def close(got: torch.Tensor, expected: torch.Tensor, tol: float = 1e-10) -> None:
    scale = max(float(expected.detach().abs().max()), 1e-300)
    torch.testing.assert_close(got, expected.detach(), rtol=tol, atol=tol * scale)


# -- 1. the paper's toy example: signal along a_s, a distractor the weights filter out ---------
def toy(dim: int, n: int = 4000) -> tuple[nn.Linear, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x = a_s s + D d``; ``w`` cancels the distractor directions ``D`` and ``wᵀa_s = 1``.

    ``dim=2`` is the paper's example: ``a_s = (1, 0)``, distractor ``(1, 1)``, ``w = (1, -1)``.
    """
    if dim == 2:
        signal, distractors = torch.tensor([1.0, 0.0]), torch.tensor([[1.0, 1.0]])
    else:
        signal = torch.randn(dim)
        distractors = signal + 0.5 * torch.randn(3, dim)  # overlapping the signal, as in images
    q, _ = torch.linalg.qr(distractors.T)  # orthonormal basis of the distractor span
    w = signal - q @ (q.T @ signal)  # orthogonal to every distractor
    w = w / (w @ signal)
    s, d = torch.randn(n), torch.randn(n, len(distractors))
    x = s[:, None] * signal + d @ distractors
    layer = nn.Linear(dim, 1).eval()
    with torch.no_grad():
        layer.weight.copy_(w[None])
        layer.bias.fill_(0.3)
    return layer, x, s, signal


@pytest.mark.parametrize("kind", ["linear", "positive"])
@pytest.mark.parametrize("dim", [2, 10])
def test_pattern_recovers_signal_direction_weight_does_not(dim, kind):
    layer, x, s, signal = toy(dim)
    assert torch.allclose(layer(x)[:, 0], s + 0.3)  # the model does see the signal
    patterns = fit(layer, batches(x, 500), kind, progress=False)
    pattern = patterns["0"][0]
    assert cosine(pattern, signal) > 0.99
    assert cosine(layer.weight[0], signal) < 0.9
    assert float(layer.weight[0].detach() @ pattern) == pytest.approx(1.0, abs=1e-12)  # wᵀa = 1

    # PatternNet turns the output into the signal estimate a·y: the signal, not the distractor
    out = lrpfx.compile(layer, composites.PatternNet(patterns))(x[:200], target=0)
    estimate = out.relevance
    truth = (s[:200] + 0.3)[:, None] * signal  # the signal part of y (bias included) times a
    close(estimate, out.output[:, :1] * pattern)
    assert cosine(estimate, truth) > 0.99


# -- 2. streaming equals all data at once, whatever the batch size -----------------------------
def small_net() -> nn.Sequential:
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), nn.ReLU(), nn.Flatten(),
        nn.Linear(24, 5), nn.ReLU(), nn.Linear(5, 3),
    )
    bn = net[1]
    with torch.no_grad():  # statistics that make folding matter
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    return net.eval()


def lively(net: nn.Sequential) -> nn.Sequential:
    """``net`` with logits shifted up, so the explained (argmax) unit is active on the data its
    positive patterns are fitted on; otherwise its pattern is zero and every relevance too."""
    with torch.no_grad():
        net[-1].bias.add_(2.0)
    return net


def folded_first_conv(net: nn.Sequential) -> nn.Conv2d:
    conv, bn = net[0], net[1]
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    folded = nn.Conv2d(2, 4, 3, padding=1)
    with torch.no_grad():
        folded.weight.copy_(conv.weight * scale[:, None, None, None])
        folded.bias.copy_((conv.bias - bn.running_mean) * scale + bn.bias)
    return folded


def reference_patterns(net: nn.Sequential, x: torch.Tensor, kind: str,
                       center: str = "regime") -> dict[str, torch.Tensor]:
    """Every layer's pattern from its inputs over the whole data, computed by hand."""
    with torch.no_grad():
        conv0 = folded_first_conv(net)
        x1 = F.max_pool2d(torch.relu(conv0(x)), 2)
        x2 = torch.relu(net[4](x1)).flatten(1)
        x3 = torch.relu(net[7](x2))
        y2, y3 = net[7](x2), net[9](x3)
        return {
            "0": unfold_reference(conv0, x, kind, center),
            "4": unfold_reference(net[4], x1, kind, center),
            "7": reference_pattern(*dense_samples(x2, y2), net[7].weight, kind, center),
            "9": reference_pattern(*dense_samples(x3, y3), net[9].weight, kind, center),
        }


KINDS = [("linear", "regime"), ("positive", "regime"), ("positive", "all")]


@pytest.mark.parametrize(("kind", "center"), KINDS)
def test_streaming_fit_equals_fit_on_all_data_for_any_batch_size(kind, center):
    net, x = small_net(), torch.randn(40, 2, 8, 8)
    expected = reference_patterns(net, x, kind, center)
    for batch_size in (40, 9, 4):
        patterns = fit(net, batches(x, batch_size), kind, center=center,
                       progress=batch_size == 7)
        assert patterns.keys() == ["0", "4", "7", "9"]
        for key, pattern in expected.items():
            close(patterns[key], pattern)
        assert int(patterns.counts["9"].max()) <= 40


def test_max_batches_stops_early():
    net, x = small_net(), torch.randn(30, 2, 8, 8)
    patterns = fit(net, batches(x, 10), "positive", max_batches=2, progress=False)
    for key, pattern in reference_patterns(net, x[:20], "positive").items():
        close(patterns[key], pattern)


# -- 3. the conv pattern of the streaming formulation equals the explicit unfold -------------
@pytest.mark.parametrize(("kind", "center"), KINDS)
def test_conv_pattern_equals_unfold_computation(kind, center):
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2).eval()
    x = torch.randn(5, 4, 9, 9) + 0.5  # a mean, so that centering matters
    patterns = fit(conv, batches(x, 2), kind, center=center, progress=False)
    close(patterns["0"], unfold_reference(conv, x, kind, center))
    assert patterns.counts["0"].shape == (6,)


def test_conv1d_and_dense_on_sequences_treat_positions_as_samples():
    net = nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.ReLU(), nn.Linear(5, 4)).eval()
    x = torch.randn(6, 2, 5)
    patterns = fit(net, batches(x, 4), "positive", progress=False)
    with torch.no_grad():
        conv2d = nn.Conv2d(2, 3, (1, 3), padding=(0, 1))
        conv2d.weight.copy_(net[0].weight[:, :, None])
        conv2d.bias.copy_(net[0].bias)
        close(patterns["0"], unfold_reference(conv2d, x[:, :, None], "positive")[:, :, 0])
        h = torch.relu(net[0](x))  # (6, 3, 5): the Linear sees 18 samples of 5 features
        close(patterns["2"], reference_pattern(*dense_samples(h, net[2](h)), net[2].weight,
                                               "positive"))


# -- 4. the rules: closed forms, dense Jacobians, the gradient --------------------------------
def test_pattern_attribution_on_a_linear_layer_is_w_times_a_times_y():
    layer = nn.Linear(6, 4).eval()
    x = torch.randn(300, 6) @ torch.randn(6, 6)
    patterns = fit(layer, batches(x, 64), "positive", progress=False)
    A, W = patterns["0"], layer.weight.detach()
    explainer = lrpfx.compile(layer, composites.PatternAttribution(patterns))
    target = torch.tensor([0, 1, 2, 3, 1])
    out = explainer(x[:5], target=target)
    y = out.output.gather(1, target[:, None])
    close(out.relevance, (W * A)[target] * y)  # the paper's r = w ⊙ a y
    close(out.relevance.sum(1), y[:, 0])  # conservative: wᵀa = 1
    # as deep Taylor with the root point x0 = x − a y: r = w ⊙ (x − x0)
    x0 = x[:5] - A[target] * y
    close(out.relevance, W[target] * (x[:5] - x0))
    R = torch.randn(5, 4)
    close(explainer(x[:5], output_relevance=R).relevance, R @ (W * A))
    close(lrpfx.compile(layer, composites.PatternNet(patterns))(x[:5], output_relevance=R)
          .relevance, R @ A)


@pytest.mark.parametrize("rule", ["patternnet", "patternattribution"])
def test_pattern_rules_on_conv_match_dense_jacobian(rule):
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2).eval()
    x = torch.randn(8, 4, 7, 7)
    patterns = fit(conv, batches(x, 3), "linear", progress=False)
    A = patterns["0"]
    matrix = A if rule == "patternnet" else conv.weight.detach() * A
    J, _ = dense.as_matrix(dense.with_weight(conv, lambda w: matrix), (4, 7, 7))
    explainer = lrpfx.compile(conv, composites.resolve(rule, patterns=patterns))
    R = torch.randn(2, 6, 4, 4)
    got = explainer(x[:2], output_relevance=R).relevance
    close(got, (R.flatten(1) @ J).reshape(2, 4, 7, 7))


def unit_rows(net: nn.Module) -> nn.Module:
    """Weights with unit-norm rows, so that ``a = w`` is a normalized pattern (``wᵀa = 1``)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight /= m.weight.flatten(1).norm(dim=1).reshape(-1, *[1] * (m.weight.dim() - 1))
    return net


@pytest.mark.parametrize("activation", [nn.ReLU(), nn.LeakyReLU(0.1), nn.ReLU6(),
                                        nn.Hardtanh(-0.5, 0.7)], ids=lambda a: type(a).__name__)
def test_patternnet_with_weights_as_patterns_is_the_gradient(activation):
    net = unit_rows(nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1), activation, nn.MaxPool2d(2), nn.Conv2d(5, 4, 3),
        activation, nn.Flatten(), nn.Linear(16, 6), activation, nn.Linear(6, 3),
    ).eval())
    patterns = Patterns("linear", {k: net[int(k)].weight.detach() for k in ("0", "3", "6", "8")})
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    target = torch.tensor([0, 2, 1, 2])
    out = lrpfx.compile(net, composites.PatternNet(patterns), maxpool="wta")(x, target)
    logit = net(x).gather(1, target[:, None])
    (grad,) = torch.autograd.grad(logit.sum(), x)
    close(out.relevance, logit.detach()[:, :, None, None] * grad)


def swapped_backward(layer: nn.Module, x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` forward whose gradient runs through ``matrix`` instead of the weight (how
    iNNvestigate builds PatternNet: the gradient with the kernel replaced)."""
    if isinstance(layer, nn.Conv2d):
        z = F.conv2d(x, matrix, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    else:
        z = F.linear(x, matrix)
    return z + (layer(x) - z).detach()


@pytest.mark.parametrize("rule", ["patternnet", "patternattribution"])
def test_pattern_rules_on_a_network_equal_the_gradient_with_swapped_weights(rule):
    net, x = lively(small_net()), torch.randn(30, 2, 8, 8)
    patterns = fit(net, batches(x, 8), "positive", progress=False)
    layers = {"0": folded_first_conv(net), "4": net[4], "7": net[7], "9": net[9]}
    matrix = {k: patterns[k] if rule == "patternnet" else layer.weight.detach() * patterns[k]
              for k, layer in layers.items()}
    inputs = x[:4].clone().requires_grad_(True)
    h = torch.relu(swapped_backward(layers["0"], inputs, matrix["0"]))
    h = torch.relu(swapped_backward(layers["4"], F.max_pool2d(h, 2), matrix["4"])).flatten(1)
    h = torch.relu(swapped_backward(layers["7"], h, matrix["7"]))
    logits = swapped_backward(layers["9"], h, matrix["9"])
    logit = logits.gather(1, logits.argmax(1, keepdim=True))
    (grad,) = torch.autograd.grad(logit.sum(), inputs)
    explainer = lrpfx.compile(net, composites.resolve(rule, patterns=patterns), maxpool="wta")
    relevance = explainer(x[:4]).relevance
    assert relevance.flatten(1).any(1).all()  # not two zeros compared
    close(relevance, logit.detach()[:, :, None, None] * grad)


def test_names_rules_and_composites_give_the_same_program():
    net, x = lively(small_net()), torch.randn(20, 2, 8, 8)
    patterns = fit(net, batches(x, 10), "positive", progress=False)
    ways = [composites.PatternAttribution(patterns), rules.PatternAttribution(patterns),
            composites.resolve("patternattribution", patterns=patterns)]
    results = [lrpfx.compile(net, w, maxpool="wta")(x[:3]).relevance for w in ways]
    results.append(lrpfx.compile(net, "patternattribution", maxpool="wta",
                                 patterns=patterns)(x[:3]).relevance)
    assert results[0].flatten(1).any(1).all()  # not zeros compared
    for r in results[1:]:
        torch.testing.assert_close(r, results[0], rtol=0, atol=0)
    explainer = lrpfx.compile(net, ways[0], maxpool="wta")
    assert "mask_" in explainer.code and "wa_" in explainer.code  # ReLU masks, w ⊙ a buffers
    with pytest.warns(UserWarning, match="maxpool='wta'"):
        lrpfx.compile(net, composites.PatternNet(patterns), maxpool="avg")


def test_a_module_called_twice_gets_a_pattern_per_call_site():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(torch.relu(self.fc(x)))

    net, x = Twice().eval(), torch.randn(50, 4)
    patterns = fit(net, batches(x, 16), "linear", progress=False)
    assert patterns.keys() == ["fc#0", "fc#1"]
    h = torch.relu(net.fc(x)).detach()
    close(patterns["fc#1"], reference_pattern(h, net.fc(h).detach(), net.fc.weight, "linear"))
    lrpfx.compile(net, composites.PatternNet(patterns))(x[:2])


def test_patterns_round_trip_through_torch_save():
    net, x = small_net(), torch.randn(20, 2, 8, 8)
    patterns = fit(net, batches(x, 10), "positive", progress=False)
    buffer = io.BytesIO()
    torch.save(patterns.state_dict(), buffer)
    buffer.seek(0)
    loaded = Patterns.from_state_dict(torch.load(buffer, weights_only=True))
    assert loaded.kind == "positive" and loaded.keys() == patterns.keys()
    for key in patterns.tensors:
        assert torch.equal(loaded[key], patterns[key])
        assert torch.equal(loaded.counts[key], patterns.counts[key])
    with pytest.raises(PatternError, match="not a patterns state dict"):
        Patterns.from_state_dict(net.state_dict())


# -- 5. bad input -------------------------------------------------------------------------------
def test_loader_with_wrong_shapes_names_batch_shape_and_node():
    net = small_net()
    with pytest.raises(PatternError, match=r"batch 0: .*shape \(4, 3, 8, 8\).*module '0'"):
        fit(net, batches(torch.randn(8, 3, 8, 8), 4), progress=False)
    good_then_bad = [torch.randn(4, 2, 8, 8), torch.randn(4, 2, 12, 12)]  # the Linear breaks
    with pytest.raises(PatternError, match=r"batch 1: .*shape \(4, 2, 12, 12\).*module '7'"):
        fit(net, good_then_bad, progress=False)
    with pytest.raises(PatternError, match="batch 0 is a dict"):
        fit(net, [{"x": torch.randn(2, 2, 8, 8)}], progress=False)


def test_empty_loader_and_bad_arguments():
    net = small_net()
    with pytest.raises(PatternError, match="no batches"):
        fit(net, batches(torch.randn(0, 2, 8, 8), 4), progress=False)
    with pytest.raises(ValueError, match="'linear' or 'positive'"):
        fit(net, [torch.randn(2, 2, 8, 8)], kind="relu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_batches"):
        fit(net, [torch.randn(2, 2, 8, 8)], max_batches=0)
    with pytest.raises(PatternError, match="no conv or dense layer"):
        fit(nn.Sequential(nn.ReLU()).eval(), [torch.randn(2, 3)], progress=False)
    with pytest.raises(ValueError, match="needs fitted patterns.*lrpfx.patterns.fit"):
        composites.resolve("patternnet")


def test_patterns_of_another_model_are_refused_naming_every_layer():
    net, x = small_net(), torch.randn(20, 2, 8, 8)
    patterns = fit(net, batches(x, 10), "positive", progress=False)
    other = nn.Sequential(nn.Flatten(), nn.Linear(128, 3)).eval()
    with pytest.raises(PatternError, match=r"(?s)node linear \(nn.Linear, module '1'\): no "
                                           r"pattern for layer '1'.*fitted for 4 layers "
                                           r"\(0, 4, 7, 9\)"):
        lrpfx.compile(other, composites.PatternNet(patterns))
    retrained = small_net()  # same architecture, other weights
    with pytest.raises(PatternError, match=r"(?s)cannot use.*does not belong to this weight"):
        lrpfx.compile(retrained, composites.PatternAttribution(patterns), maxpool="wta")
    wider = nn.Sequential(*list(small_net())[:7], nn.Linear(24, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(PatternError, match=r"pattern '7' has shape \(5, 24\), the layer's "
                                           r"weight \(8, 24\)"):
        lrpfx.compile(wider.eval(), composites.PatternNet(patterns), maxpool="wta")


def test_gradient_rule_is_refused_on_smooth_activations():
    net = nn.Sequential(nn.Linear(3, 3), nn.Sigmoid(), nn.Linear(3, 2)).eval()
    patterns = fit(net, [torch.randn(10, 3)], progress=False)
    with pytest.raises(UnsupportedOperationError, match=r"Gradient\(\) is not supported"):
        lrpfx.compile(net, composites.PatternNet(patterns))
    keep = composites.PatternNet(patterns, rules={nn.Sigmoid: rules.Pass()})
    lrpfx.compile(net, keep)(torch.randn(2, 3))


def test_the_example_writes_one_row_per_method(tmp_path):
    import runpy

    from lrpfx.images import load_image

    torch.set_default_dtype(torch.float32)  # as users run it (conftest restores the default)
    path = Path(__file__).parent.parent / "examples" / "patterns_digits.py"
    main = runpy.run_path(str(path), run_name="example_patterns_digits")["main"]
    out = tmp_path / "patterns.png"
    ratios = main(["--epochs", "1", "--max-batches", "2", "--out", str(out)])
    assert len(ratios) == 5 and all(math.isfinite(r) for r in ratios.values())
    assert load_image(out).shape == (3, 6 * 66 + 2, 20 * 66 + 2)  # digits + 5 rows, 20 samples
