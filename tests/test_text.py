"""Token heatmaps (``lrpfx.language.text``) and ``lrpfx explain-text``
(``lrpfx.language.command``): colours by sign and size, padding left out, sub-word markers
read as text, a self-contained HTML page with escaped tokens, and the command on tiny random
Llama, GPT-2 and BERT models saved with locally built tokenizers (nothing downloaded), whose
shown relevances equal a direct ``lrpfx.compile`` call's."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

import lrpfx
from lrpfx import cli
from lrpfx.language import command, text

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

CORPUS = ["the cat sat on the mat", "a <b> & c on the mat", "the dog ran\nhome",
          "x < y & z > w", "the cats sat on a mat"] * 4
TEXTS = ["the cat sat on the mat\nthe dog ran home", "a <b> & c"]


def bytelevel_tokenizer() -> object:
    """GPT-2's kind: byte-level BPE (``Ġ`` marks a leading space), trained on ``CORPUS``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok,
                                                eos_token="<|endoftext|>")


def metaspace_tokenizer() -> object:
    """SentencePiece's kind (``▁`` marks a leading space) with a BOS token, a fixed vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    words = ["<unk>", "<s>", "▁the", "▁cat", "▁sat", "▁<b>", "▁&"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>",
                                                bos_token="<s>")


def wordpiece_tokenizer() -> object:
    """BERT's kind (``##`` marks a continuation), with [CLS] and [SEP], a fixed vocabulary."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "##s", "sat", "on", "a", "mat",
             "<", "b", ">", "&", "c"]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]")


def _save(model: torch.nn.Module, tokenizer: object, folder: Path) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)  # type: ignore[attr-defined]
    return folder


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer = bytelevel_tokenizer()
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, bos_token_id=None, eos_token_id=0,
        pad_token_id=None))
    return _save(model, tokenizer, tmp_path_factory.mktemp("llama"))


# -- renderers -----------------------------------------------------------------------------------
def test_colours_are_red_for_blue_against_white_for_zero_scaled_per_sequence():
    assert text.colors(torch.tensor([2.0, -1.0, 0.0, 1.0])) == [
        (255, 0, 0), (128, 128, 255), (255, 255, 255), (255, 128, 128)]
    assert text.colors(torch.tensor([-4.0, 2.0])) == [(0, 0, 255), (255, 128, 128)]
    assert text.colors(torch.zeros(3)) == [(255, 255, 255)] * 3
    assert text.colors(torch.tensor([])) == []
    assert text.ink((255, 0, 0)) == text.ink((0, 0, 255)) == (255, 255, 255)
    assert text.ink((255, 255, 255)) == text.ink((255, 128, 128)) == (0, 0, 0)


def test_rich_text_skips_padding_and_colours_each_token():
    tokens = ["the", " cat", "\n", "sat", "<pad>", "<pad>"]
    relevance = torch.tensor([1.0, -1.0, 0.0, 0.5, 9.0, -9.0])
    mask = torch.tensor([1, 1, 1, 1, 0, 0])
    shown = text.rich_text(tokens, relevance, mask)
    assert shown.plain == "the cat↵\nsat"
    backgrounds = [span.style.bgcolor.triplet for span in shown.spans]  # type: ignore[union-attr]
    assert [tuple(b) for b in backgrounds] == [(255, 0, 0), (0, 0, 255), (255, 255, 255),
                                               (255, 128, 128)]
    assert text.rich_text(tokens, relevance).plain.endswith("<pad><pad>")
    with pytest.raises(ValueError, match="6 tokens but 2 relevances"):
        text.rich_text(tokens, torch.zeros(2))


@pytest.mark.parametrize(("make", "source", "expected"), [
    (bytelevel_tokenizer, "the cat\nsat <b>", None),
    (metaspace_tokenizer, "the cat sat <b> &", ["<s>", " the", " cat", " sat", " <b>", " &"]),
    (wordpiece_tokenizer, "the cats sat", ["[CLS]", " the", " cat", "s", " sat", " [SEP]"]),
], ids=["bytelevel", "metaspace", "wordpiece"])
def test_sub_word_markers_read_as_text(make, source, expected):
    tokenizer = make()
    ids = tokenizer(source)["input_ids"]
    raw = tokenizer.convert_ids_to_tokens(ids)
    assert any(marker in "".join(raw) for marker in ("Ġ", "▁", "##"))
    shown = text.token_strings(tokenizer, ids)
    assert len(shown) == len(ids)
    assert not any(marker in piece for piece in shown for marker in ("Ġ", "▁", "##"))
    assert "".join(shown) == tokenizer.decode(ids, clean_up_tokenization_spaces=False)
    if expected is not None:
        assert shown == expected
    else:
        assert "".join(shown) == source and "\n" in shown and " cat" in shown


def test_a_character_split_into_bytes_shows_whole_on_its_last_byte():
    tokenizer = bytelevel_tokenizer()
    ids = tokenizer("hé")["input_ids"]
    assert len(ids) == 3  # h, then the two bytes of é
    assert text.token_strings(tokenizer, ids) == ["h", "\ufffd", "é"]


def test_html_is_self_contained_escaped_and_one_block_per_sequence(tmp_path):
    heatmaps = [text.TokenHeatmap(("a", " <b>", " &", "\n", "c"),
                                  torch.tensor([1.0, -2.0, 0.5, 0.0, 0.25]), "target 'x' <1>"),
                text.TokenHeatmap(("z",), torch.tensor([3.0]), "second")]
    path = text.write_html(tmp_path / "sub" / "t.html", heatmaps, title="model <m> & rules")
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "http" not in page and "<script" not in page and "<link" not in page
    assert "<title>model &lt;m&gt; &amp; rules</title>" in page
    assert "> &lt;b&gt;</span>" in page and "> &amp;</span>" in page and "↵\n</span>" in page
    assert "target &#x27;x&#x27; &lt;1&gt;" in page
    assert page.count('<div class="text">') == 2 and 'class="legend"' in page
    assert 'title="-2" style="background:rgb(0,0,255);color:rgb(255,255,255)"' in page
    assert page.count("<span") == page.count("</span>")
    assert page.count("<div") == page.count("</div>")


def test_token_heatmaps_explain_the_last_real_position():
    tokenizer = bytelevel_tokenizer()
    ids = torch.tensor([tokenizer("the cat sat")["input_ids"] + [0, 0]])
    n = ids.shape[1]
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0
    logits = torch.zeros(1, n, len(tokenizer))
    logits[0, n - 3, 7] = 2.5  # the last real position predicts token 7
    logits[0, n - 1, 9] = 9.0  # padding: ignored
    relevance = torch.arange(float(n)).unsqueeze(0)
    out = lrpfx.Explanation(logits, relevance)
    [shown] = text.token_heatmaps(tokenizer, ids, mask, out)
    assert "".join(shown.tokens) == "the cat sat"
    torch.testing.assert_close(shown.relevance, relevance[0, :n - 2].float())
    assert shown.caption.startswith(f"target {tokenizer.decode([7])!r} (id 7), logit 2.5;")
    [versus] = text.token_heatmaps(tokenizer, ids, mask, out, target=3, contrast="mean")
    assert "(id 3), logit 0 against the mean logit" in versus.caption
    classes = lrpfx.Explanation(torch.tensor([[0.5, 1.5]]), relevance)
    [label] = text.token_heatmaps(tokenizer, ids, None, classes, labels={1: "pos"})
    assert label.caption.startswith("target pos (id 1), logit 1.5") and len(label.tokens) == n


# -- the command ---------------------------------------------------------------------------------
def _run(argv: list[str], monkeypatch: pytest.MonkeyPatch
         ) -> tuple[int, str, list[text.TokenHeatmap]]:
    """``lrpfx <argv>``: the exit status, the printed text and the heatmaps written."""
    written: list[text.TokenHeatmap] = []
    real = command.write_html

    def spy(path, heatmaps, title):
        written.extend(heatmaps)
        return real(path, heatmaps, title)

    monkeypatch.setattr(command, "write_html", spy)
    console = Console(record=True, width=200, color_system=None)
    status = cli.main(argv, console)
    return status, console.export_text(), written


def test_explain_text_shows_what_a_direct_compile_computes(llama_dir, tmp_path, monkeypatch):
    html = tmp_path / "llama.html"
    status, printed, shown = _run(["explain-text", str(llama_dir), *TEXTS, "--dtype", "float64",
                                   "--html", str(html)], monkeypatch)
    assert status == 0, printed
    assert f"2 text(s) explained -> {html}" in printed
    tokenizer, model = command.load(str(llama_dir), dtype="float64")
    assert model.dtype == torch.float64
    tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")  # right padding, as the command
    explainer = lrpfx.compile(model, "attn-lrp", example_inputs=dict(batch))
    out = explainer(**batch)
    lengths = batch["attention_mask"].sum(1).tolist()
    assert lengths[0] != lengths[1]
    for heatmap, relevance, length, source in zip(shown, out.relevance, lengths, TEXTS,
                                                  strict=True):
        assert "".join(heatmap.tokens) == source and len(heatmap.tokens) == length
        torch.testing.assert_close(heatmap.relevance, relevance[:length].float(), rtol=1e-5,
                                   atol=1e-6 * relevance.abs().max().item())
        assert heatmap.caption in printed
    predicted = out.output[1, lengths[1] - 1].argmax().item()
    assert f"(id {predicted})" in shown[1].caption
    assert "the cat sat on the mat" in printed and "a <b> & c" in printed
    page = html.read_text(encoding="utf-8")
    assert "http" not in page and "<script" not in page and "<link" not in page
    assert "&lt;" in page and "&gt;" in page and "&amp;" in page and "<b>" not in page


def test_explain_text_gpt2_file_target_and_contrast(tmp_path, monkeypatch):
    tokenizer = bytelevel_tokenizer()
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=4, n_positions=32,
        bos_token_id=0, eos_token_id=0))
    folder = _save(model, tokenizer, tmp_path / "gpt2")
    lines = tmp_path / "lines.txt"
    lines.write_text("the cat sat on the\n\nthe dog ran\n", encoding="utf-8")
    mat = tokenizer.convert_tokens_to_ids("Ġmat")
    assert tokenizer.encode(" mat") == [mat]
    status, printed, shown = _run(["explain-text", str(folder), "--file", str(lines),
                                   "--target", " mat", "--contrast", "mean", "--html",
                                   str(tmp_path / "g.html")], monkeypatch)
    assert status == 0, printed
    assert [("".join(h.tokens)) for h in shown] == ["the cat sat on the", "the dog ran"]
    assert all(f"target ' mat' (id {mat})" in h.caption and "against the mean logit"
               in h.caption for h in shown)
    assert all(float(h.relevance.abs().max()) > 0 for h in shown)


def test_explain_text_classifies_with_a_bert_model(tmp_path, monkeypatch):
    tokenizer = wordpiece_tokenizer()
    model = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=32, num_labels=2,
        id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1}))
    folder = _save(model, tokenizer, tmp_path / "bert")
    status, printed, shown = _run(["explain-text", str(folder), "the cats sat", "a <b> & c",
                                   "--task", "classification", "--target", "pos", "--html",
                                   str(tmp_path / "b.html")], monkeypatch)
    assert status == 0, printed
    assert [h.tokens for h in shown] == [("[CLS]", " the", " cat", "s", " sat", " [SEP]"),
                                         ("[CLS]", " a", " <", " b", " >", " &", " c", " [SEP]")]
    assert all(h.caption.startswith("target pos (id 1)") for h in shown)


def test_explain_text_in_bfloat16_accumulates_the_relevance_in_float32(llama_dir, tmp_path,
                                                                        monkeypatch):
    status, printed, shown = _run(["explain-text", str(llama_dir), *TEXTS, "--dtype",
                                   "bfloat16", "--html", str(tmp_path / "l.html")], monkeypatch)
    assert status == 0, printed
    tokenizer, model = command.load(str(llama_dir), dtype="float64")
    tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    exact = lrpfx.compile(model, "attn-lrp", example_inputs=dict(batch))(**batch).relevance
    for heatmap, relevance in zip(shown, exact, strict=True):  # bfloat16's forward, not float64's
        assert torch.isfinite(heatmap.relevance).all()
        expected = relevance[:len(heatmap.relevance)].float()
        assert (heatmap.relevance - expected).norm() < 0.1 * expected.norm()


def test_explain_text_classifies_with_a_decoder(tmp_path, monkeypatch):
    tokenizer = bytelevel_tokenizer()
    model = transformers.GPT2ForSequenceClassification(transformers.GPT2Config(
        vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=4, n_positions=32, num_labels=2,
        bos_token_id=0, eos_token_id=0, pad_token_id=0))
    folder = _save(model, tokenizer, tmp_path / "gpt2-classifier")
    status, printed, shown = _run(["explain-text", str(folder), "the cat sat", "the dog",
                                   "--task", "classification", "--html",
                                   str(tmp_path / "c.html")], monkeypatch)
    assert status == 0, printed
    assert [("".join(h.tokens)) for h in shown] == ["the cat sat", "the dog"]
    assert all(float(h.relevance.abs().max()) > 0 for h in shown)


@pytest.mark.parametrize(("argv", "message"), [
    ([], "no text to explain"),
    (["a cat", "--contrast", "mean", "--task", "classification"], "--contrast mean is for"),
    (["a cat", "--target", "the cat sat"], "--target 'the cat sat' is"),
    (["a cat", "--target", "100000"], "--target 100000 is out of range"),
])
def test_explain_text_refuses_unusable_arguments(llama_dir, tmp_path, monkeypatch, argv,
                                                 message):
    html = tmp_path / "never.html"
    status, printed, _ = _run(["explain-text", str(llama_dir), *argv, "--html", str(html)],
                              monkeypatch)
    assert status == 2 and message in printed and "Traceback" not in printed
    assert not html.exists()


def test_explain_text_says_when_the_model_cannot_be_loaded(tmp_path, monkeypatch):
    html = ["--html", str(tmp_path / "never.html")]
    status, printed, _ = _run(["explain-text", str(tmp_path), "a cat", *html], monkeypatch)
    assert status == 2 and f"cannot load '{tmp_path}' as a causal model" in printed
    monkeypatch.setitem(sys.modules, "transformers", None)  # not installed
    status, printed, _ = _run(["explain-text", str(tmp_path), "a cat", *html], monkeypatch)
    assert status == 2 and "explain-text needs transformers: pip install 'lrpfx[text]'" in printed
