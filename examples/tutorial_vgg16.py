"""The VGG-16 recipe of the LRP overview (Montavon et al. 2019, §10.3) and its tutorial, in lrpfx.

Rules by position among VGG-16's 16 conv/dense layers (execution order):

    layer 0        (features.0, on the pixels)      zᴮ with the normalized pixel bounds
    layers 1-6     (features.2 … features.14)       γ = 0.25
    layers 7-12    (features.17 … features.28)      ε = 0.25 · std(z)
    layers 13-15   (classifier.0, .3, .6)           LRP-0 (ε = 1e-9, as the tutorial)
    max-pools                                       as average pools

It records the relevance at several depths (the tutorial's R[31], R[21], R[11], R[1]) and writes
one PNG: the image, then the relevance at each depth, coarse to fine, then at the pixels.
Random weights unless ``--weights`` is given or torchvision's are in the torch hub cache.

    python examples/tutorial_vgg16.py [--weights vgg16.pth] [--image photo.jpg] [--out a.png]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from rich.console import Console
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

import lrpfx
from lrpfx import composites, rules
from lrpfx.composites import Position
from lrpfx.heatmap import heatmap, overlay, save_png, to_image, upsample
from lrpfx.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    load_image,
    load_model,
    pixel_bounds,
    preprocess,
)

# the tutorial's R[l] is the relevance of the input of layer l = the output of layer l - 1
DEPTHS = {"R[31]": "features.30", "R[21]": "features.20", "R[11]": "features.10",
          "R[1]": "features.0"}


def montavon_vgg16(low: torch.Tensor, high: torch.Tensor) -> composites.Composite:
    """The recipe: rules by position among the conv and dense layers, in execution order."""
    return composites.Composite([
        (Position(0, 1), rules.ZBox(low, high)),              # the pixel layer
        (Position(1, 7), rules.Gamma(0.25)),                  # lower convolutions
        (Position(7, 13), rules.Epsilon(0.25, scale="std")),  # middle convolutions
        (Position(13, None), rules.Epsilon(1e-9)),            # dense layers: LRP-0
    ], defaults=composites.base_entries())


class SmallVGG16(nn.Module):
    """VGG-16's layout (13 convolutions, 5 max-pools, 3 dense layers, torchvision's module names)
    with ``divide`` times fewer channels: for a quick run."""

    def __init__(self, divide: int = 16, classes: int = 10) -> None:
        super().__init__()
        width = 512 // divide
        self.features = make_layers([v if v == "M" else int(v) // divide for v in cfgs["D"]])
        self.avgpool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Linear(width * 49, 4 * width), nn.ReLU(True), nn.Dropout(),
            nn.Linear(4 * width, 4 * width), nn.ReLU(True), nn.Dropout(),
            nn.Linear(4 * width, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def default_image() -> torch.Tensor:
    """A photo to explain: scikit-learn's sample "china.jpg" (a temple), else a drawn scene."""
    try:
        from sklearn.datasets import load_sample_image

        return torch.from_numpy(load_sample_image("china.jpg").copy()).permute(2, 0, 1)
    except ImportError:
        y, x = torch.meshgrid(torch.linspace(0, 1, 240), torch.linspace(0, 1, 320), indexing="ij")
        disc = ((x - 0.6) ** 2 + (y - 0.45) ** 2 < 0.04).float()
        sky = torch.stack([0.4 + 0.3 * y, 0.6 + 0.2 * y, 0.9 - 0.2 * y])
        return ((sky * (1 - disc) + torch.tensor([0.9, 0.7, 0.1]).reshape(3, 1, 1) * disc) * 255
                ).to(torch.uint8)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, help="VGG-16 state dict")
    parser.add_argument("--image", type=Path, help="image file (default: a sample photo)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--out", type=Path, default=Path("out/tutorial_vgg16.png"))
    parser.add_argument("--small", action="store_true", help="VGG-16 layout, 16x fewer channels")
    parser.add_argument("--no-download", action="store_true")
    args = parser.parse_args(argv)
    console = Console()

    if args.small:
        model, categories = SmallVGG16().eval(), None
        console.print("small VGG-16 layout with random weights (--small)")
    else:
        loaded = load_model("vgg16", args.weights, download=not args.no_download)
        model, categories = loaded.model, loaded.categories
        style = "bold red" if loaded.random else ""
        console.print(f"VGG-16 weights: {loaded.weights}", style=style)
    image = load_image(args.image) if args.image else default_image()
    x = preprocess(image, args.size).unsqueeze(0)

    low, high = pixel_bounds()
    start = time.perf_counter()
    explainer = lrpfx.compile(model, montavon_vgg16(low, high), maxpool="avg",
                              record=list(DEPTHS.values()))
    console.print(f"compiled in {time.perf_counter() - start:.2f} s: {explainer}")
    lrpfx.show(explainer, console)

    start = time.perf_counter()
    out = explainer(x)
    k = int(out.output.argmax())
    name = f" ({categories[k]})" if categories else ""
    console.print(f"explained in {time.perf_counter() - start:.2f} s: class {k}{name}, "
                  f"logit {out.output[0, k]:.4g}")
    for label, layer in DEPTHS.items():
        relevance = out.layers[layer]
        console.print(f"  {label:>6} = relevance of {layer:<12} output: sum "
                      f"{relevance.sum():.4g}, shape {tuple(relevance.shape[1:])}")
    console.print(f"  {'R[0]':>6} = relevance of the pixels: sum {out.relevance.sum():.4g}")

    picture = to_image(x, IMAGENET_MEAN, IMAGENET_STD)
    maps = [upsample(heatmap(out.layers[layer]), args.size) for layer in DEPTHS.values()]
    row = [picture, *maps, heatmap(out.relevance), overlay(picture, out.relevance)]
    path = save_png(torch.cat(row), args.out, nrow=len(row))
    console.print(f"wrote {path}: image, {', '.join(DEPTHS)}, R[0], R[0] over the image")
    return path


if __name__ == "__main__":
    main()
