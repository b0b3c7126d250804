"""Why this box? Explain one detection of a torchvision detector and draw it.

RetinaNet, FCOS or SSDlite (random weights unless ``--weights`` names a state dict; COCO's 91
classes) detects objects in an image (``--image``, or a generated one: two bright shapes on a
dark, noisy background). The detection to explain (``--box``, by rank, 0 the best) is traced
back to the anchor that produced it (``lrpfx.detection.locate``), and the backbone and head are
explained at that anchor's class logit. The PNG: the image with every kept box (the explained
one thick, in red, and the next five in white), then the relevance over the image with the
explained box.

    python examples/detection.py [--arch retinanet_resnet50_fpn] [--size 256] [--box 0]
                                 [--image photo.jpg] [--out detection.png]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torchvision
from torchvision.utils import draw_bounding_boxes

import lrpfx
from lrpfx import detection
from lrpfx.heatmap import overlay, save_png
from lrpfx.images import load_image


def shapes(size: int) -> torch.Tensor:
    """An image ``(3, size, size)`` in ``[0, 1]``: a bright square and a bar on noise."""
    g = torch.Generator().manual_seed(0)
    image = 0.15 + 0.1 * torch.rand(3, size, size, generator=g)
    s = size // 8
    image[:, 2 * s: 4 * s, s: 3 * s] = torch.tensor([0.9, 0.8, 0.2]).reshape(3, 1, 1)
    image[:, 5 * s: 6 * s, 3 * s: 7 * s] = torch.tensor([0.2, 0.6, 0.9]).reshape(3, 1, 1)
    return image


def build(arch: str, size: int, weights: str | None) -> torch.nn.Module:
    kwargs: dict = {"weights": None, "weights_backbone": None}
    if not arch.startswith("ssd"):
        kwargs.update(min_size=size, max_size=size)
    model = torchvision.models.get_model(arch, **kwargs).eval()
    if weights:
        model.load_state_dict(torch.load(weights, map_location="cpu"))
    return model


def draw(image: torch.Tensor, boxes: torch.Tensor, chosen: int) -> torch.Tensor:
    """The image with ``boxes`` (the ``chosen`` one thick and red), in ``[0, 1]``."""
    pixels = (image.clamp(0, 1) * 255).to(torch.uint8)
    others = [k for k in range(len(boxes)) if k != chosen][:5]  # the next best
    if others:
        pixels = draw_bounding_boxes(pixels, boxes[others], colors="white", width=1)
    pixels = draw_bounding_boxes(pixels, boxes[chosen: chosen + 1], colors="red", width=3)
    return pixels.float() / 255


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="retinanet_resnet50_fpn")
    parser.add_argument("--weights", help="a state dict of the architecture (.pth)")
    parser.add_argument("--image", help="an image file (default: generated shapes)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--box", type=int, default=0, help="which detection, by rank")
    parser.add_argument("--rules", default="epsilon-plus-flat")
    parser.add_argument("--out", default="detection.png")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = build(args.arch, args.size, args.weights)
    model.score_thresh = 0.0  # random weights score low: keep their boxes to draw one
    image = load_image(Path(args.image)).float() / 255 if args.image else shapes(args.size)
    with torch.no_grad():
        found = model([image])[0]
    start = time.perf_counter()
    x = detection.inputs(model, image)
    explainer = lrpfx.compile(detection.dense(model), args.rules, example_inputs=x)
    located = detection.locate(model, image, found, args.box)
    out = explainer(x, output_relevance=located.seed)
    seconds = time.perf_counter() - start
    relevance = detection.resize_relevance(out.relevance, model, image)
    boxes = found["boxes"]
    picture = torch.stack([draw(image, boxes, args.box),
                           draw(overlay(image[None], relevance)[0], boxes[args.box:][:1], 0)])
    path = save_png(picture, args.out, nrow=2)
    logit = float(out.output["cls_logits"][0, located.anchor, located.label])
    print(f"{args.arch}: box {args.box} (label {located.label}, score "
          f"{float(found['scores'][args.box]):.3g}) from anchor {located.anchor}, logit "
          f"{logit:.3g}, Σ R = {float(out.relevance.sum()):.3g}; compile + explain "
          f"{seconds:.1f} s; wrote {path}")
    return {"path": Path(path), "anchor": located.anchor, "label": located.label,
            "logit": logit, "relevance": float(out.relevance.sum())}


if __name__ == "__main__":
    main()
