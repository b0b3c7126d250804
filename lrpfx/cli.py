"""The ``lrpfx`` command line: explain image folders, show a model's relevance program, run the
digits demo.

    lrpfx explain photos/ --arch vgg16 --out heatmaps/      # one heatmap PNG per image
    lrpfx explain photos/ --arch deeplabv3_resnet50 --region 15  # a class's predicted pixels
    torchrun --nproc-per-node 4 -m lrpfx explain photos/ --store run/   # a dataset store
    lrpfx grid run/ 17                                      # a concept's reference regions
    lrpfx show --arch resnet50 --rules epsilon-plus-flat    # the annotated graph
    lrpfx demo                                              # the digits main job
    lrpfx evaluate [photos/ --arch vgg16]                   # presets by faithfulness
    lrpfx tune                                              # a rule per layer group
    lrpfx explain-text gpt2 "The capital of France is"      # token heatmaps, terminal + HTML

Exit status: 0 when everything was explained, 1 when some images could not be, 2 for unusable
arguments (a missing path, an unknown model, a weight file that does not fit).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import lrpfx
from lrpfx import cli_region, composites, demo, filters, guard, heatmap
from lrpfx.dataset import command as dataset_command
from lrpfx.errors import LrpfxError
from lrpfx.evaluation import command as evaluation_command
from lrpfx.images import (
    IMAGE_SUFFIXES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    InputError,
    LoadedModel,
    find_images,
    load_image,
    load_model,
    pixel_bounds,
    preprocess,
)
from lrpfx.language import command as language_command

STYLES = ("heatmap", "overlay", "pair")


def _say(console: Console, text: str) -> None:
    """One message, never re-wrapped (a one-line error stays one line), markup allowed."""
    console.print(text, highlight=False, soft_wrap=True)


def composite_for(name: str, top_k: float | None = None) -> composites.Composite:
    """A preset by name for ImageNet-normalized inputs (zᴮ gets the normalized pixel bounds)."""
    if name == "epsilon-gamma-box":
        low, high = pixel_bounds()
        composite: composites.Composite = composites.EpsilonGammaBox(low=low, high=high)
    else:
        composite = composites.resolve(name)
    return filters.Filtered(composite, top_k) if top_k else composite


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", default="vgg16",
                        help="torchvision model name (vgg16, resnet50, ...) or module:factory "
                             "(default: vgg16)")
    parser.add_argument("--weights", type=Path, help="state dict to load into the model")
    parser.add_argument("--rules", default="epsilon-gamma-box", choices=sorted(composites.PRESETS),
                        help="composite preset (default: epsilon-gamma-box)")
    parser.add_argument("--maxpool", default="avg", choices=("avg", "wta"),
                        help="relevance through max-pools: as average pools or winner-takes-all")
    parser.add_argument("--top-k", type=float, metavar="PERCENT",
                        help="relevance filter: keep the top PERCENT %% at every layer "
                             "(sharper, not conservative)")
    parser.add_argument("--size", type=int, default=224, help="input crop size (default: 224)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lrpfx", description="Layer-wise Relevance "
                                     "Propagation for PyTorch models, compiled with torch.fx.")
    commands = parser.add_subparsers(dest="command", required=True)
    explain = commands.add_parser("explain", help="write a heatmap PNG for every image")
    explain.add_argument("paths", nargs="+", metavar="IMAGES_OR_FOLDER")
    _common(explain)
    explain.add_argument("--target", default="pred",
                         help="class index to explain, or 'pred' for the predicted class")
    explain.add_argument("--region", type=int, metavar="CLASS",
                         help="segmentation models: explain CLASS over the pixels predicted "
                              "as it (lrpfx.targets.Region)")
    explain.add_argument("--out", type=Path, default=Path("out/heatmaps"), help="output folder")
    explain.add_argument("--batch-size", type=int, default=8)
    explain.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    explain.add_argument("--style", default="heatmap", choices=STYLES,
                         help="heatmap alone, over the image, or image and heatmap side by side")
    explain.add_argument("--cmap", default="bwr", choices=sorted(heatmap.COLORMAPS))
    explain.add_argument("--no-download", action="store_true",
                         help="do not try to download pretrained weights")
    dataset_command.add_options(explain)
    show = commands.add_parser("show", help="print the annotated graph of a model")
    _common(show)
    commands.add_parser("demo", help="run the digits demo (lrpfx.demo); further "
                        "options (--epochs, --out) go to it")
    evaluation_command.add_parsers(commands)
    dataset_command.add_parsers(commands)
    language_command.add_parsers(commands)
    return parser


def _target(text: str) -> int | None:
    if text == "pred":
        return None
    try:
        return int(text)
    except ValueError:
        raise InputError(f"--target must be a class index or 'pred', got {text!r}") from None


def _output_names(images: list[Path], out: Path) -> dict[Path, Path]:
    """One PNG per image: its name, made unique with the parent folder where names clash."""
    names: dict[Path, Path] = {}
    taken: set[Path] = set()
    for image in images:
        candidate = out / f"{image.stem}.png"
        if candidate in taken:
            candidate = out / f"{image.parent.name}_{image.stem}.png"
        k = 1
        while candidate in taken:
            k += 1
            candidate = out / f"{image.stem}_{k}.png"
        taken.add(candidate)
        names[image] = candidate
    return names


def _picture(x: torch.Tensor, relevance: torch.Tensor, style: str, cmap: str) -> torch.Tensor:
    """The PNG content for one batch: ``(N, 3, H, W')``."""
    images = heatmap.to_image(x, IMAGENET_MEAN, IMAGENET_STD)
    if style == "overlay":
        return heatmap.overlay(images, relevance, cmap)
    heat = heatmap.heatmap(relevance, cmap)
    return torch.cat([images, heat], dim=-1) if style == "pair" else heat


def _describe(k: int, categories: list[str] | None) -> str:
    return f"{k} {categories[k]}" if categories and 0 <= k < len(categories) else str(k)


def _explain_batch(explainer: lrpfx.Explainer, batch: list[tuple[Path, torch.Tensor]],
                   args: argparse.Namespace, loaded: LoadedModel, names: dict[Path, Path],
                   console: Console) -> None:
    x = torch.stack([t for _, t in batch]).to(args.device)
    if args.region is not None:
        return cli_region.explain_batch(explainer, x, [p for p, _ in batch], args, names,
                                        console, _picture)
    target = _target(args.target)
    out = _explain_padded(explainer, x, target)
    explained = out.output.argmax(1) if target is None else torch.full((len(x),), target)
    pictures = _picture(x.cpu(), out.relevance.cpu(), args.style, args.cmap)
    for (path, _), picture, logits, k, r in zip(batch, pictures, out.output, explained,
                                                out.relevance, strict=True):
        heatmap.save_png(picture, names[path])
        predicted = _describe(int(logits.argmax()), loaded.categories)
        line = (f"{escape(str(path))}: predicted [bold]{escape(predicted)}[/]"
                f" (logit {logits.max():.3g}); explained {int(k)}: relevance sum "
                f"{r.sum():.4g} of logit {logits[int(k)]:.4g} -> {escape(str(names[path]))}")
        _say(console, line)


def _explain_padded(explainer: lrpfx.Explainer, x: torch.Tensor,
                    target: int | None) -> lrpfx.Explanation:
    """``explainer(x)``; an explainer with static shapes gets the last, smaller batch padded
    with zero images, whose explanations are dropped."""
    shape = explainer.static_shape
    if shape is None or len(x) == shape[0]:
        return explainer(x, target=target)
    padded = torch.cat([x, x.new_zeros(shape[0] - len(x), *x.shape[1:])])
    out = explainer(padded, target=target)
    return lrpfx.Explanation(out.output[:len(x)], out.relevance[:len(x)])


def check_target(target: int | None, explainer: lrpfx.Explainer,
                  args: argparse.Namespace) -> None:
    """An explicit ``--target`` must be one of the model's classes (one forward tells)."""
    if target is None:
        return
    with torch.no_grad():
        shape = explainer.static_shape or (1, 3, args.size, args.size)
        x = torch.zeros(shape, device=args.device, dtype=torch.float32)
        classes = explainer.graph_module(x).shape[1]
    if not 0 <= target < classes:
        raise InputError(f"--target {target} is not a class of this model (0..{classes - 1})")


def _load(args: argparse.Namespace, console: Console, download: bool) -> LoadedModel:
    loaded = load_model(args.arch, args.weights, download=download)
    style = "bold red" if loaded.random else "green"
    note = (" - predictions and heatmaps are meaningless; pass --weights PATH"
            if loaded.random else "")
    _say(console, f"{args.arch}: weights [{style}]{escape(loaded.weights)}[/]{note}")
    return loaded


def _compile(args: argparse.Namespace, model: torch.nn.Module,
             batch: int = 1) -> lrpfx.Explainer:
    """The explainer, in float32 as the images (the model itself is left as it is). A model
    that needs static shapes (Swin) is compiled for ``batch`` images of ``--size``."""
    options = {"maxpool": args.maxpool, "strip_softmax": True}
    composite = composite_for(args.rules, args.top_k)
    try:
        explainer = lrpfx.compile(model, composite, **options)  # type: ignore[arg-type]
    except lrpfx.ExampleInputsNeededError:
        example = torch.zeros(batch, 3, args.size, args.size)
        explainer = lrpfx.compile(model, composite, example_inputs=example,
                                  **options)  # type: ignore[arg-type]
    return explainer.float()


def _check_options(args: argparse.Namespace) -> None:
    """Option values argparse's types let through: one ``InputError`` naming the option."""
    if args.size < 1:
        raise InputError(f"--size must be a positive number of pixels, got {args.size}")
    if args.top_k is not None and not 0 < args.top_k <= 100:
        raise InputError(f"--top-k is a percentage: more than 0 and at most 100, got "
                         f"{args.top_k:g}")
    if getattr(args, "batch_size", 1) < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    out = getattr(args, "out", None)
    if out is not None:
        if out.exists() and not out.is_dir():
            raise InputError(f"--out {out} is a file; give a folder (it is created if needed)")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InputError(f"--out {out}: cannot create the folder "
                             f"({error.strerror or type(error).__name__})") from None


def _check_input(explainer: lrpfx.Explainer, args: argparse.Namespace) -> None:
    """The model must take a batch of ``--size`` RGB images: checked once, before the work."""
    shape = explainer.static_shape or (1, 3, args.size, args.size)
    x = torch.zeros(shape, device=args.device, dtype=torch.float32)
    try:
        guard.check_x(explainer.program, explainer.graph_module, x)
    except (TypeError, ValueError) as error:
        raise InputError(f"--arch {args.arch} does not take {args.size}x{args.size} RGB images "
                         f"(--size {args.size}): {error}") from None


def explain_command(args: argparse.Namespace, console: Console) -> int:
    """``lrpfx explain``: every image through the explainer, one PNG each; with ``--store``,
    into a dataset store, on every process of a ``torchrun`` job (``lrpfx.dataset.command``)."""
    if args.store is not None:
        console = dataset_command.setup(args, console)
    else:
        dataset_command.check_unused(args)
    _check_options(args)
    images, others = find_images(args.paths)
    _target(args.target)  # a malformed target fails before any work
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available")
    for other in others:
        _say(console, f"[yellow]ignored[/] {escape(str(other))}: not an image file name "
                      f"({' '.join(sorted(IMAGE_SUFFIXES))})")
    if not images:
        raise InputError(f"no images in {', '.join(map(str, args.paths))}")
    loaded = _load(args, console, download=not args.no_download)
    explainer = (dataset_command.compile_concepts(args, loaded.model, composite_for(
        args.rules, args.top_k)) if args.store and args.layer
        else _compile(args, loaded.model, args.batch_size)).to(args.device)
    _check_input(explainer, args)
    if args.region is None:
        check_target(_target(args.target), explainer, args)
    if args.store is not None:
        return dataset_command.run(args, console, explainer, images, loaded.weights)
    names = _output_names(images, args.out)
    failed = _run(explainer, images, names, args, loaded, console)
    done = len(images) - failed
    _say(console, f"{done} of {len(images)} image(s) explained into {escape(str(args.out))}"
                  + (f"; [red]{failed} failed[/]" if failed else ""))
    return 1 if failed else 0


def _run(explainer: lrpfx.Explainer, images: list[Path], names: dict[Path, Path],
         args: argparse.Namespace, loaded: LoadedModel, console: Console) -> int:
    """Decode, batch and explain with a progress bar; returns the number of failures."""
    failed = 0
    batch: list[tuple[Path, torch.Tensor]] = []
    columns = (TextColumn("explaining"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    start = time.perf_counter()
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("explain", total=len(images))
        for k, path in enumerate(images):
            try:
                batch.append((path, preprocess(load_image(path), args.size)))
            except InputError as error:
                failed += 1
                _say(progress.console, f"[red]error[/] {escape(str(error))}")
                progress.advance(task)
            if batch and (len(batch) == args.batch_size or k == len(images) - 1):
                _explain_batch(explainer, batch, args, loaded, names, progress.console)
                progress.advance(task, len(batch))
                batch = []
    seconds = time.perf_counter() - start
    _say(console, f"[dim]{len(images) - failed} image(s) in {seconds:.1f} s[/]")
    return failed


def show_command(args: argparse.Namespace, console: Console) -> int:
    """``lrpfx show``: the annotated graph with output shapes for one input of ``--size``."""
    _check_options(args)
    loaded = (load_model(args.arch, args.weights, download=False) if args.weights
              else LoadedModel(_build(args.arch), "random", True))
    explainer = _compile(args, loaded.model)
    args.device = "cpu"
    _check_input(explainer, args)
    example = torch.zeros(1, 3, args.size, args.size, dtype=torch.float32)
    lrpfx.show(explainer, console, example=example)
    return 0


def _build(arch: str) -> torch.nn.Module:
    from lrpfx.images import build_model

    return build_model(arch).eval()


def demo_command(args: argparse.Namespace, console: Console) -> int:
    """``lrpfx demo``: the digits main job (``lrpfx.demo``, also ``examples/digits.py``)."""
    try:
        demo.main(args.extra)
    except ImportError as error:  # no scikit-learn: one line that says what to install
        raise InputError(str(error)) from None
    return 0


COMMANDS = {"explain": explain_command, "show": show_command, "demo": demo_command,
            "evaluate": evaluation_command.evaluate_command,
            "tune": evaluation_command.tune_command, "grid": dataset_command.grid_command,
            "explain-text": language_command.explain_text_command}


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    """Run the command line; returns the exit status (also the console script's)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "demo":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    console = console or Console()
    try:
        return COMMANDS[args.command](args, console)
    except InputError as error:
        _say(console, f"[red]lrpfx: error:[/] {escape(str(error))}")
        return 2
    except LrpfxError as error:  # the model cannot be explained: the compiler's own message
        _say(console, f"[red]lrpfx: {type(error).__name__}:[/] {escape(str(error))}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
