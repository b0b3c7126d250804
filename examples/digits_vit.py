"""A vision transformer trained on the digits in seconds, explained with AttnLRP and CP-LRP.

torchvision's ``VisionTransformer`` (8×8 images, 2×2 patches: 16 tokens and a class token, two
layers of four heads) is trained on 80 % of the scikit-learn digits, then explained by the
attention presets at pixel resolution. Writes ``out/digits_vit.png``: the digits, then one row
of heatmaps per preset (red: evidence for the predicted class, blue: against).

    python examples/digits_vit.py                 # trains 40 epochs, then explains
    python examples/digits_vit.py --epochs 5 --out out/quick.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torchvision
from rich.console import Console

import lrpfx
from lrpfx import composites
from lrpfx.demo import digits_data, explain_rows, picture, trained
from lrpfx.heatmap import save_png

PRESETS = {
    "attn-lrp": composites.AttnLRP(),
    "attn-lrp-gamma": composites.AttnLRPGamma(conv_gamma=0.25, linear_gamma=0.05),
    "cp-lrp": composites.CPLRP(),
}


def digits_vit() -> torchvision.models.VisionTransformer:
    """A small ViT for 8×8 single-channel digits (the patch convolution takes one channel)."""
    model = torchvision.models.VisionTransformer(
        image_size=8, patch_size=2, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64,
        num_classes=10)
    model.conv_proj = torch.nn.Conv2d(1, 32, kernel_size=2, stride=2)
    return model


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/digits_vit.png"))
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args(argv)
    console = Console()
    torch.manual_seed(0)
    x, y = digits_data()
    model = digits_vit()
    accuracy = trained(model, x, y, args.epochs, console, "a ViT ")
    explainers = {name: lrpfx.compile(model, preset) for name, preset in PRESETS.items()}
    samples = torch.cat([torch.nonzero(y == d)[:2, 0] for d in range(10)])
    relevances, ratios = explain_rows(explainers, x[samples], console)
    path = save_png(picture(x[samples], relevances), args.out, nrow=len(samples))
    console.print(f"wrote {path}: digits, then rows {', '.join(PRESETS)}")
    return {"accuracy": accuracy, **ratios}


if __name__ == "__main__":
    main()
