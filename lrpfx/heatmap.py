"""Heatmaps: relevance to RGB images, overlays and grids, saved as PNG through torchvision.

No matplotlib: a colormap is a list of anchor colors at positions in ``[0, 1]``, interpolated
linearly (the definitions follow matplotlib's and Zennit's maps of the same names).

>>> rgb = heatmap(out.relevance)                      # (N, 3, H, W) in [0, 1], bwr, 0 is white
>>> rgb = heatmap(out.relevance, "hot", reduce="abs") # unsigned: |R| summed over channels
>>> save_png(torch.cat([images, overlay(images, out.relevance)]), "out.png", nrow=len(images))

Conventions: relevance is ``(N, C, H, W)`` (channels are reduced, see :func:`reduce_channels`)
or ``(N, H, W)``; every map is normalized on its own; images are ``(N, 3 or 1, H, W)`` in
``[0, 1]``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

RGB = tuple[float, float, float]
Reduce = Literal["sum", "abs", "pos", "norm"]

# colormaps as (position, RGB) anchors; diverging maps put their center color at 0.5
COLORMAPS: dict[str, tuple[tuple[float, RGB], ...]] = {
    "bwr": ((0.0, (0.0, 0.0, 1.0)), (0.5, (1.0, 1.0, 1.0)), (1.0, (1.0, 0.0, 0.0))),
    "seismic": ((0.0, (0.0, 0.0, 0.3)), (0.25, (0.0, 0.0, 1.0)), (0.5, (1.0, 1.0, 1.0)),
                (0.75, (1.0, 0.0, 0.0)), (1.0, (0.5, 0.0, 0.0))),
    "coldnhot": ((0.0, (0.0, 1.0, 1.0)), (0.25, (0.0, 0.0, 1.0)), (0.5, (0.0, 0.0, 0.0)),
                 (2 / 3, (1.0, 0.0, 0.0)), (5 / 6, (1.0, 1.0, 0.0)), (1.0, (1.0, 1.0, 1.0))),
    "hot": ((0.0, (0.0, 0.0, 0.0)), (1 / 3, (1.0, 0.0, 0.0)), (2 / 3, (1.0, 1.0, 0.0)),
            (1.0, (1.0, 1.0, 1.0))),
    "gray": ((0.0, (0.0, 0.0, 0.0)), (1.0, (1.0, 1.0, 1.0))),
}
DIVERGING = frozenset({"bwr", "seismic", "coldnhot"})  # signed maps: 0 sits in the middle


def _anchors(cmap: str) -> tuple[torch.Tensor, torch.Tensor]:
    if cmap not in COLORMAPS:
        raise ValueError(f"unknown colormap {cmap!r}; choose from {', '.join(COLORMAPS)}")
    positions, colors = zip(*COLORMAPS[cmap], strict=True)
    as_tensor = lambda values: torch.tensor(values, dtype=torch.float32)  # noqa: E731
    return as_tensor(positions), as_tensor(colors)


def colorize(values: torch.Tensor, cmap: str = "bwr") -> torch.Tensor:
    """Map values in ``[0, 1]`` (any shape; clamped) to RGB in ``[0, 1]``, shape
    ``(3, *values.shape)``."""
    positions, colors = _anchors(cmap)
    v = values.detach().float().cpu().clamp(0, 1)
    upper = torch.searchsorted(positions, v.contiguous(), right=True).clamp(1, len(positions) - 1)
    lower = upper - 1
    span = positions[upper] - positions[lower]
    frac = ((v - positions[lower]) / span).unsqueeze(-1)
    rgb = colors[lower] * (1 - frac) + colors[upper] * frac
    return rgb.movedim(-1, 0)


def reduce_channels(relevance: torch.Tensor, how: Reduce = "sum") -> torch.Tensor:
    """``(N, C, H, W)`` to one map per sample ``(N, H, W)``: ``"sum"`` (signed, the LRP
    convention: relevance is additive), ``"abs"`` (Σ|R|), ``"pos"`` (Σ max(R, 0)) or ``"norm"``
    (the L2 norm over channels). ``(N, H, W)`` passes unchanged."""
    if not isinstance(relevance, torch.Tensor):
        raise TypeError(f"heatmaps take a relevance tensor, got {type(relevance).__name__}")
    r = relevance.detach().float().cpu()
    if r.dim() not in (3, 4):
        raise ValueError(f"heatmaps take (N, C, H, W) or (N, H, W) relevance, got "
                         f"{tuple(r.shape)}")
    if r.numel() == 0:
        raise ValueError(f"heatmaps take a non-empty relevance, got shape {tuple(r.shape)}")
    if not bool(torch.isfinite(r).all()):
        bad = sorted({int(i) for i in (~torch.isfinite(r)).flatten(1).any(1).nonzero()[:, 0]})
        raise ValueError(f"the relevance of sample(s) {bad[:10]} contains NaN/Inf; a heatmap "
                         "of it would be meaningless. Drop those samples (an explainer raises "
                         "NonFiniteError with the result in .explanation)")
    if r.dim() == 3:
        return r
    if how == "sum":
        return r.sum(1)
    if how == "abs":
        return r.abs().sum(1)
    if how == "pos":
        return r.clamp(min=0).sum(1)
    if how == "norm":
        return r.norm(dim=1)
    raise ValueError(f"reduce must be 'sum', 'abs', 'pos' or 'norm', got {how!r}")


def normalize(maps: torch.Tensor, symmetric: bool = True, quantile: float = 1.0) -> torch.Tensor:
    """Each map (dimension 0 indexes maps) to ``[0, 1]``.

    ``symmetric``: 0 goes to 0.5 and ``±s`` to 0 and 1, with ``s`` the ``quantile`` of ``|R|``
    (1.0: the maximum; 0.99 lets the top 1 % saturate instead of washing out the rest).
    Otherwise ``[0, s]`` goes to ``[0, 1]`` when the map is non-negative and
    ``[min, max]`` to ``[0, 1]`` when it is not. Values beyond are clamped; a zero map is 0.5 /
    0.
    """
    flat = maps.detach().float().flatten(1)
    shape = (-1,) + (1,) * (maps.dim() - 1)
    if symmetric or bool((flat >= 0).all()):
        scale = torch.quantile(flat.abs(), quantile, dim=1).clamp(min=1e-12).reshape(shape)
        return (maps / (2 * scale) + 0.5 if symmetric else maps / scale).clamp(0, 1)
    low = flat.amin(1).reshape(shape)
    high = torch.quantile(flat, quantile, dim=1).reshape(shape)
    return ((maps - low) / (high - low).clamp(min=1e-12)).clamp(0, 1)


def heatmap(relevance: torch.Tensor, cmap: str = "bwr", symmetric: bool | None = None,
            size: int | tuple[int, int] | None = None, reduce: Reduce = "sum",
            quantile: float = 1.0) -> torch.Tensor:
    """Relevance ``(N, C, H, W)`` or ``(N, H, W)`` to RGB images ``(N, 3, H, W)`` in ``[0, 1]``.

    Args:
        cmap: ``"bwr"`` (default: red for, blue against, white zero), ``"seismic"``,
            ``"coldnhot"`` (black zero), ``"hot"``, ``"gray"``.
        symmetric: 0 in the middle of the colormap; default True for the diverging maps
            (bwr, seismic, coldnhot), False for hot and gray.
        size: upsample (nearest) so small maps stay readable: an int (square) or (H, W).
        reduce: how channels become one map (:func:`reduce_channels`).
        quantile: the share of ``|R|`` below full color (:func:`normalize`).
    """
    symmetric = cmap in DIVERGING if symmetric is None else symmetric
    maps = normalize(reduce_channels(relevance, reduce), symmetric, quantile)
    rgb = colorize(maps, cmap).movedim(0, 1)
    return upsample(rgb, size) if size is not None else rgb


def upsample(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of ``(N, C, H, W)`` images (pixels stay visible as squares)."""
    return F.interpolate(images, size=(size, size) if isinstance(size, int) else size,
                         mode="nearest")


def to_image(x: torch.Tensor, mean: tuple[float, ...] | None = None,
             std: tuple[float, ...] | None = None) -> torch.Tensor:
    """Model inputs ``(N, C, H, W)`` as RGB images in ``[0, 1]``: undo ``(x - mean) / std`` when
    given, else stretch each image's range to ``[0, 1]``; one channel becomes gray RGB."""
    x = x.detach().float().cpu()
    if mean is not None and std is not None:
        channels = (1, -1, 1, 1)
        x = (x * torch.tensor(std, dtype=torch.float32).reshape(channels)
             + torch.tensor(mean, dtype=torch.float32).reshape(channels))
    else:
        low = x.flatten(1).amin(1).reshape(-1, 1, 1, 1)
        high = x.flatten(1).amax(1).reshape(-1, 1, 1, 1)
        x = (x - low) / (high - low).clamp(min=1e-12)
    x = x.clamp(0, 1)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def overlay(images: torch.Tensor, relevance: torch.Tensor, cmap: str = "bwr",
            alpha: float = 0.9, symmetric: bool | None = None, reduce: Reduce = "sum",
            quantile: float = 1.0) -> torch.Tensor:
    """The heatmap of ``relevance`` over ``images`` (RGB in ``[0, 1]``): the image in dimmed
    gray, each pixel taking the heatmap's color in proportion to its relevance (``alpha`` at
    full relevance), so irrelevant regions keep the picture. Maps smaller than the images (a
    layer's relevance) are upsampled. The other options are those of :func:`heatmap`."""
    symmetric = cmap in DIVERGING if symmetric is None else symmetric
    maps = normalize(reduce_channels(relevance, reduce), symmetric, quantile)
    if maps.shape[-2:] != images.shape[-2:]:
        maps = upsample(maps.unsqueeze(1), (images.shape[-2], images.shape[-1])).squeeze(1)
    strength = ((maps - 0.5).abs() * 2 if symmetric else maps).unsqueeze(1)
    gray = images.detach().float().cpu().mean(1, keepdim=True).expand(-1, 3, -1, -1)
    base = 0.15 + 0.7 * gray
    return base * (1 - alpha * strength) + colorize(maps, cmap).movedim(0, 1) * alpha * strength


def frames(clip: torch.Tensor, relevance: torch.Tensor, cmap: str = "bwr",
           symmetric: bool | None = None, reduce: Reduce = "sum", quantile: float = 1.0,
           mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None
           ) -> torch.Tensor:
    """A video clip and its relevance, ``(C, T, H, W)`` each (a video model's input and
    ``out.relevance[i]``), as a frame strip ``(2T, 3, H, W)``: the ``T`` frames, then their
    ``T`` heatmaps on one scale for the whole clip, so colors compare across frames.
    ``save_png(frames(x[0], out.relevance[0]), "clip.png", nrow=T)`` writes it as two rows.
    ``mean``/``std`` undo the input normalization (:func:`to_image`); the other options are
    those of :func:`heatmap`."""
    if clip.dim() != 4 or relevance.shape != clip.shape:
        raise ValueError(f"frames takes one clip (C, T, H, W) and its relevance of the same "
                         f"shape, got {tuple(clip.shape)} and {tuple(relevance.shape)}; pass "
                         "x[i] and out.relevance[i]")
    symmetric = cmap in DIVERGING if symmetric is None else symmetric
    maps = reduce_channels(relevance.movedim(1, 0), reduce)  # (T, H, W)
    maps = normalize(maps.unsqueeze(0), symmetric, quantile)[0]  # one scale for the clip
    pixels = clip.detach().float().cpu().movedim(1, 0)  # (T, C, H, W)
    if mean is not None and std is not None:
        pictures = to_image(pixels, mean, std)
    else:  # one range for the clip, not each frame stretched
        pictures = (pixels - pixels.min()) / (pixels.max() - pixels.min()).clamp(min=1e-12)
        pictures = pictures.expand(-1, 3, -1, -1) if pictures.shape[1] == 1 else pictures
    return torch.cat([pictures, colorize(maps, cmap).movedim(0, 1)])


def grid(images: torch.Tensor, nrow: int = 8, padding: int = 2) -> torch.Tensor:
    """Images ``(N, 3, H, W)`` as one ``(3, H', W')`` grid of ``nrow`` per row, white gaps."""
    from torchvision.utils import make_grid

    return make_grid(images.float().cpu(), nrow=nrow, padding=padding, pad_value=1.0)


def save_png(images: torch.Tensor, path: str | Path, nrow: int = 8, padding: int = 2) -> Path:
    """Save images ``(N, 3, H, W)`` (or one ``(3, H, W)``) in ``[0, 1]`` as one PNG grid."""
    picture = images if images.dim() == 3 else grid(images, nrow, padding)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png((picture.clamp(0, 1) * 255).round().to(torch.uint8).cpu(), path)
    return path


def write_png(pixels: torch.Tensor, path: Path) -> None:
    """``uint8`` ``(3, H, W)`` to a PNG file: torchvision.io, or Pillow where torchvision no
    longer encodes images (its codecs are deprecated since 0.29)."""
    try:
        from torchvision.io import write_png as encode
    except ImportError:
        from PIL import Image

        Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(path, format="PNG")
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The image decoding and encoding", DeprecationWarning)
        encode(pixels, str(path))
