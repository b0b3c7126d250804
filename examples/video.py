"""Explain a video classifier and draw its relevance frame by frame.

A torchvision video model (``r3d_18``, ``mc3_18``, ``r2plus1d_18``, ``s3d``...; random weights
unless ``--weights`` names a state dict) explains a clip at its top class; the PNG is the
frame strip of ``lrpfx.heatmap.frames``: the frames in the first row, their relevance below on
one scale for the whole clip (red for the class, blue against). Without ``--video`` the clip is
generated: a bright square moving across a dark, noisy background.

    python examples/video.py [--arch r3d_18] [--frames 8] [--size 112] [--out video.png]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torchvision

import lrpfx
from lrpfx.heatmap import frames, save_png

# torchvision's video models are trained on Kinetics-400 clips normalized with these
MEAN, STD = (0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)


def moving_square(count: int, size: int) -> torch.Tensor:
    """A clip ``(3, T, H, W)`` in ``[0, 1]``: a square crossing the frames left to right."""
    g = torch.Generator().manual_seed(0)
    clip = 0.1 + 0.05 * torch.rand(3, count, size, size, generator=g)
    side = max(2, size // 4)
    for t in range(count):
        left = round(t * (size - side) / max(1, count - 1))
        clip[:, t, size // 3: size // 3 + side, left: left + side] = 0.9
    return clip


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="r3d_18")
    parser.add_argument("--weights", help="a state dict of the architecture (.pth)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--rules", default="epsilon-plus-flat")
    parser.add_argument("--out", default="video.png")
    args = parser.parse_args(argv)
    model = torchvision.models.get_model(args.arch, weights=None).eval()
    if args.weights:
        model.load_state_dict(torch.load(args.weights, map_location="cpu"))
    clip = moving_square(args.frames, args.size)
    x = ((clip - torch.tensor(MEAN).reshape(3, 1, 1, 1))
         / torch.tensor(STD).reshape(3, 1, 1, 1)).unsqueeze(0)
    start = time.perf_counter()
    explainer = lrpfx.compile(model, args.rules)
    out = explainer(x)
    seconds = time.perf_counter() - start
    top = int(out.output.argmax(1))
    path = save_png(frames(x[0], out.relevance[0], mean=MEAN, std=STD), args.out,
                    nrow=args.frames)
    print(f"{args.arch}: class {top} (logit {float(out.output[0, top]):.3g}), Σ R = "
          f"{float(out.relevance.sum()):.3g}; compile + explain {seconds:.1f} s; wrote {path}")
    return path


if __name__ == "__main__":
    main()
