"""``lrpfx explain --region CLASS``: explain a segmentation model's class over the pixels it
predicts as that class (``lrpfx.targets.Region``; ``Select("out", ...)`` for torchvision's dict
outputs), one heatmap PNG per image."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape

import lrpfx
from lrpfx import heatmap, outputs
from lrpfx.images import InputError
from lrpfx.targets import Region, Select


def seed(explainer: lrpfx.Explainer, x: torch.Tensor, cls: int) -> Region | Select:
    """The region seed of class ``cls`` for this explainer's output; an ``InputError`` when
    the model has no such class or no per-pixel output."""
    from lrpfx import guard

    shapes = guard.output_shape(explainer.graph_module, x)
    chosen: Region | Select = Region(None, cls)
    if outputs.is_structured(shapes):
        key = "out" if isinstance(shapes, dict) and "out" in shapes else 0
        chosen = Select(key, chosen)
        shapes = outputs.select(shapes, key)
    try:
        Region(None, cls).check(shapes, len(x), None)
    except (TypeError, ValueError) as error:
        raise InputError(f"--region {cls}: {error}") from None
    return chosen


def explain_batch(explainer: lrpfx.Explainer, x: torch.Tensor, paths: list[Path],
                  args: argparse.Namespace, names: dict[Path, Path], console: Console,
                  picture: Callable[[torch.Tensor, torch.Tensor, str, str], torch.Tensor]
                  ) -> None:
    """Explain a batch at ``--region``; save each picture, one line per image."""
    region = seed(explainer, x, args.region)
    out = explainer(x, output_relevance=region)
    logits = out.output[region.key] if isinstance(region, Select) else out.output
    pictures = picture(x.cpu(), out.relevance.cpu(), args.style, args.cmap)
    predicted = logits.argmax(1) == args.region
    for k, path in enumerate(paths):
        heatmap.save_png(pictures[k], names[path])
        inside = float(logits[k, args.region][predicted[k]].sum())
        pixels = int(predicted[k].sum())
        note = "" if pixels else " [yellow](no pixel is predicted as it: nothing explained)[/]"
        console.print(
            f"{escape(str(path))}: class {args.region} predicted at {pixels} pixel(s){note}; "
            f"relevance sum {float(out.relevance[k].sum()):.4g} of region logit {inside:.4g} "
            f"-> {escape(str(names[path]))}", highlight=False, soft_wrap=True)
