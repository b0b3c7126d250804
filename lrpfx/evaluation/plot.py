"""The curves PNG, drawn with Pillow (a torchvision dependency; no matplotlib): two panels,
most-relevant-first and least-relevant-first, one mean curve per method, and a legend with each
method's ABPC."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

# distinguishable colors (Tableau 10 and a gray), cycled
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207), (127, 127, 127),
           (0, 0, 0))
WIDTH, HEIGHT, MARGIN = 420, 320, 50


@dataclass(frozen=True)
class Series:
    """One method: its mean MoRF and LeRF curves and its headline."""

    name: str
    morf: list[float]
    lerf: list[float]
    abpc: float


def _ascii(text: str) -> str:
    """Pillow's default font has no ``×``."""
    return text.replace("×", "x")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed size
        return ImageFont.load_default()


def _range(series: list[Series]) -> tuple[float, float]:
    values = [v for s in series for v in (*s.morf, *s.lerf) if v == v]
    low, high = min([0.0, *values]), max([1.0, *values])
    return low, high + 0.05 * (high - low)


def _panel(draw: ImageDraw.ImageDraw, left: int, top: int, name: str, curves: list[list[float]],
           y_range: tuple[float, float]) -> None:
    """Axes, ticks and one polyline per curve inside a WIDTH × HEIGHT box at (left, top)."""
    font = _font(12)
    x0, y0, x1, y1 = left + MARGIN, top + 30, left + WIDTH - 10, top + HEIGHT - 40
    low, high = y_range
    to_y = lambda v: y1 - (v - low) / (high - low) * (y1 - y0)  # noqa: E731
    draw.rectangle((x0, y0, x1, y1), outline=(0, 0, 0))
    for k in range(5):
        fx = k / 4
        px = x0 + fx * (x1 - x0)
        draw.line((px, y1, px, y1 + 4), fill=(0, 0, 0))
        draw.text((px - 10, y1 + 6), f"{fx:.2f}", fill=(0, 0, 0), font=font)
        v = low + k / 4 * (high - low)
        draw.line((x0 - 4, to_y(v), x0, to_y(v)), fill=(0, 0, 0))
        draw.line((x0 + 1, to_y(v), x1 - 1, to_y(v)), fill=(230, 230, 230))
        draw.text((left + 4, to_y(v) - 7), f"{v:.2f}", fill=(0, 0, 0), font=font)
    if low < 0 < high:
        draw.line((x0, to_y(0), x1, to_y(0)), fill=(160, 160, 160))
    draw.text((x0, top + 8), name, fill=(0, 0, 0), font=_font(14))
    draw.text(((x0 + x1) / 2 - 60, y1 + 22), "fraction of patches removed", fill=(0, 0, 0),
              font=font)
    for k, curve in enumerate(curves):
        steps = max(1, len(curve) - 1)
        points = [(x0 + i / steps * (x1 - x0), to_y(v)) for i, v in enumerate(curve)]
        draw.line(points, fill=PALETTE[k % len(PALETTE)], width=2)


def curves_png(series: list[Series], path: Path, ylabel: str, caption: str) -> Path:
    """Draw the mean curves of ``series`` into ``path``."""
    legend_width = 230
    image = Image.new("RGB", (2 * WIDTH + legend_width, HEIGHT + 50), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    y_range = _range(series)
    _panel(draw, 0, 40, "MoRF (most relevant first): lower is better",
           [s.morf for s in series], y_range)
    _panel(draw, WIDTH, 40, "LeRF (least relevant first): higher is better",
           [s.lerf for s in series], y_range)
    draw.text((8, 6), _ascii(caption), fill=(0, 0, 0), font=_font(11))
    draw.text((8, 22), f"y: {ylabel}, mean over samples", fill=(90, 90, 90), font=_font(11))
    font = _font(12)
    draw.text((2 * WIDTH + 10, 60), "method (ABPC)", fill=(0, 0, 0), font=_font(13))
    for k, s in enumerate(series):
        y = 84 + 18 * k
        color = PALETTE[k % len(PALETTE)]
        draw.line((2 * WIDTH + 10, y + 7, 2 * WIDTH + 34, y + 7), fill=color, width=3)
        label = _ascii(f"{s.name} ({s.abpc:.3f})")
        draw.text((2 * WIDTH + 40, y), label, fill=(0, 0, 0), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
