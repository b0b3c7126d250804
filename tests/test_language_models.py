"""HuggingFace language models through the torch.export front end: BERT, GPT-2, Llama and Qwen2
(small random configurations, 2 layers, nothing downloaded), eager and sdpa attention. Output
equal to the model's; token relevance equal to the independent gradient-frame reference
(``tests/gradient_frame.py``, float64, ε → 0) within 1e-8; CP-LRP conservative with zero biases;
a batch with padding equal to each sample alone."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import lrpfx
import lrpfx.compiler
from lrpfx import composites
from tests.gradient_frame import language_model_relevance

transformers = pytest.importorskip("transformers")

VOCAB = 50


def _float64_norm(self: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """HF's RMSNorm without its cast to float32 (``hidden.to(torch.float32)``): in a float64
    model that cast rounds every layer to float32, which bounds any two correct explanations'
    agreement at ~1e-7; ``test_float32_casts_inside_a_float64_model`` keeps it."""
    variance = hidden.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden * torch.rsqrt(variance + self.variance_epsilon))


@pytest.fixture
def float64_norms(monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

    monkeypatch.setattr(LlamaRMSNorm, "forward", _float64_norm)
    monkeypatch.setattr(Qwen2RMSNorm, "forward", _float64_norm)


def llama(attention: str) -> nn.Module:
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, attn_implementation=attention))


def qwen2(attention: str) -> nn.Module:
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, attn_implementation=attention))


def gpt2(attention: str) -> nn.Module:
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=0,
        eos_token_id=0, attn_implementation=attention))


def bert(attention: str) -> nn.Module:
    return transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=32, num_labels=3,
        attn_implementation=attention))


MODELS: dict[str, Callable[[str], nn.Module]] = {
    "bert": bert, "gpt2": gpt2, "llama": llama, "qwen2": qwen2}
CASES = [(name, attention) for name in MODELS for attention in ("eager", "sdpa")]


def _make(name: str, attention: str) -> nn.Module:
    torch.manual_seed(0)
    model = MODELS[name](attention).eval()
    with torch.no_grad():  # non-zero biases, so that they are part of what is compared
        for key, p in model.named_parameters():
            if key.endswith("bias"):
                p.normal_(std=0.1)
    return model


def _batch() -> dict[str, torch.Tensor]:
    """Two sequences of 7 tokens, the second padded on the right after 5."""
    torch.manual_seed(1)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    return {"input_ids": torch.randint(0, VOCAB, (2, 7)), "attention_mask": mask}


def _seed(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One-hot at token 3 of each sample's last position (a causal LM), or class 1."""
    seed = torch.zeros_like(logits)
    if logits.dim() == 3:
        last = mask.sum(1) - 1
        seed[torch.arange(len(last)), last, 3] = 1.0
    else:
        seed[:, 1] = 1.0
    return seed


@pytest.mark.usefixtures("float64_norms")
@pytest.mark.parametrize(("name", "attention"), CASES, ids=[f"{n}-{a}" for n, a in CASES])
def test_attn_lrp_equals_the_gradient_frame_reference(name, attention):
    model, inputs = _make(name, attention), _batch()
    explainer = lrpfx.compile(model, composites.AttnLRP(epsilon=1e-15), example_inputs=inputs,
                              frontend="export")
    logits = model(**inputs).logits
    seed = _seed(logits, inputs["attention_mask"])
    out = explainer(**inputs, output_relevance=lambda output, target: output * seed)
    torch.testing.assert_close(out.output, logits, rtol=1e-12, atol=1e-12)
    expected = language_model_relevance(model, inputs, seed)
    scale = expected.abs().max().item()
    tokens = inputs["attention_mask"].bool()
    assert out.embedding is not None and expected.abs().sum(-1)[tokens].amin() > 0  # not zeros
    torch.testing.assert_close(out.embedding, expected, rtol=1e-8, atol=1e-8 * scale)
    assert out.relevance.shape == inputs["input_ids"].shape
    torch.testing.assert_close(out.relevance, out.embedding.sum(-1), rtol=0, atol=0)
    assert out.relevance[1, 5:].abs().max() == 0  # padding


def test_float32_casts_inside_a_float64_model():
    """HF's own RMSNorm computes in float32 even in a float64 model; lrpfx keeps the casts in
    the forward (the output is the model's, bit for bit) and its relevance in float64."""
    model, inputs = _make("llama", "sdpa"), _batch()
    explainer = lrpfx.compile(model, composites.AttnLRP(epsilon=1e-15),
                              example_inputs=inputs)  # auto: fx cannot trace it
    assert "aten.linear" in {n.meta.get(lrpfx.meta.ORIGIN)
                             for n in explainer.graph_module.graph.nodes}
    logits = model(**inputs).logits
    seed = _seed(logits, inputs["attention_mask"])
    out = explainer(**inputs, output_relevance=lambda output, target: output * seed)
    torch.testing.assert_close(out.output, logits, rtol=0, atol=0)
    assert out.embedding is not None and out.embedding.dtype == torch.float64
    expected = language_model_relevance(model, inputs, seed)
    scale = expected.abs().max().item()
    torch.testing.assert_close(out.embedding, expected, rtol=1e-6, atol=1e-6 * scale)


@pytest.mark.parametrize("name", list(MODELS))
def test_cp_lrp_is_conservative_without_biases(name):
    model, inputs = _make(name, "sdpa"), _batch()
    with torch.no_grad():  # biases and added position/type embeddings absorb relevance
        for key, p in model.named_parameters():
            if key.endswith("bias") or any(k in key for k in ("position", "wpe", "token_type")):
                p.zero_()
    explainer = lrpfx.compile(model, composites.CPLRP(epsilon=1e-12), example_inputs=inputs,
                              frontend="export")
    logits = model(**inputs).logits
    seed = _seed(logits, inputs["attention_mask"])
    out = explainer(**inputs, output_relevance=lambda output, target: output * seed)
    total = (logits * seed).flatten(1).sum(1)
    assert total.abs().min() > 1e-6
    torch.testing.assert_close(out.relevance.sum(1), total, rtol=1e-9, atol=1e-12)


@pytest.mark.usefixtures("float64_norms")
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_a_padded_batch_equals_each_sample_alone(name):
    model, inputs = _make(name, "sdpa"), _batch()
    batched = lrpfx.compile(model, "attn-lrp", example_inputs=inputs, frontend="export")
    logits = model(**inputs).logits
    seed = _seed(logits, inputs["attention_mask"])
    out = batched(**inputs, output_relevance=lambda output, target: output * seed)
    alone = {"input_ids": inputs["input_ids"][1:, :5], "attention_mask": torch.ones(1, 5).long()}
    single = lrpfx.compile(model, "attn-lrp", example_inputs=alone, frontend="export")
    one = single(**alone, output_relevance=lambda output, target: output * seed[1:, :5])
    torch.testing.assert_close(out.relevance[1:, :5], one.relevance, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out.output[1:, :5], one.output, rtol=1e-10, atol=1e-12)


def test_hf_modules_are_named_recorded_and_matched_by_name():
    """GPT-2's ``Conv1D`` (one ``addmm``) and ``NewGELUActivation`` (eight elementwise ops)
    are call sites with their module path and class, like ``torch.nn`` layers."""
    from transformers.activations import NewGELUActivation
    from transformers.pytorch_utils import Conv1D

    model, inputs = _make("gpt2", "sdpa"), _batch()
    explainer = lrpfx.compile(model, {"*.mlp.c_fc": lrpfx.rules.Epsilon(0.25)},
                              example_inputs=inputs, frontend="export",
                              record=["transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.act"])
    nodes = {n.meta.get(lrpfx.meta.PATH): n for n in explainer.graph_module.graph.nodes}
    assert nodes["transformer.h.1.mlp.c_fc"].meta[lrpfx.meta.MODULE_TYPE] is Conv1D
    assert nodes["transformer.h.1.mlp.c_fc"].meta[lrpfx.meta.RULE] == lrpfx.rules.Epsilon(0.25)
    assert nodes["transformer.h.1.mlp.act"].meta[lrpfx.meta.MODULE_TYPE] is NewGELUActivation
    out = explainer(**inputs)  # the default target: the predicted next token
    assert set(out.layers) == {"transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.act"}
    assert out.layers["transformer.h.0.mlp.act"].shape == (2, 7, 128)


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_cp_lrp_gives_a_swiglu_all_to_its_up_branch(name):
    """``down(silu(gate(x)) * up(x))``: the SiLU branch is the gate of a gated linear unit; under
    CP-LRP the up branch takes all the relevance (as LXT), under AttnLRP each half."""
    model, inputs = _make(name, "sdpa"), _batch()
    layers = ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj",
              "model.layers.0.mlp.down_proj"]
    shares = {}
    for rules in (composites.CPLRP(epsilon=1e-12), composites.AttnLRP(epsilon=1e-12)):
        explainer = lrpfx.compile(model, rules, example_inputs=inputs, record=layers)
        out = explainer(**inputs).layers
        arriving = out["model.layers.0.mlp.down_proj"]  # = the product's (no bias, ε → 0)
        shares[rules.name] = [float(out[k].sum() / arriving.sum()) for k in layers[:2]]
    assert shares["cp-lrp"] == pytest.approx([0.0, 1.0], abs=1e-6)
    assert shares["attn-lrp"] == pytest.approx([0.5, 0.5], abs=1e-6)


@pytest.mark.usefixtures("float64_norms")
@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_decoder_sequence_classifiers_pick_the_last_token(name):
    """``ForSequenceClassification`` of a decoder reads its logits at each sequence's last
    non-padding token (``logits[arange(batch), last]``, an indexed gather, routed)."""
    torch.manual_seed(0)
    if name == "llama":
        model = transformers.LlamaForSequenceClassification(transformers.LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, num_labels=3, pad_token_id=0))
    else:
        model = transformers.GPT2ForSequenceClassification(transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32, num_labels=3,
            pad_token_id=0, bos_token_id=0, eos_token_id=0))
    model = model.eval()
    inputs = {"input_ids": torch.randint(1, VOCAB, (2, 7)),
              "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    explainer = lrpfx.compile(model, composites.AttnLRP(epsilon=1e-15), example_inputs=inputs)
    out = explainer(**inputs, target=1)
    logits = model(**inputs).logits
    torch.testing.assert_close(out.output, logits, rtol=1e-12, atol=1e-12)
    seed = torch.zeros_like(logits)
    seed[:, 1] = 1.0
    expected = language_model_relevance(model, inputs, seed)
    scale = expected.abs().max().item()
    torch.testing.assert_close(out.embedding, expected, rtol=1e-8, atol=1e-8 * scale)


@pytest.mark.usefixtures("float64_norms")
def test_llama_sdpa_fused_equals_its_attention_written_out(monkeypatch):
    """Llama's sdpa attention explained by the fused kernel (``passes.fuse``) and part by part
    (fusion off): one explanation; and HuggingFace's eager attention, which the model writes
    out itself, within its softmax's float32 rounding (``dtype=torch.float32`` in HF's code)."""
    inputs, rule = _batch(), composites.AttnLRP(epsilon=0.0)
    explained = {}
    for kind in ("sdpa", "eager"):
        explainer = lrpfx.compile(_make("llama", kind), rule, example_inputs=inputs)
        assert ("lrpfx_attention_relevance" in explainer.program.code) == (kind == "sdpa")
        explained[kind] = explainer(**inputs)
    monkeypatch.setattr(lrpfx.compiler.passes, "fuse", lambda gm, keep: gm)
    parts = lrpfx.compile(_make("llama", "sdpa"), rule, example_inputs=inputs)(**inputs)
    torch.testing.assert_close(explained["sdpa"].relevance, parts.relevance, rtol=1e-12,
                               atol=1e-14)
    torch.testing.assert_close(explained["sdpa"].output, explained["eager"].output)
    torch.testing.assert_close(explained["sdpa"].relevance, explained["eager"].relevance,
                               rtol=1e-6, atol=1e-8)


@pytest.mark.usefixtures("float64_norms")
def test_llama_with_grouped_query_sdpa_equals_repeated_keys(monkeypatch):
    """HuggingFace passes ``enable_gqa=True`` to sdpa where it can (no mask on CUDA, or
    ``TRANSFORMERS_SDPA_FORCE_GQA``) instead of repeating the keys and values: one explanation."""
    from transformers.integrations import sdpa_attention

    inputs, rule = _batch(), composites.AttnLRP(epsilon=0.0)
    repeated = lrpfx.compile(_make("llama", "sdpa"), rule, example_inputs=inputs)(**inputs)
    monkeypatch.setattr(sdpa_attention, "use_gqa_in_sdpa", lambda *args: True)
    grouped = lrpfx.compile(_make("llama", "sdpa"), rule, example_inputs=inputs)
    assert "repeat_interleave" in grouped.program.code
    torch.testing.assert_close(grouped(**inputs).relevance, repeated.relevance, rtol=1e-12,
                               atol=1e-14)
