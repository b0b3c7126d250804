"""Occlude patches of an image and watch the heatmap and the score change.

As the fast-LRP-for-VGG project's interactive mode, without a window: every patch position (a
grid, or the ones given with ``--at``) is covered, the occluded image explained again for the
class first predicted, and a PNG strip written: the occluded images, their heatmaps and a score
bar (full = the unoccluded score). It also prints how well the relevance that LRP gave a patch
predicts the score lost when covering it.

By default on the scikit-learn digits with the small CNN of the digits demo (``lrpfx.demo``,
trained in seconds); ``--arch vgg16 --image photo.jpg`` for an ImageNet model.

    python examples/interactive.py [--sample 3] [--patch 2] [--at 2,4 --at 0,0] [--fill zero]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import lrpfx
from lrpfx import composites
from lrpfx.composites import PRESETS
from lrpfx.demo import digits_cnn, digits_data, train
from lrpfx.heatmap import grid, heatmap, save_png, to_image, upsample
from lrpfx.images import IMAGENET_MEAN, IMAGENET_STD, load_image, load_model, preprocess


def digits_setup(args: argparse.Namespace, console: Console):
    x, y = digits_data()
    model = digits_cnn()
    accuracy = train(model, x, y, args.epochs)
    console.print(f"digits CNN trained for {args.epochs} epochs: test accuracy {accuracy:.1%}")
    rules = (composites.EpsilonGammaBox(low=0.0, high=1.0) if args.rules == "epsilon-gamma-box"
             else args.rules)  # the digits' pixels lie in [0, 1]
    explainer = lrpfx.compile(model, rules)
    return explainer, x[args.sample : args.sample + 1], (lambda v: v.expand(-1, 3, -1, -1)), 64


def imagenet_setup(args: argparse.Namespace, console: Console):
    from lrpfx.cli import composite_for

    loaded = load_model(args.arch, args.weights, download=not args.no_download)
    console.print(f"{args.arch} weights: {loaded.weights}", style="red" if loaded.random else "")
    explainer = lrpfx.compile(loaded.model, composite_for(args.rules), strip_softmax=True)
    if args.image is None:
        raise SystemExit("--arch needs --image PATH")
    x = preprocess(load_image(args.image), args.size).unsqueeze(0)
    return explainer, x, (lambda v: to_image(v, IMAGENET_MEAN, IMAGENET_STD)), args.size


def positions(args: argparse.Namespace, height: int, width: int) -> list[tuple[int, int]]:
    """Top-left corners: ``--at row,col`` as given, else a grid with stride ``--patch``."""
    if args.at:
        return [tuple(int(v) for v in at.split(",")) for at in args.at]  # type: ignore[misc]
    return [(r, c) for r in range(0, height - args.patch + 1, args.patch)
            for c in range(0, width - args.patch + 1, args.patch)]


def occlude(x: torch.Tensor, at: tuple[int, int], patch: int, fill: str) -> torch.Tensor:
    r, c = at
    covered = x.clone()
    region = covered[..., r : r + patch, c : c + patch]
    if fill == "noise":
        region.copy_(torch.randn_like(region) * x.std() + x.mean())
    else:
        region.fill_(0.0 if fill == "zero" else float(x.mean()))
    return covered


def outline(image: torch.Tensor, at: tuple[int, int], patch: int, scale: float) -> torch.Tensor:
    """Mark the occluded patch with a yellow frame (on the upsampled image)."""
    top, left = round(at[0] * scale), round(at[1] * scale)
    bottom, right = round((at[0] + patch) * scale) - 1, round((at[1] + patch) * scale) - 1
    marked, yellow = image.clone(), torch.tensor([1.0, 0.8, 0.0]).reshape(3, 1, 1)
    for column in (left, right):
        marked[0, :, top : bottom + 1, column : column + 1] = yellow
    for row in (top, bottom):
        marked[0, :, row : row + 1, left : right + 1] = yellow
    return marked


def bar(fraction: float, width: int, height: int) -> torch.Tensor:
    """A score bar: the filled share in dark green (red when the score went up)."""
    image = torch.ones(3, height, width)
    filled = int(round(min(max(fraction, 0.0), 1.0) * width))
    color = torch.tensor([0.1, 0.55, 0.2] if fraction <= 1 else [0.8, 0.2, 0.1])
    band = slice(height // 4, height - height // 4)
    image[:, band, :] = 0.85  # the track: full width = the unoccluded score
    image[:, band, :filled] = color.reshape(3, 1, 1)
    return image


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=3, help="digits: which sample")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--arch", help="an ImageNet model instead (torchvision name)")
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--image", type=Path)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--no-download", action="store_true")
    parser.add_argument("--patch", type=int, help="patch side (default: 2 digits, 56 ImageNet)")
    parser.add_argument("--at", action="append", metavar="ROW,COL", help="patch corner(s)")
    parser.add_argument("--fill", default="zero", choices=("zero", "mean", "noise"))
    parser.add_argument("--rules", default="epsilon-alpha2-beta1", choices=sorted(PRESETS))
    parser.add_argument("--out", type=Path, default=Path("out/interactive.png"))
    args = parser.parse_args(argv)
    console = Console()
    torch.manual_seed(0)
    setup = imagenet_setup if args.arch else digits_setup
    explainer, x, show_input, side = setup(args, console)
    args.patch = args.patch or (2 if not args.arch else args.size // 4)

    base = explainer(x)
    target = int(base.output.argmax())
    score = float(base.output[0, target])
    console.print(f"class {target}, score {score:.3f}; occluding {args.patch}x{args.patch} "
                  f"patches with {args.fill}")
    relevance_map = base.relevance.sum(1)[0]
    columns = [(show_input(x), base.relevance, 1.0)]
    scale = side / x.shape[-1]
    table = Table("patch at", "score", "change", "relevance in patch", box=None)
    mass, drop = [], []
    for at in positions(args, *x.shape[-2:]):
        covered = occlude(x, at, args.patch, args.fill)
        out = explainer(covered, target=target)
        new = float(out.output[0, target])
        inside = float(relevance_map[at[0] : at[0] + args.patch, at[1] : at[1] + args.patch].sum())
        mass.append(inside)
        drop.append(score - new)
        table.add_row(str(at), f"{new:.3f}", f"{new - score:+.3f}", f"{inside:+.3f}")
        shown = outline(upsample(show_input(covered), side), at, args.patch, scale)
        columns.append((shown, out.relevance, new / score if score else 0.0))
    console.print(table)
    corr = float(torch.corrcoef(torch.tensor([mass, drop]))[0, 1]) if len(mass) > 2 else 0.0
    console.print(f"correlation of a patch's relevance with the score lost by covering it: "
                  f"{corr:.2f}")
    write_strip(columns, side, args.out, console)
    return {"score": score, "correlation": corr, "patches": float(len(mass))}


def write_strip(columns: list[tuple[torch.Tensor, torch.Tensor, float]], side: int, path: Path,
                console: Console) -> None:
    """Three rows: the (occluded) inputs, their heatmaps, the score bars."""
    images = torch.cat([upsample(image, side) for image, _, _ in columns])
    heats = torch.cat([upsample(heatmap(relevance), side) for _, relevance, _ in columns])
    bars = torch.stack([bar(fraction, side, max(side // 4, 4)) for _, _, fraction in columns])
    rows = [grid(row, nrow=len(columns)) for row in (images, heats, bars)]
    written = save_png(torch.cat(rows, dim=1), path)
    console.print(f"wrote {written}: the image then each occlusion; rows: input, heatmap, score")


if __name__ == "__main__":
    main()
