"""``lrpfx explain-text``: explain a HuggingFace language model on texts, as token heatmaps in
the terminal and in one self-contained HTML page.

    lrpfx explain-text gpt2 "The capital of France is"             # the predicted next token
    lrpfx explain-text ./my-llama --file prompts.txt --dtype bfloat16 --html out/llama.html
    lrpfx explain-text gpt2 "The capital of France is" --target " Paris" --contrast mean
    lrpfx explain-text ./bert-sst2 "a fine film" --task classification --target positive

All texts are padded on the right to the longest one, so one explainer (static shapes) serves
them all; a causal model's relevance does not see the padding, an encoder's masked attention
ignores it. A decoder classifier that finds its last token by ``config.pad_token_id`` and has
none gets one explainer per text length instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import lrpfx
from lrpfx.images import InputError
from lrpfx.language.targets import NextToken
from lrpfx.language.text import TokenHeatmap, rich_text, token_heatmaps, write_html

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}
TASKS = {"causal": "AutoModelForCausalLM", "classification": "AutoModelForSequenceClassification"}


def add_parsers(commands: Any) -> None:
    """Register ``explain-text`` on the subcommand parsers of the CLI."""
    parser = commands.add_parser("explain-text", help="token heatmaps of a HuggingFace "
                                 "language model on texts (terminal and HTML)")
    parser.add_argument("model", metavar="MODEL", help="HuggingFace model name or local folder")
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="texts to explain")
    parser.add_argument("--file", type=Path, metavar="LINES.txt",
                        help="more texts, one per line (empty lines "
                        "skipped)")
    parser.add_argument("--task", default="causal", choices=sorted(TASKS),
                        help="causal LM (next token) or sequence classification "
                             "(default: causal)")
    parser.add_argument("--rules", default="attn-lrp",
                        choices=("attn-lrp", "attn-lrp-gamma", "cp-lrp"),
                        help="composite preset (default: attn-lrp)")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES),
                        help="load the model in this dtype (default: float32)")
    parser.add_argument("--target", help="token (string or id) or class (name or index) to "
                        "explain (default: the predicted next token or class)")
    parser.add_argument("--contrast", choices=("mean",),
                        help="causal LMs: explain the target's logit minus the mean logit")
    parser.add_argument("--html", type=Path, default=Path("out/explanations.html"),
                        metavar="OUT.html",
                        help="HTML page to write (default: out/explanations.html)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="where the model runs (default: cpu)")


def read_texts(texts: list[str], file: Path | None) -> list[str]:
    """The texts given, then the non-empty lines of ``file``; at least one."""
    found = list(texts)
    if file is not None:
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"--file {file}: cannot read it as UTF-8 text "
                             f"({getattr(error, 'strerror', None) or error})") from None
        found += [line for line in lines if line.strip()]
    if not found:
        raise InputError("no text to explain: give TEXT arguments or --file with one per line")
    return found


def load(name: str, task: str = "causal", dtype: str = "float32") -> tuple[Any, Any]:
    """The tokenizer and the model (eval mode, in ``dtype``), by ``from_pretrained``."""
    try:
        import transformers
    except ImportError:
        raise InputError("explain-text needs transformers: pip install 'lrpfx[text]'") from None
    auto = getattr(transformers, TASKS[task])
    try:
        model = auto.from_pretrained(name, dtype=DTYPES[dtype])
        tokenizer = transformers.AutoTokenizer.from_pretrained(name)
    except Exception as error:  # the load boundary: missing, offline, unknown architecture
        message = " ".join(str(error).split())
        message = message if len(message) <= 300 else message[:297] + "..."
        raise InputError(f"cannot load {name!r} as a {task} model: "
                         f"{type(error).__name__}: {message}") from None
    return tokenizer, model.eval()


def parse_target(text: str | None, tokenizer: Any, model: Any, task: str) -> int | None:
    """``--target`` as a token id or class index (None: the prediction), checked."""
    if text is None:
        return None
    labels = {str(v): int(k) for k, v in (getattr(model.config, "id2label", None) or {}).items()}
    if text.lstrip("-").isdigit():
        k = int(text)
    elif task == "classification":
        if text not in labels:
            raise InputError(f"--target {text!r} is not a class of this model "
                             f"({', '.join(labels) or 'no names'}); give a name or an index")
        k = labels[text]
    else:
        k = _token_id(text, tokenizer)
    size = getattr(model.config, "vocab_size" if task == "causal" else "num_labels", None)
    if k < 0 or size is not None and k >= size:
        raise InputError(f"--target {text} is out of range: the model has {size} "
                         f"{'tokens' if task == 'causal' else 'classes'}")
    return k


def _token_id(text: str, tokenizer: Any) -> int:
    """A vocabulary entry (``Ġmat``), else a text that is one token (`` mat``)."""
    k = tokenizer.convert_tokens_to_ids(text)
    if isinstance(k, int) and (k != tokenizer.unk_token_id or text == tokenizer.unk_token):
        return k
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise InputError(f"--target {text!r} is {len(ids)} tokens "
                         f"({tokenizer.convert_ids_to_tokens(ids)}); give one token or its id")
    return int(ids[0])


def _can_pad(model: Any, task: str) -> bool:
    """Whether right padding leaves the explained logits alone (see the module docstring)."""
    return task == "causal" or getattr(model.config, "pad_token_id", None) is not None


def encode(tokenizer: Any, texts: list[str], pad: bool,
           pad_id: int = 0) -> list[dict[str, torch.Tensor]]:
    """Each text as a batch of one, ``input_ids`` and ``attention_mask``, right-padded with
    ``pad_id`` to the longest text when ``pad``."""
    ids = [list(tokenizer(text)["input_ids"]) for text in texts]
    longest = max(len(i) for i in ids)
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and longest > limit:
        raise InputError(f"a text is {longest} tokens long; the model takes at most {limit}")
    inputs = []
    for row in ids:
        length = longest if pad else len(row)
        padded = torch.full((1, length), pad_id, dtype=torch.long)
        padded[0, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask = torch.zeros(1, length, dtype=torch.long)
        mask[0, :len(row)] = 1
        inputs.append({"input_ids": padded, "attention_mask": mask})
    return inputs


def explain_texts(model: Any, tokenizer: Any, texts: list[str], rules: str = "attn-lrp",
                  task: str = "causal", target: int | None = None,
                  contrast: str | None = None, console: Console | None = None,
                  device: str = "cpu") -> list[TokenHeatmap]:
    """Explain every text (a progress bar on ``console``, each heatmap printed as it comes);
    explainers are compiled once per padded length."""
    console = console or Console()
    config = model.config
    pad_id = next((p for p in (getattr(config, "pad_token_id", None),
                               tokenizer.pad_token_id) if isinstance(p, int)), 0)
    inputs = encode(tokenizer, texts, _can_pad(model, task), pad_id)
    labels = getattr(config, "id2label", None) if task == "classification" else None
    relevance_dtype = _relevance_dtype(model)
    explainers: dict[int, lrpfx.Explainer] = {}
    heatmaps: list[TokenHeatmap] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        bar = progress.add_task("explaining", total=len(texts))
        for batch in inputs:
            batch = {k: v.to(device) for k, v in batch.items()}
            length = batch["input_ids"].shape[1]
            if length not in explainers:
                progress.update(bar, description=f"compiling ({length} tokens)")
                explainers[length] = lrpfx.compile(
                    model, rules, example_inputs=batch, frontend="export",
                    relevance_dtype=relevance_dtype)
                progress.update(bar, description="explaining")
            out = _explain(explainers[length], batch, target, contrast)
            shown = token_heatmaps(tokenizer, batch["input_ids"], batch["attention_mask"],
                                   out, target, contrast, labels)[0]
            progress.console.print(f"[dim]{escape(shown.caption)}[/]", highlight=False)
            progress.console.print(rich_text(shown.tokens, shown.relevance))
            heatmaps.append(shown)
            progress.advance(bar)
    return heatmaps


def _relevance_dtype(model: Any) -> torch.dtype | None:
    """float32 for a bfloat16 or float16 model (its relevance accumulated there), else None."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else None


def _explain(explainer: lrpfx.Explainer, batch: dict[str, torch.Tensor], target: int | None,
             contrast: str | None) -> lrpfx.Explanation:
    if contrast is None:
        return explainer(**batch, target=target)
    return explainer(**batch, output_relevance=NextToken(target, contrast="mean"))


def explain_text_command(args: argparse.Namespace, console: Console) -> int:
    """``lrpfx explain-text``: load, explain every text, print and write the HTML page."""
    texts = read_texts(args.texts, args.file)
    if args.contrast is not None and args.task != "causal":
        raise InputError("--contrast mean is for causal language models (--task causal)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available")
    if args.html.is_dir():
        raise InputError(f"--html {args.html} is a folder; give a file name")
    try:
        args.html.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"--html {args.html}: cannot create its folder "
                         f"({error.strerror or type(error).__name__})") from None
    tokenizer, model = load(args.model, args.task, args.dtype)
    model = model.to(args.device)
    target = parse_target(args.target, tokenizer, model, args.task)
    heatmaps = explain_texts(model, tokenizer, texts, args.rules, args.task, target,
                             args.contrast, console, args.device)
    title = f"{args.model} · {args.rules} · {args.dtype}"
    path = write_html(args.html, heatmaps, title)
    console.print(f"{len(heatmaps)} text(s) explained -> {escape(str(path))}", highlight=False,
                  soft_wrap=True)
    return 0
