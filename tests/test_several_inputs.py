"""Models with several inputs (positional or keyword), the explained one named or chosen, the
others passed through; token ids explained at their embeddings; value dependence (``CARRIES``):
what is computed from the other inputs alone carries no relevance."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx import composites, meta


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x, scale, flag=None):
        return self.fc(x) * scale


class Fixed(nn.Module):
    """``Scaled`` with its scale a constant: the reference for explaining ``x``."""

    def __init__(self, model: Scaled, scale: torch.Tensor) -> None:
        super().__init__()
        self.fc = model.fc
        self.register_buffer("scale", scale)

    def forward(self, x):
        return self.fc(x) * self.scale


class Tokens(nn.Module):
    """Token and position embeddings, a masked mean, a classifier (batch, classes)."""

    def __init__(self, vocab: int = 11, hidden: int = 5, length: int = 6) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, hidden)
        self.positions = nn.Embedding(length, hidden)
        self.fc = nn.Linear(hidden, 3, bias=False)

    def embed(self, input_ids):
        return self.tokens(input_ids)

    def forward(self, input_ids, attention_mask):
        return self.classify(self.embed(input_ids), attention_mask)

    def classify(self, embeddings, attention_mask):
        h = embeddings + self.positions(torch.arange(embeddings.shape[1]))
        h = torch.tanh(h) * attention_mask.unsqueeze(-1)
        return self.fc(h.sum(1))


class FromEmbeddings(nn.Module):
    """``Tokens`` from its embedding output: the reference for explaining token ids."""

    def __init__(self, model: Tokens, attention_mask: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mask", attention_mask)

    def forward(self, embeddings):
        return self.model.classify(embeddings, self.mask)


def _scaled() -> tuple[Scaled, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return Scaled().eval(), torch.randn(2, 4), torch.rand(2, 1) + 0.5


def test_keyword_inputs_explain_the_first_floating_point_one_as_with_the_other_fixed():
    model, x, scale = _scaled()
    explainer = lrpfx.compile(model, "epsilon-plus", example_inputs={"x": x, "scale": scale})
    out = explainer(x=x, scale=scale, target=1)
    torch.testing.assert_close(out.output, model(x, scale), rtol=0, atol=0)
    expected = lrpfx.compile(Fixed(model, scale).eval(), "epsilon-plus")(x, target=1)
    torch.testing.assert_close(out.relevance, expected.relevance, rtol=1e-12, atol=1e-14)
    assert out.embedding is None
    output, relevance = out  # still a pair
    assert relevance.shape == x.shape


def test_positional_inputs_and_a_positional_target():
    model, x, scale = _scaled()
    explainer = lrpfx.compile(model, "epsilon-plus", example_inputs=(x, scale))
    by_name = explainer(x=x, scale=scale, target=2)
    torch.testing.assert_close(explainer(x, scale, 2).relevance, by_name.relevance,
                               rtol=0, atol=0)
    torch.testing.assert_close(explainer(x, scale=scale, target=2).relevance, by_name.relevance,
                               rtol=0, atol=0)


def test_explain_names_the_input_whose_relevance_is_returned():
    model, x, scale = _scaled()
    explainer = lrpfx.compile(model, composites.EpsilonOnly(epsilon=1e-12),
                              example_inputs=(x, scale), explain="scale")
    out = explainer(x, scale, target=0)
    assert out.relevance.shape == scale.shape
    # the product of a computed scale and a constant fc(x): all relevance to the scale
    torch.testing.assert_close(out.relevance[:, 0], out.output[:, 0], rtol=1e-9, atol=1e-12)


def test_explain_without_example_inputs_keeps_both_inputs():
    model, x, scale = _scaled()
    explainer = lrpfx.compile(model, "epsilon-plus", explain="x")
    expected = lrpfx.compile(Fixed(model, scale).eval(), "epsilon-plus")(x, target=1).relevance
    torch.testing.assert_close(explainer(x, scale, target=1).relevance, expected,
                               rtol=1e-12, atol=1e-14)


def test_misnamed_missing_and_unknown_inputs_are_refused_by_name():
    model, x, scale = _scaled()
    with pytest.raises(ValueError, match="explain='y' is not an input of the model; its inputs "
                                         "are x, scale"):
        lrpfx.compile(model, "epsilon-plus", example_inputs=(x, scale), explain="y")
    explainer = lrpfx.compile(model, "epsilon-plus", example_inputs={"x": x, "scale": scale})
    with pytest.raises(TypeError, match="needs the input\\(s\\) scale"):
        explainer(x=x, target=1)
    with pytest.raises(TypeError, match="unknown input 'flag'.*inputs are x, scale"):
        explainer(x=x, scale=scale, flag=scale)
    with pytest.raises(TypeError, match="input 'scale' must be a torch.Tensor"):
        explainer(x=x, scale=2.0)
    with pytest.raises(ValueError, match="input 'x' has shape \\(3, 4\\).*static"):
        explainer(x=torch.randn(3, 4), scale=scale)


def _tokens() -> tuple[Tokens, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    ids = torch.randint(0, 11, (3, 6))
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    return Tokens().eval(), ids, mask


def test_token_ids_are_explained_at_their_embeddings_and_reported_per_token():
    model, ids, mask = _tokens()
    explainer = lrpfx.compile(model, "epsilon-plus",
                              example_inputs={"input_ids": ids, "attention_mask": mask})
    out = explainer(input_ids=ids, attention_mask=mask, target=2)
    torch.testing.assert_close(out.output, model(ids, mask), rtol=0, atol=0)
    assert out.relevance.shape == ids.shape and out.embedding is not None
    assert out.embedding.shape == (*ids.shape, 5)
    torch.testing.assert_close(out.relevance, out.embedding.sum(-1), rtol=0, atol=0)
    embeddings = model.embed(ids)
    reference = lrpfx.compile(FromEmbeddings(model, mask).eval(), "epsilon-plus")
    expected = reference(embeddings, target=2)
    torch.testing.assert_close(out.embedding, expected.relevance, rtol=1e-12, atol=1e-14)
    assert out.relevance[1, 4:].abs().max() == 0 and out.relevance[2, 2:].abs().max() == 0
    assert out.relevance[2, :2].abs().min() > 0  # not zeros compared


def test_masks_and_positions_carry_no_relevance():
    """The value-dependence facts: only what is computed from the ids' embeddings carries."""
    model, ids, mask = _tokens()
    explainer = lrpfx.compile(model, "epsilon-plus", example_inputs=(ids, mask))
    carrying = {n.name for n in explainer.graph_module.graph.nodes if n.meta.get(meta.CARRIES)}
    marks = {n.name: n.meta.get(meta.EXPLAINED) for n in explainer.graph_module.graph.nodes
             if n.meta.get(meta.EXPLAINED)}
    assert marks.pop("input_ids") == "tokens"
    assert list(marks.values()) == ["embedding"]  # the token lookup, not the positions'
    lookup = next(n for n in explainer.graph_module.graph.nodes if n.name in marks)
    assert lookup.meta[meta.PATH] == "tokens"
    assert not any("mask" in name or "unsqueeze" in name for name in carrying)
    assert "input_ids" not in carrying


def test_token_ids_out_of_the_table_are_refused():
    model, ids, mask = _tokens()
    explainer = lrpfx.compile(model, "epsilon-plus", example_inputs=(ids, mask))
    with pytest.raises(ValueError, match="token ids from 0 to 11; the embedding table has 11"):
        explainer(ids.clamp(max=0) + torch.eye(3, 6, dtype=torch.long) * 11, mask)
    with pytest.raises(TypeError, match="holds token ids and must be an integer tensor"):
        explainer(ids.double(), mask)


def test_one_input_explainers_keep_their_call():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    x = torch.randn(2, 4)
    explainer = lrpfx.compile(model, "epsilon-plus")
    torch.testing.assert_close(explainer(x, 1).relevance, explainer(x, target=1).relevance)
    torch.testing.assert_close(explainer(x=x, target=1).relevance,
                               explainer(x, target=1).relevance)
