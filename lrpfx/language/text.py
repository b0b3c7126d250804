"""Token heatmaps: a language model's token relevances as coloured text, in the terminal (rich)
and as a self-contained HTML page.

>>> out = explainer(input_ids=ids, attention_mask=mask)
>>> shown = token_heatmaps(tokenizer, ids, mask, out)        # one TokenHeatmap per sequence
>>> Console().print(rich_text(shown[0].tokens, shown[0].relevance))
>>> write_html("explanations.html", shown, title="gpt2 · attn-lrp")

Colours are the image heatmaps' ``bwr`` (``lrpfx.heatmap``): red for, blue against the target,
white for zero, each sequence normalized on its own (``±max|R|`` at full colour). Padding is
left out. Tokens are shown as they read in the decoded text (``Ġ``, ``▁`` and ``##`` become
spaces or nothing); a newline shows as ``↵`` before the break, a tab as ``→``.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.color import Color
from rich.style import Style
from rich.text import Text

from lrpfx.heatmap import colorize, normalize
from lrpfx.language.targets import last_positions

if TYPE_CHECKING:
    from lrpfx.explainer import Explanation

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class TokenHeatmap:
    """One explained sequence without its padding: the tokens as shown, one relevance each,
    and a caption naming the explained target and its logit."""

    tokens: tuple[str, ...]
    relevance: torch.Tensor  # (len(tokens),), float
    caption: str = ""


def colors(relevance: torch.Tensor) -> list[RGB]:
    """One background colour per token (0..255): ``bwr`` at ``R / (2 max|R|) + 0.5``."""
    values = relevance.detach().float().cpu().reshape(1, -1)
    if values.numel() == 0:
        return []
    rgb = colorize(normalize(values, symmetric=True)[0], "bwr")  # (3, n) in [0, 1]
    return [(int(r), int(g), int(b)) for r, g, b in (rgb * 255).round().T.tolist()]


def ink(background: RGB) -> RGB:
    """Black or white text, whichever contrasts more with ``background`` (relative luminance)."""
    r, g, b = background
    luminance = (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255
    return (0, 0, 0) if luminance > 0.45 else (255, 255, 255)


def visible(token: str) -> str:
    """The token as shown: a newline keeps its break after a ``↵``, a tab shows as ``→``, a
    carriage return as ``␍``."""
    return (token.replace("\r\n", "\n").replace("\r", "␍").replace("\n", "↵\n")
            .replace("\t", "→"))


def token_strings(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Each token as it reads in the decoded text, with its own leading space if any.

    Token ``i`` is what decoding ``ids[:i+1]`` adds to decoding ``ids[:i]``, so the sub-word
    markers of byte-level BPE (``Ġ``), SentencePiece (``▁``) and WordPiece (``##``) become what
    the tokenizer makes of them in context. A byte that is not the last of its character shows
    as it decodes alone (``�``), the last one as the whole character; a decoding that rewrites
    earlier text falls back to ``convert_tokens_to_string`` of the token alone.
    """
    ids = [int(i) for i in ids]
    raw = tokenizer.convert_ids_to_tokens(ids)
    shown: list[str] = []
    previous = ""
    for i, token in enumerate(raw):
        current = tokenizer.decode(ids[:i + 1], skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False)
        if current.endswith("\ufffd"):  # an incomplete character: wait for its last byte
            shown.append(tokenizer.convert_tokens_to_string([token]) or str(token))
            continue
        if current.startswith(previous):
            piece = current[len(previous):]
        else:
            piece = tokenizer.convert_tokens_to_string([token])
        shown.append(piece or str(token))
        previous = current
    return shown


def _kept(tokens: Sequence[str], relevance: torch.Tensor,
          attention_mask: torch.Tensor | None) -> tuple[list[str], torch.Tensor]:
    """The tokens and relevances where the mask is set (all without a mask)."""
    r = relevance.detach().float().cpu().reshape(-1)
    if len(tokens) != len(r):
        raise ValueError(f"{len(tokens)} tokens but {len(r)} relevances")
    if attention_mask is None:
        return list(tokens), r
    keep = attention_mask.detach().cpu().reshape(-1).bool()
    return [t for t, k in zip(tokens, keep.tolist(), strict=True) if k], r[keep]


def rich_text(tokens: Sequence[str], relevance: torch.Tensor,
              attention_mask: torch.Tensor | None = None) -> Text:
    """The tokens on backgrounds coloured by their relevance, for a rich ``Console``; the
    tokens where ``attention_mask`` is 0 (padding) are left out."""
    kept, r = _kept(tokens, relevance, attention_mask)
    text = Text()
    for token, background in zip(kept, colors(r), strict=True):
        style = Style(color=Color.from_rgb(*ink(background)), bgcolor=Color.from_rgb(*background))
        text.append(visible(token), style=style)
    return text


def _token_name(tokenizer: Any, k: int) -> str:
    """A token quoted as it decodes alone, or its raw form when that is part of a character."""
    decoded = tokenizer.decode([k])
    return repr(decoded if "\ufffd" not in decoded else tokenizer.convert_ids_to_tokens(k))


def token_heatmaps(tokenizer: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                   out: Explanation, target: int | None = None, contrast: str | None = None,
                   labels: Mapping[int, str] | None = None) -> list[TokenHeatmap]:
    """One ``TokenHeatmap`` per sequence of an explained batch, padding left out.

    ``out.output`` is a causal LM's logits ``(batch, seq, vocab)``, explained at the last
    non-padding position (``lrpfx.language.NextToken``), or a classifier's ``(batch, classes)``;
    ``target`` is the explained token or class (None: the argmax), ``contrast`` is noted in
    the caption, ``labels`` names classes.
    """
    logits = out.output.detach().float().cpu()
    if logits.dim() == 3:
        mask = None if attention_mask is None else attention_mask.cpu()
        logits = logits[torch.arange(len(logits)), last_positions(logits, mask)]
    heatmaps = []
    for i, ids in enumerate(input_ids.cpu()):
        k = int(logits[i].argmax()) if target is None else target
        name = (_token_name(tokenizer, k) if out.output.dim() == 3
                else (labels or {}).get(k, str(k)))
        mask_i = None if attention_mask is None else attention_mask[i]
        tokens, r = _kept(token_strings(tokenizer, ids.tolist()), out.relevance[i], mask_i)
        versus = " against the mean logit" if contrast == "mean" else ""
        caption = (f"target {name} (id {k}), logit {float(logits[i, k]):.4g}{versus}; "
                   f"relevance sum {float(r.sum()):.4g}")
        heatmaps.append(TokenHeatmap(tuple(tokens), r, caption))
    return heatmaps


_STYLE = ("body{font-family:sans-serif;margin:2em;max-width:60em;color:#222}"
          "h1{font-size:1.2em}p.caption{margin:1.2em 0 .3em;font-size:.9em;color:#555}"
          "div.text{font-family:monospace;white-space:pre-wrap;line-height:1.7;"
          "border:1px solid #ddd;padding:.5em}"
          "span.t{border-radius:2px}div.legend{font-size:.85em;color:#555}"
          "span.bar{display:inline-block;width:12em;height:.9em;vertical-align:middle;"
          "margin:0 .5em;border:1px solid #ccc;"
          "background:linear-gradient(to right,#0000ff,#ffffff,#ff0000)}")


def _span(token: str, relevance: float, background: RGB) -> str:
    r, g, b = background
    fr, fg, fb = ink(background)
    return (f'<span class="t" title="{relevance:.4g}" style="background:rgb({r},{g},{b});'
            f'color:rgb({fr},{fg},{fb})">{html.escape(visible(token))}</span>')


def html_page(heatmaps: Sequence[TokenHeatmap], title: str = "lrpfx token relevance") -> str:
    """A self-contained HTML page (inline styles only): the title, a legend and one block per
    sequence under its caption; a token's relevance shows when the pointer rests on it."""
    blocks = []
    for heatmap in heatmaps:
        spans = "".join(_span(t, float(r), c) for t, r, c in zip(
            heatmap.tokens, heatmap.relevance.tolist(), colors(heatmap.relevance),
            strict=True))
        blocks.append(f'<p class="caption">{html.escape(heatmap.caption)}</p>\n'
                      f'<div class="text">{spans}</div>')
    legend = ('<div class="legend">against<span class="bar"></span>for the target '
              '(each text scaled to its own max |R|; white: 0)</div>')
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n{legend}\n" + "\n".join(blocks)
            + "\n</body>\n</html>\n")


def write_html(path: str | Path, heatmaps: Sequence[TokenHeatmap],
               title: str = "lrpfx token relevance") -> Path:
    """Write :func:`html_page` to ``path`` (UTF-8; parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html_page(heatmaps, title), encoding="utf-8")
    return path
