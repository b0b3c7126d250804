"""What an explainer is called with: every bad argument is a TypeError/ValueError naming it,
never a silently wrong heatmap; NaN/Inf are refused on the way in and located on the way out;
dtypes, devices, batches, views, threads and saving all give the results they should."""

from __future__ import annotations

import copy
import io
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lrpfx
from lrpfx import composites, rules
from lrpfx.errors import NonFiniteError


def conv_net() -> nn.Module:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(4 * 2 * 2, 5),
    )
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2)
    return model.eval()


X = (2, 3, 6, 6)


def nan_at(shape, index):
    x = torch.randn(shape)
    x[index] = float("nan")
    return x


# (call, exception, the start of the message): the message names the argument first
BAD = {
    "x-list": (lambda e: e([[1.0]]), TypeError, "x must be a torch.Tensor (a batch of inputs), "
                                                "got list"),
    "x-int": (lambda e: e(torch.ones(X, dtype=torch.long)), TypeError,
              "x must be a floating-point tensor, got dtype torch.int64; convert it first"),
    "x-float32": (lambda e: e(torch.randn(X, dtype=torch.float32)), TypeError,
                  "x has dtype torch.float32 but the explainer computes in torch.float64; pass "
                  "x.to(torch.float64) or convert the explainer with explainer.to(torch.float32)"),
    "x-device": (lambda e: e(torch.randn(X, device="meta")), ValueError,
                 "x is on meta but the explainer is on cpu; move one of them"),
    "x-0d": (lambda e: e(torch.tensor(1.0)), ValueError, "x must be a batch with the batch "
                                                         "dimension first"),
    "x-no-batch": (lambda e: e(torch.randn(3, 6, 6)), ValueError,
                   "x has shape (3, 6, 6) but the first layer '0' (nn.Conv2d) takes a batch of "
                   "rank 4 (N, C, H, W); add the batch dimension: x.unsqueeze(0)"),
    "x-channels": (lambda e: e(torch.randn(2, 1, 6, 6)), ValueError,
                   "x has 1 channels (dimension 1), shape (2, 1, 6, 6), but the first layer '0' "
                   "(nn.Conv2d) takes 3"),
    "x-size": (lambda e: e(torch.randn(2, 3, 8, 8)), ValueError,
               "x of shape (2, 3, 8, 8) does not fit the model: it fails at '5' (nn.Linear): "
               "RuntimeError: "),
    "x-too-small": (lambda e: e(torch.randn(2, 3, 2, 2)), ValueError,
                    "x of shape (2, 3, 2, 2) does not fit the model: it fails at '0' (nn.Conv2d)"),
    "x-empty": (lambda e: e(torch.randn(0, 3, 6, 6)), ValueError,
                "x is an empty batch (shape (0, 3, 6, 6)); pass at least one sample"),
    "x-nan": (lambda e: e(nan_at(X, (1, 2, 0, 3))), ValueError,
              "x contains 1 NaN/Inf value(s) (NaN: 1, first at index (1, 2, 0, 3)); lrpfx does "
              "not explain non-finite inputs"),
    "x-inf": (lambda e: e(torch.full(X, float("inf"))), ValueError,
              "x contains 216 NaN/Inf value(s) (NaN: 0, first at index (0, 0, 0, 0))"),
    "target-range": (lambda e: e(torch.randn(X), 5), ValueError,
                     "target 5 is out of range: the model output has 5 classes along dimension "
                     "1 (shape (2, 5)), valid targets are 0 to 4"),
    "target-negative": (lambda e: e(torch.randn(X), torch.tensor([0, -1])), ValueError,
                        "target -1 is out of range"),
    "target-float": (lambda e: e(torch.randn(X), torch.tensor([1.0, 2.0])), TypeError,
                     "target must hold integer class indices, got dtype torch.float64"),
    "target-bool": (lambda e: e(torch.randn(X), True), TypeError, "target must be an int, an "
                                                                  "integer tensor"),
    "target-str": (lambda e: e(torch.randn(X), "cat"), TypeError, "target must be an int"),
    "target-batch": (lambda e: e(torch.randn(X), torch.tensor([1, 2, 3])), ValueError,
                     "target has shape (3,) but x has a batch of 2; give one class per sample"),
    "target-2d": (lambda e: e(torch.randn(X), torch.tensor([[1], [2]])), ValueError,
                  "target has shape (2, 1) but x has a batch of 2"),
    "relevance-shape": (lambda e: e(torch.randn(X), output_relevance=torch.randn(1, 5)),
                        ValueError, "output_relevance has shape (1, 5) but the model output for "
                                    "x of shape (2, 3, 6, 6) has shape (2, 5)"),
    "relevance-broadcast": (lambda e: e(torch.randn(X), output_relevance=torch.randn(5)),
                            ValueError, "output_relevance has shape (5,) but the model output"),
    "relevance-int": (lambda e: e(torch.randn(X), output_relevance=torch.ones(2, 5).long()),
                      TypeError, "output_relevance must be floating point, got dtype "
                                 "torch.int64"),
    "relevance-dtype": (lambda e: e(torch.randn(X), output_relevance=torch.ones(2, 5).float()),
                        TypeError, "output_relevance has dtype torch.float32 but x has "
                                   "torch.float64"),
    "relevance-list": (lambda e: e(torch.randn(X), output_relevance=[1.0]), TypeError,
                       "output_relevance must be a tensor shaped like the model output or a "
                       "callable"),
    "relevance-nan": (lambda e: e(torch.randn(X), output_relevance=nan_at((2, 5), (0, 1))),
                      ValueError, "output_relevance contains 1 NaN/Inf value(s)"),
    "relevance-and-target": (lambda e: e(torch.randn(X), 1, output_relevance=torch.ones(2, 5)),
                             ValueError, "pass either target or an output_relevance tensor, "
                                         "not both"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_arguments_are_named_errors(case):
    call, error, message = BAD[case]
    explainer = lrpfx.compile(conv_net(), "epsilon-plus-flat")
    with pytest.raises(error) as info:
        call(explainer)
    assert str(info.value).startswith(message), str(info.value)


def test_a_dense_first_layer_checks_the_features_and_the_batch_dimension():
    explainer = lrpfx.compile(nn.Sequential(nn.Linear(6, 3)).eval())
    with pytest.raises(ValueError, match=r"^x has 7 features \(last dimension\), shape \(2, 7\), "
                                         r"but the first layer '0' \(nn.Linear\) takes 6"):
        explainer(torch.randn(2, 7))
    with pytest.raises(ValueError, match=r"^x has shape \(6,\) but the first layer '0' "
                                         r"\(nn.Linear\) takes a batch \(N, ..., features\)"):
        explainer(torch.randn(6))


class Regression(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 1)

    def forward(self, x):
        return self.fc(x).flatten()  # one value per sample: no class dimension


def test_an_output_without_classes_needs_an_output_relevance():
    explainer = lrpfx.compile(Regression().eval())
    x = torch.randn(3, 4)
    for target, what in ((None, "the default target (each sample's argmax)"), (0, "target")):
        with pytest.raises(ValueError) as info:
            explainer(x, target)
        assert str(info.value) == (f"{what} picks a class along dimension 1, but the model output "
                                   "has shape (3,); pass output_relevance= instead")
    out = explainer(x, output_relevance=torch.ones(3))  # the flat rule (first layer) conserves
    torch.testing.assert_close(out.relevance.sum(1), torch.ones(3), rtol=1e-6, atol=0)


def test_accepted_spellings_of_target_agree():
    explainer = lrpfx.compile(conv_net())
    x = torch.randn(X)
    reference = explainer(x, torch.tensor([3, 3])).relevance
    for target in (3, torch.tensor(3), torch.tensor([3, 3], dtype=torch.int32)):
        torch.testing.assert_close(explainer(x, target).relevance, reference, rtol=0, atol=0)


# -- NaN and Inf produced along the way ------------------------------------------------------------
def test_nan_from_a_zero_denominator_is_an_error_that_says_where():
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(),
                          nn.Linear(3, 2, bias=False)).eval()
    explainer = lrpfx.compile(model, rules.Epsilon(0.0))  # LRP-0: nothing stabilizes z = 0
    x = torch.randn(3, 4)
    x[1] = 0.0  # z = 0 everywhere for this sample: R / z = 0 / 0
    with pytest.raises(NonFiniteError) as info:
        explainer(x, target=0)
    error = info.value
    assert error.samples == [1] and error.node.startswith("s_")
    assert str(error).startswith(
        "the explanation contains NaN/Inf for sample(s) [1] although x is finite; the first one "
        f"comes from node '{error.node}' (")  # the division: truediv, or div in place
    assert "of the relevance program (print(explainer.code)): a denominator z is 0" in str(error)
    assert "stabilizer" in str(error) and "rules.Epsilon(1e-6)" in str(error)
    fine = explainer(x[[0, 2]], target=0).relevance  # the other samples are kept, and right
    torch.testing.assert_close(error.explanation.relevance[[0, 2]], fine, rtol=0, atol=0)
    assert isinstance(error, lrpfx.LrpfxError) and isinstance(error, FloatingPointError)


def test_an_overflowing_forward_and_a_nan_parameter_are_located():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).float().eval()
    with torch.no_grad():
        model[2].weight.fill_(1e38)
    x = torch.full((2, 4), 1.0, dtype=torch.float32)
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    with pytest.raises(NonFiniteError, match=r"overflows there in torch.float32; explain in a "
                                             r"wider dtype"):
        lrpfx.compile(model)(x)
    with torch.no_grad():
        model[2].weight.fill_(0.5)
        model[0].bias[1] = float("nan")
    with pytest.raises(NonFiniteError, match=r"from node '_0_bias.*a parameter or buffer of the "
                                             r"model is already NaN/Inf"):
        lrpfx.compile(model)(x)


# -- dtypes and devices ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5),
                                              (torch.bfloat16, 2e-2)])
def test_output_equals_the_models_in_each_dtype(dtype, tolerance):
    model = conv_net().to(dtype)
    x = torch.randn(4, 3, 6, 6).to(dtype)
    out = lrpfx.compile(model)(x)
    assert out.output.dtype == out.relevance.dtype == dtype
    expected = model(x).detach()
    scale = expected.abs().max()
    torch.testing.assert_close(out.output, expected, rtol=0, atol=float(tolerance * scale))
    converted = lrpfx.compile(conv_net().to(dtype)).double().to(dtype)  # .to() on the explainer
    assert converted(x).output.dtype == dtype


def test_bfloat16_relevance_is_within_the_documented_tolerance_of_float32():
    """README: with ε ≥ 0.01 on dense layers, bfloat16 relevance is within 8 % (relative L2 per
    sample) of float32; the presets' ε = 1e-6 divides by near-zero z, which bfloat16's 8-bit
    mantissa cannot carry."""
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10),
    ).float().eval()
    x = torch.rand(16, 3, 16, 16, dtype=torch.float32)
    for composite in (composites.EpsilonPlusFlat(epsilon=0.01), composites.EpsilonOnly(0.01),
                      composites.EpsilonAlpha2Beta1(epsilon=0.01)):
        r32 = lrpfx.compile(model, composite)(x, 3).relevance
        r16 = lrpfx.compile(model.to(torch.bfloat16), composite)(x.bfloat16(), 3).relevance
        model.float()
        error = (r16.float() - r32).flatten(1).norm(dim=1) / r32.flatten(1).norm(dim=1)
        assert error.max() < 0.08, (composite, error.max())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_explainer_to_cuda_gives_the_cpu_results():
    model = conv_net()
    explainer = lrpfx.compile(model)
    x = torch.randn(4, *X[1:])
    cpu = explainer(x, 2)
    explainer.to("cuda")
    gpu = explainer(x.cuda(), torch.tensor([2, 2, 2, 2], device="cuda"))
    torch.testing.assert_close(gpu.relevance.cpu(), cpu.relevance, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gpu.output.cpu(), model(x), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="x is on cpu but the explainer is on cuda:0"):
        explainer(x)
    with pytest.raises(ValueError, match="target 9 is out of range"):
        explainer(x.cuda(), 9)  # refused before it could become a device-side assert


# -- batches and views -----------------------------------------------------------------------------
@pytest.mark.parametrize("maxpool", ["avg", "wta"])
@pytest.mark.parametrize("preset", ["epsilon-plus-flat", "epsilon-alpha2-beta1", "epsilon"])
def test_a_batch_is_explained_as_its_samples_are(preset, maxpool):
    explainer = lrpfx.compile(conv_net(), preset, maxpool=maxpool)
    x = torch.randn(6, 3, 6, 6)
    target = torch.tensor([0, 1, 2, 3, 4, 0])
    batched = explainer(x, target)
    for i in range(6):
        one = explainer(x[i : i + 1], int(target[i]))
        torch.testing.assert_close(one.relevance[0], batched.relevance[i], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(one.output[0], batched.output[i], rtol=1e-12, atol=1e-14)


def test_a_large_batch():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    explainer = lrpfx.compile(model.eval(), "epsilon-plus-flat")
    x = torch.randn(2048, 1, 6, 6)
    out = explainer(x)
    some = torch.tensor([0, 1, 777, 2047])
    torch.testing.assert_close(explainer(x[some]).relevance, out.relevance[some], rtol=1e-12,
                               atol=1e-14)


def test_views_and_non_contiguous_inputs_give_the_contiguous_result_and_stay_unwritten():
    explainer = lrpfx.compile(conv_net(), "epsilon-plus-flat")
    base = torch.randn(4, 3, 12, 6)
    views = {
        "strided": base[:, :, ::2],
        "transposed": base[:, :, :6].transpose(2, 3),
        "offset": base[1:3, :, 6:],
        "channels_last": base[:, :, :6].contiguous(memory_format=torch.channels_last),
        "expanded": base[:1, :, :6].expand(4, -1, -1, -1),
    }
    version = base._version
    before = base.clone()
    for name, x in views.items():
        out = explainer(x, 1)
        expected = explainer(x.contiguous(), 1)
        assert out.relevance.shape == x.shape, name
        torch.testing.assert_close(out.relevance, expected.relevance, rtol=1e-12, atol=1e-14,
                                   msg=name)
    assert base._version == version and torch.equal(base, before)


# -- threads ---------------------------------------------------------------------------------------
def test_one_explainer_shared_by_threads_gives_the_sequential_results():
    calls = [(torch.randn(n, 3, 6 + 2 * (i % 2), 6 + 2 * (i % 2)), i % 5)
             for i, n in enumerate([1, 2, 3, 4, 5, 6, 7, 8] * 2)]
    explainer = lrpfx.compile(nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 5),
    ).eval(), composites.EpsilonGammaBox(-3, 3))  # any input size: shapes vary across threads
    sequential = [explainer(x, t).relevance for x, t in calls]
    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []

    def work(indices):
        try:
            for i in indices:
                results[i] = explainer(*calls[i]).relevance
        except BaseException as error:  # noqa: BLE001  (reported below)
            errors.append(error)

    threads = [threading.Thread(target=work, args=(range(k, len(calls), 4),)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for i, expected in enumerate(sequential):
        torch.testing.assert_close(results[i], expected, rtol=0, atol=0)


# -- saving and loading ----------------------------------------------------------------------------
def test_recompiling_a_saved_model_gives_identical_results():
    model = conv_net()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    restored = conv_net()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(X)
    before, after = lrpfx.compile(model)(x), lrpfx.compile(restored)(x)
    assert torch.equal(before.relevance, after.relevance)
    assert lrpfx.compile(model).code == lrpfx.compile(restored).code


def test_a_saved_explainer_state_loads_into_an_explainer_of_the_same_architecture():
    explainer = lrpfx.compile(conv_net(), "epsilon-plus-flat")
    buffer = io.BytesIO()
    torch.save(explainer.state_dict(), buffer)
    buffer.seek(0)
    fresh_model = conv_net()  # other weights, same architecture, same rules
    fresh = lrpfx.compile(fresh_model, "epsilon-plus-flat")
    weight = fresh_model[0].weight.clone()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(X)
    assert torch.equal(fresh(x).relevance, explainer(x).relevance)
    assert torch.equal(fresh_model[0].weight, weight)  # loading replaced, never wrote into it
    with pytest.raises(RuntimeError, match="Error.s. in loading state_dict for Explainer"):
        lrpfx.compile(conv_net(), "epsilon").load_state_dict(explainer.state_dict())


def test_pickling_an_explainer_is_refused_and_deepcopy_works():
    explainer = lrpfx.compile(conv_net())
    with pytest.raises(TypeError, match=r"an Explainer cannot be pickled \(torch.save"
                                        r"\(explainer\)\): .* Save the model and compile it again"):
        torch.save(explainer, io.BytesIO())
    clone = copy.deepcopy(explainer)
    x = torch.randn(X)
    assert torch.equal(clone(x).relevance, explainer(x).relevance)
    clone.float()
    assert explainer(x).relevance.dtype == torch.float64  # the copy is independent


def test_validation_does_not_change_results():
    explainer = lrpfx.compile(conv_net())
    x = torch.randn(X)
    target = torch.tensor([1, 4])
    with torch.no_grad():
        raw = explainer.program(x, target, None)
    out = explainer(x, target)
    assert torch.equal(out.output, raw[0]) and torch.equal(out.relevance, raw[1])
    one_hot = explainer(x, output_relevance=F.one_hot(target, 5).double())
    assert torch.isfinite(one_hot.relevance).all()
