"""``lrpfx evaluate`` and ``lrpfx tune``: the evaluation on images in a folder (a torchvision
model, ImageNet preprocessing) or on the digits demo (the demo's CNN trained in seconds,
evaluated on its held-out 20 %)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.syntax import Syntax

from lrpfx.evaluation.evaluate import evaluate
from lrpfx.evaluation.imputers import IMPUTERS
from lrpfx.images import InputError, find_images, load_image, load_model, preprocess


def add_parsers(commands: Any) -> None:
    """Register ``evaluate`` and ``tune`` on the subcommand parsers of the CLI."""
    for name, help_ in (("evaluate", "faithfulness table of presets (and sanity, ground truth)"),
                        ("tune", "search a rule per layer group for the best ABPC")):
        parser = commands.add_parser(name, help=help_)
        parser.add_argument("paths", nargs="*", metavar="IMAGES_OR_FOLDER",
                            help="images to evaluate on (none: the digits demo)")
        parser.add_argument("--arch", default="vgg16")
        parser.add_argument("--weights", type=Path)
        parser.add_argument("--size", type=int, default=224)
        parser.add_argument("--rules", default="all",
                            help="comma-separated preset names, or 'all'")
        parser.add_argument("--n", type=int, help="samples (default: all)")
        parser.add_argument("--patch", type=int, help="patch side (default: 16, 1 below 64 px)")
        parser.add_argument("--steps", type=int, help="perturbation steps (default: min(50, P))")
        parser.add_argument("--imputer", default="mean", choices=IMPUTERS)
        parser.add_argument("--score", default="logit", choices=("logit", "prob"))
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--batch", type=int, default=1024, help="inputs per forward")
        parser.add_argument("--epochs", type=int, default=30, help="digits training epochs")
        parser.add_argument("--out", type=Path, default=Path("out/evaluation"))
        parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
        if name == "evaluate":
            parser.add_argument("--sanity", action="store_true",
                                help="also the model-parameter randomization test")
            parser.add_argument("--ground-truth", action="store_true",
                                help="also the ground-truth benchmark (digits in canvases)")


def digits_setup(epochs: int, console: Console) -> tuple[torch.nn.Module, torch.Tensor,
                                                          torch.Tensor]:
    """The demo's CNN trained on 80 % of the digits, and the other 20 % (the same split)."""
    from lrpfx.demo import digits_cnn, digits_data, train

    torch.manual_seed(0)
    x, y = digits_data()
    model = digits_cnn()
    accuracy = train(model, x, y, epochs)
    test = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[int(0.8 * len(x)):]
    console.print(f"digits CNN: test accuracy {accuracy:.1%}; evaluating on its {len(test)} "
                  "held-out digits")
    return model, x[test], y[test]


def _data(args: argparse.Namespace, console: Console) -> tuple[torch.nn.Module, torch.Tensor,
                                                               torch.Tensor | None]:
    if not args.paths:
        try:
            return digits_setup(args.epochs, console)
        except ImportError as error:
            raise InputError(str(error)) from None
    images, _ = find_images(args.paths)
    if not images:
        raise InputError(f"no images in {', '.join(map(str, args.paths))}")
    images = images[: args.n] if args.n else images
    x = torch.stack([preprocess(load_image(p), args.size) for p in images])
    loaded = load_model(args.arch, args.weights, download=True)
    if loaded.random:
        console.print("[bold red]random weights[/]: the numbers say nothing about a trained "
                      "model; pass --weights PATH")
    return loaded.model.eval(), x, None


def _rules(text: str) -> str | list[str]:
    return "all" if text == "all" else [r.strip() for r in text.split(",") if r.strip()]


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {"patch": args.patch, "steps": args.steps, "imputer": args.imputer,
            "score": args.score, "batch": args.batch}


def evaluate_command(args: argparse.Namespace, console: Console) -> int:
    """``lrpfx evaluate``: the table, the files, and optionally sanity and ground truth."""
    model, x, y = _data(args, console)
    model = model.to(args.device)
    data = (x, y) if y is not None else x
    result = evaluate(model, data, _rules(args.rules), n=args.n, seed=args.seed,
                      console=console, **_options(args))
    console.print(result.table())
    paths = result.save(args.out)
    console.print(f"wrote {', '.join(map(str, paths))}")
    if args.sanity:
        from lrpfx.evaluation.sanity import randomization

        console.print(randomization(model, x[: args.n or 100].to(args.device),
                                    _rules(args.rules), seed=args.seed).table())
    if args.ground_truth:
        from lrpfx.evaluation.groundtruth import benchmark

        console.print(benchmark(_rules(args.rules), seed=args.seed).table())
    return 0


def tune_command(args: argparse.Namespace, console: Console) -> int:
    """``lrpfx tune``: the search, the held-out table and the composite as code."""
    from lrpfx.evaluation.tune import tune

    model, x, _ = _data(args, console)
    x = x[: args.n] if args.n else x
    tuned = tune(model.to(args.device), x.to(args.device), seed=args.seed, **_options(args))
    console.print(f"tried {len(tuned.tried)} settings on {len(x) // 2} samples; held out:")
    console.print(tuned.held_out.table())
    console.print(Syntax(tuned.code, "python"))
    return 0
