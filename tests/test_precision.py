"""bfloat16 and float16 models explained with a float32 relevance (``relevance_dtype``).

The forward stays the model's, in its dtype; the backward reads the forward values and the
weights in float32 and accumulates there. Measured against the same forward with a float64
backward, the float32 backward is exact to float32 rounding (~3e-7), while a backward in the
model's own dtype is off by 0.1–6 % (bfloat16 keeps 8 mantissa bits; float16 relevance
underflows below 6e-8). What neither can change: the model's own forward rounding (a bfloat16
forward differs from a float32 one, and LRP explains the forward it is given).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx import composites, rules

NARROW = [torch.bfloat16, torch.float16]


class Block(nn.Module):
    """conv-BN-ReLU, max-pool, a residual add, a dense head: folding, pooling, fan-out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.inner = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        h = torch.relu(h + self.inner(h))
        return self.head(h.flatten(1))


def _block(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(3)
    model = Block().eval()
    with torch.no_grad():
        model.bn.running_mean.normal_(std=0.1)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model.to(dtype)


def _error(r: torch.Tensor, reference: torch.Tensor) -> float:
    """Relative L2 error per sample, the largest."""
    r, reference = r.double().flatten(1), reference.double().flatten(1)
    return float(((r - reference).norm(dim=1) / reference.norm(dim=1)).max())


@pytest.mark.parametrize("dtype", NARROW, ids=str)
@pytest.mark.parametrize("composite", [composites.EpsilonPlusFlat(), composites.EpsilonOnly(),
                                       composites.EpsilonAlpha2Beta1(),
                                       composites.EpsilonGammaBox(low=-3.0, high=3.0)],
                         ids=lambda c: c.name)
def test_a_float32_backward_explains_the_narrow_forward_exactly(dtype, composite):
    model = _block(dtype)
    x = torch.rand(4, 3, 16, 16).to(dtype)
    narrow = lrpfx.compile(model, composite)(x, target=3)
    wide = lrpfx.compile(model, composite, relevance_dtype=torch.float32)(x, target=3)
    exact = lrpfx.compile(model, composite, relevance_dtype=torch.float64)(x, target=3)
    assert torch.equal(wide.output, narrow.output) and wide.output.dtype == dtype  # same forward
    assert wide.relevance.dtype == torch.float32 and exact.relevance.dtype == torch.float64
    assert torch.isfinite(wide.relevance).all()
    assert _error(wide.relevance, exact.relevance) < 2e-6
    assert _error(narrow.relevance, exact.relevance) > 1e-4  # what the option is for


def test_float16_relevance_that_underflows_is_kept_in_float32():
    """A logit of ~1e-4 spread over 3·32·32 inputs: ~3e-8 each, below float16's smallest
    numbers; the float32 backward conserves it (zero biases, ε-rule; up to the rounding of the
    float16 forward)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 32 * 32, 4, bias=False)).eval()
    with torch.no_grad():
        model[-1].weight.mul_(0.001)
    model = model.half()
    x = torch.rand(2, 3, 32, 32).half()
    explainer = lrpfx.compile(model, rules.Epsilon(1e-9), relevance_dtype=torch.float32)
    out = explainer(x, target=1)
    logit = out.output[:, 1].double()
    torch.testing.assert_close(out.relevance.double().sum((1, 2, 3)), logit, rtol=2e-3, atol=0)
    narrow = lrpfx.compile(model, rules.Epsilon(1e-9))(x, target=1).relevance
    lost = (narrow.double().sum((1, 2, 3)) - logit).abs() / logit.abs()
    assert lost.min() > 0.1, lost  # float16 itself cannot hold these relevances


def test_the_backward_reads_each_narrow_value_once_and_keeps_weights_in_both_dtypes():
    model = _block(torch.bfloat16)
    explainer = lrpfx.compile(model, "epsilon-plus-flat", relevance_dtype=torch.float32)
    code = explainer.code
    assert "lrpfx_runtime_widen" in code
    widened = [line.split(" = ")[0].strip() for line in code.splitlines()
               if "lrpfx_runtime_widen(" in line]
    assert len(widened) == len(set(widened))  # each forward value cast once
    buffers = dict(explainer.program.named_buffers())
    assert buffers["head_weight"].dtype == torch.bfloat16  # the forward's
    assert buffers["head_weight_float32"].dtype == torch.float32  # the backward's
    assert all(b.dtype in (torch.bfloat16, torch.float32) for b in buffers.values())


def test_a_model_already_as_wide_is_explained_as_before():
    """Nothing is narrower than float32 in a float64 model: every ``widen`` returns its value."""
    model = _block(torch.float64)
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    plain = lrpfx.compile(model, "epsilon-plus-flat")
    wide = lrpfx.compile(model, "epsilon-plus-flat", relevance_dtype=torch.float32)
    assert torch.equal(wide(x, target=2).relevance, plain(x, target=2).relevance)


def test_relevance_dtype_must_be_a_floating_dtype():
    with pytest.raises(TypeError, match="relevance_dtype must be a floating-point"):
        lrpfx.compile(_block(torch.float32), relevance_dtype=torch.int32)
    with pytest.raises(TypeError, match="relevance_dtype must be a floating-point"):
        lrpfx.compile(_block(torch.float32), relevance_dtype="float32")  # type: ignore[arg-type]


def test_a_bfloat16_language_model_through_export():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=60, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2)).eval().to(torch.bfloat16)
    inputs = {"input_ids": torch.randint(0, 60, (2, 9)),
              "attention_mask": torch.ones(2, 9, dtype=torch.long)}
    wide = lrpfx.compile(copy.deepcopy(model), "attn-lrp", example_inputs=inputs,
                         relevance_dtype=torch.float32)(**inputs)
    exact = lrpfx.compile(model, "attn-lrp", example_inputs=inputs,
                          relevance_dtype=torch.float64)(**inputs)
    assert wide.output.dtype == torch.bfloat16 and torch.equal(wide.output, exact.output)
    logits = model(**inputs).logits  # attention as matrix products, rounded to bfloat16 between
    torch.testing.assert_close(wide.output, logits, rtol=0, atol=0.01 * logits.abs().max().item())
    assert wide.relevance.dtype == torch.float32 and torch.isfinite(wide.embedding).all()
    assert _error(wide.embedding, exact.embedding) < 1e-5
