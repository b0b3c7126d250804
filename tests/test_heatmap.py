"""Heatmaps: colors at known values for every colormap, normalization, channel reduction,
overlays, and PNG files read back."""

from __future__ import annotations

import pytest
import torch

from lrpfx import heatmap as hm
from lrpfx.images import load_image

BLUE, WHITE, RED, BLACK = (0.0, 0.0, 1.0), (1.0, 1.0, 1.0), (1.0, 0.0, 0.0), (0.0, 0.0, 0.0)
KNOWN = [
    ("bwr", 0.0, BLUE), ("bwr", 0.5, WHITE), ("bwr", 1.0, RED), ("bwr", 0.75, (1.0, 0.5, 0.5)),
    ("bwr", 0.25, (0.5, 0.5, 1.0)),
    ("seismic", 0.0, (0.0, 0.0, 0.3)), ("seismic", 0.25, BLUE), ("seismic", 0.5, WHITE),
    ("seismic", 0.75, RED), ("seismic", 1.0, (0.5, 0.0, 0.0)), ("seismic", 0.875, (0.75, 0, 0)),
    ("coldnhot", 0.0, (0.0, 1.0, 1.0)), ("coldnhot", 0.25, BLUE), ("coldnhot", 0.5, BLACK),
    ("coldnhot", 2 / 3, RED), ("coldnhot", 5 / 6, (1.0, 1.0, 0.0)), ("coldnhot", 1.0, WHITE),
    ("hot", 0.0, BLACK), ("hot", 1 / 3, RED), ("hot", 0.5, (1.0, 0.5, 0.0)), ("hot", 1.0, WHITE),
    ("gray", 0.0, BLACK), ("gray", 0.3, (0.3, 0.3, 0.3)), ("gray", 1.0, WHITE),
]


@pytest.mark.parametrize(("cmap", "value", "rgb"), KNOWN)
def test_colormap_colors_at_known_values(cmap, value, rgb):
    color = hm.colorize(torch.tensor([value]), cmap)[:, 0]
    torch.testing.assert_close(color, torch.tensor(rgb, dtype=torch.float32), atol=1e-6, rtol=0)


def test_colorize_clamps_and_keeps_the_shape():
    values = torch.tensor([[-1.0, 2.0], [0.5, 0.5]])
    rgb = hm.colorize(values, "bwr")
    assert rgb.shape == (3, 2, 2)
    assert rgb[:, 0, 0].tolist() == list(BLUE) and rgb[:, 0, 1].tolist() == list(RED)
    with pytest.raises(ValueError, match="unknown colormap 'jet'.*bwr"):
        hm.colorize(values, "jet")


def test_normalize_symmetric_and_not():
    maps = torch.tensor([[-2.0, 0.0, 1.0]])
    assert hm.normalize(maps, symmetric=True).tolist() == [[0.0, 0.5, 0.75]]
    assert hm.normalize(maps, symmetric=False).tolist() == [[0.0, 2 / 3, 1.0]]
    positive = torch.tensor([[0.0, 1.0, 4.0]])
    assert hm.normalize(positive, symmetric=False).tolist() == [[0.0, 0.25, 1.0]]
    # each map on its own scale; a zero map is the center (symmetric) or 0
    both = torch.tensor([[1.0, -1.0], [10.0, 0.0]])
    assert hm.normalize(both).tolist() == [[1.0, 0.0], [1.0, 0.5]]
    assert hm.normalize(torch.zeros(1, 4)).tolist() == [[0.5] * 4]


def test_quantile_saturates_the_outliers():
    maps = torch.cat([torch.linspace(0, 1, 100), torch.tensor([100.0])])[None]  # 101 values
    plain = hm.normalize(maps, symmetric=False)
    clipped = hm.normalize(maps, symmetric=False, quantile=0.99)  # the 100th value: 1.0
    assert plain[0, 99] == pytest.approx(0.01) and plain[0, -1] == 1.0
    assert clipped[0, 99] == pytest.approx(1.0, abs=1e-3)
    assert clipped[0, 49] == pytest.approx(49 / 99, abs=1e-3)
    assert clipped[0, -1] == 1.0


def test_channel_reductions():
    r = torch.tensor([[[[1.0]], [[-3.0]], [[2.0]]]])  # (1, 3, 1, 1)
    assert hm.reduce_channels(r, "sum").item() == 0.0
    assert hm.reduce_channels(r, "abs").item() == 6.0
    assert hm.reduce_channels(r, "pos").item() == 3.0
    assert hm.reduce_channels(r, "norm").item() == pytest.approx(14**0.5)
    with pytest.raises(ValueError, match="reduce must be"):
        hm.reduce_channels(r, "max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        hm.reduce_channels(torch.zeros(2, 3))


def test_heatmap_signs_colors_and_size():
    relevance = torch.zeros(2, 3, 4, 4)
    relevance[0, :, 0, 0] = 1.0   # for: red
    relevance[0, :, 0, 1] = -1.0  # against: blue
    rgb = hm.heatmap(relevance)
    assert rgb.shape == (2, 3, 4, 4) and rgb.dtype == torch.float32
    assert rgb[0, :, 0, 0].tolist() == list(RED) and rgb[0, :, 0, 1].tolist() == list(BLUE)
    assert rgb[0, :, 3, 3].tolist() == list(WHITE) and (rgb[1] == 1).all()  # zero is white
    hot = hm.heatmap(relevance.abs(), "hot")  # unsigned maps start at black
    assert hot[0, :, 0, 0].tolist() == list(WHITE) and hot[0, :, 3, 3].tolist() == list(BLACK)
    assert hm.heatmap(relevance, size=8).shape == (2, 3, 8, 8)
    assert hm.heatmap(relevance, size=(8, 12)).shape == (2, 3, 8, 12)
    assert hm.heatmap(relevance[:, 0]).shape == (2, 3, 4, 4)  # (N, H, W) too


def test_overlay_keeps_the_picture_where_nothing_is_relevant():
    images = torch.rand(1, 3, 4, 4)
    relevance = torch.zeros(1, 1, 4, 4)
    relevance[0, 0, 1, 1] = 2.0
    out = hm.overlay(images, relevance, alpha=1.0)
    gray = images.mean(1, keepdim=True).expand(-1, 3, -1, -1)
    expected = (0.15 + 0.7 * gray).float()
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[1, 1] = False
    torch.testing.assert_close(out[..., mask], expected[..., mask])
    assert out[0, :, 1, 1].tolist() == list(RED)  # full relevance, alpha 1: the pure color
    small = hm.overlay(images, relevance[..., ::2, ::2])  # a layer's coarser map is upsampled
    assert small.shape == images.shape


def test_to_image_undoes_normalization_and_grays_one_channel():
    pixels = torch.rand(2, 3, 5, 5)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    x = (pixels - torch.tensor(mean).reshape(1, 3, 1, 1)) / torch.tensor(std).reshape(1, 3, 1, 1)
    torch.testing.assert_close(hm.to_image(x, mean, std), pixels.float(), atol=1e-6, rtol=0)
    gray = hm.to_image(torch.tensor([[[[2.0, 4.0]]]]))
    assert gray.shape == (1, 3, 1, 2) and gray[0, :, 0].tolist() == [[0.0, 1.0]] * 3


def test_png_files_hold_the_colors(tmp_path):
    images = hm.heatmap(torch.tensor([[[-1.0, 0.0, 1.0]]]))  # blue, white, red
    path = hm.save_png(images, tmp_path / "sub" / "one.png")
    pixels = load_image(path)
    assert pixels.shape == (3, 1, 3)  # one image: no grid border
    assert pixels[:, 0].T.tolist() == [[0, 0, 255], [255, 255, 255], [255, 0, 0]]
    grid = hm.save_png(torch.zeros(5, 3, 4, 4), tmp_path / "grid.png", nrow=2, padding=1)
    assert load_image(grid).shape == (3, 3 * 5 + 1, 2 * 5 + 1)
