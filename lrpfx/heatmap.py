"""Heatmaps: relevance to RGB images, saved as PNG through torchvision (no matplotlib)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

# signed colormaps as anchor colors (RGB in [0, 1]) spread evenly over [-1, 1]
COLORMAPS: dict[str, tuple[tuple[float, float, float], ...]] = {
    "bwr": ((0.0, 0.0, 1.0), (1.0, 1.0, 1.0), (1.0, 0.0, 0.0)),
    "seismic": ((0.0, 0.0, 0.3), (0.0, 0.0, 1.0), (1.0, 1.0, 1.0), (1.0, 0.0, 0.0),
                (0.5, 0.0, 0.0)),
    "coldnhot": ((0.0, 1.0, 1.0), (0.0, 0.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0),
                 (1.0, 1.0, 0.0)),
    "hot": ((0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (1.0, 1.0, 0.0), (1.0, 1.0, 1.0)),
    "gray": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def colorize(values: torch.Tensor, cmap: str = "bwr") -> torch.Tensor:
    """Map values in ``[0, 1]`` (any shape) to RGB in ``[0, 1]``, shape ``(3, *values.shape)``."""
    if cmap not in COLORMAPS:
        raise ValueError(f"unknown colormap {cmap!r}; choose from {', '.join(COLORMAPS)}")
    anchors = torch.tensor(COLORMAPS[cmap], dtype=torch.float32)
    position = values.float().clamp(0, 1) * (len(anchors) - 1)
    low = position.floor().long().clamp(max=len(anchors) - 2)
    frac = (position - low).unsqueeze(-1)
    rgb = anchors[low] * (1 - frac) + anchors[low + 1] * frac
    return rgb.movedim(-1, 0)


def normalize(relevance: torch.Tensor, symmetric: bool = True) -> torch.Tensor:
    """Per map: ``symmetric`` maps 0 to 0.5 and ``±max|R|`` to 0/1; else min..max to 0..1."""
    flat = relevance.flatten(1)
    if symmetric:
        scale = flat.abs().amax(1).clamp(min=1e-12).reshape(-1, *[1] * (relevance.dim() - 1))
        return relevance / (2 * scale) + 0.5
    low = flat.amin(1).reshape(-1, *[1] * (relevance.dim() - 1))
    high = flat.amax(1).reshape(-1, *[1] * (relevance.dim() - 1))
    return (relevance - low) / (high - low).clamp(min=1e-12)


def heatmap(relevance: torch.Tensor, cmap: str = "bwr", symmetric: bool = True,
            size: int | None = None) -> torch.Tensor:
    """Relevance ``(N, C, H, W)`` or ``(N, H, W)`` to RGB images ``(N, 3, H, W)`` in ``[0, 1]``.

    Channels are summed; ``size`` upsamples (nearest) so small maps stay readable.
    """
    maps = relevance.detach().cpu().float()
    if maps.dim() == 4:
        maps = maps.sum(1)
    rgb = colorize(normalize(maps, symmetric), cmap).movedim(0, 1)
    if size is not None:
        rgb = F.interpolate(rgb, size=(size, size), mode="nearest")
    return rgb


def save_png(images: torch.Tensor, path: str | Path, nrow: int = 8, padding: int = 2) -> Path:
    """Save images ``(N, 3, H, W)`` in ``[0, 1]`` as one PNG grid."""
    from torchvision.io import write_png
    from torchvision.utils import make_grid

    grid = make_grid(images, nrow=nrow, padding=padding, pad_value=1.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png((grid * 255).round().to(torch.uint8), str(path))
    return path
