"""Targets for sequences (``lrpfx.language.targets``): the predicted next token at the last
non-padding position by default, a given token (one per sample), a contrast against the mean
logit or another token, padding without relevance."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx.language import NextToken, last_positions

VOCAB, LENGTH = 13, 6


class TinyLM(nn.Module):
    """Token embeddings, a causal running mean over the unmasked tokens, logits per position."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8)
        self.head = nn.Linear(8, VOCAB, bias=False)
        causal = torch.ones(LENGTH, LENGTH).tril()
        self.register_buffer("causal", causal / causal.sum(1, keepdim=True))

    def forward(self, input_ids, attention_mask):
        h = torch.tanh(self.embed(input_ids)) * attention_mask.unsqueeze(-1)
        return self.head(self.causal @ h)


@pytest.fixture(scope="module")
def lm() -> tuple[TinyLM, dict[str, torch.Tensor], lrpfx.Explainer]:
    torch.manual_seed(0)
    model = TinyLM().double().eval()
    mask = torch.ones(3, LENGTH, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    inputs = {"input_ids": torch.randint(0, VOCAB, (3, LENGTH)), "attention_mask": mask}
    return model, inputs, lrpfx.compile(model, "epsilon-plus", example_inputs=inputs)


def _by_hand(logits: torch.Tensor, positions: list[int], tokens: list[int]) -> torch.Tensor:
    seed = torch.zeros_like(logits)
    for i, (p, t) in enumerate(zip(positions, tokens, strict=True)):
        seed[i, p, t] = logits[i, p, t]
    return seed


def test_last_positions_skip_padding_on_either_side():
    logits = torch.zeros(3, 5, 2)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 1, 1, 1]])
    assert last_positions(logits, mask).tolist() == [4, 2, 4]
    assert last_positions(logits, None).tolist() == [4, 4, 4]


def test_the_default_is_the_predicted_next_token_at_the_last_real_position(lm):
    model, inputs, explainer = lm
    out = explainer(**inputs)
    logits = model(**inputs).detach()
    positions = [5, 3, 1]
    tokens = [int(logits[i, p].argmax()) for i, p in enumerate(positions)]
    expected = explainer(**inputs, output_relevance=_by_hand(logits, positions, tokens))
    torch.testing.assert_close(out.relevance, expected.relevance, rtol=0, atol=0)
    assert out.relevance[1, 4:].abs().max() == 0 and out.relevance[2, 2:].abs().max() == 0
    assert out.relevance[2, :2].abs().min() > 0  # not zeros compared


def test_a_given_token_one_per_sample_or_for_all(lm):
    model, inputs, explainer = lm
    logits = model(**inputs).detach()
    positions = [5, 3, 1]
    per_sample = explainer(**inputs, target=torch.tensor([1, 2, 3]))
    expected = explainer(**inputs, output_relevance=_by_hand(logits, positions, [1, 2, 3]))
    torch.testing.assert_close(per_sample.relevance, expected.relevance, rtol=0, atol=0)
    for_all = explainer(**inputs, target=4)
    expected = explainer(**inputs, output_relevance=_by_hand(logits, positions, [4, 4, 4]))
    torch.testing.assert_close(for_all.relevance, expected.relevance, rtol=0, atol=0)
    assert per_sample.relevance.sum(1).tolist() == pytest.approx(
        [float(logits[i, p, t]) for i, p, t in zip(range(3), positions, [1, 2, 3],
                                                     strict=True)], rel=1e-4)


def test_contrasts_are_differences_of_explanations(lm):
    _, inputs, explainer = lm

    def relevance(target: NextToken) -> torch.Tensor:
        return explainer(**inputs, output_relevance=target).relevance

    against_other = relevance(NextToken(1, contrast=2))
    torch.testing.assert_close(against_other, relevance(NextToken(1)) - relevance(NextToken(2)),
                               rtol=1e-10, atol=1e-12)
    against_mean = relevance(NextToken(1, contrast="mean"))
    mean = sum(relevance(NextToken(t)) for t in range(VOCAB)) / VOCAB
    torch.testing.assert_close(against_mean, relevance(NextToken(1)) - mean,
                               rtol=1e-10, atol=1e-12)
    at_first = relevance(NextToken(1, position=0))
    assert at_first[:, 1:].abs().max() == 0  # a causal model: nothing after the position


def test_a_sequence_target_on_a_classifier_is_refused():
    with pytest.raises(ValueError, match="NextToken explains logits of shape"):
        NextToken().relevance(torch.zeros(2, 3))
