"""``lrpfx explain --region CLASS`` on a tiny segmentation model returning a dict: one PNG per
image, the region's relevance and logit printed, a class it does not have refused."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from rich.console import Console

from lrpfx import cli
from lrpfx.heatmap import write_png
from lrpfx.images import build_model, load_image

FACTORY = '''
import torch
from torch import nn
import torch.nn.functional as F

class Segmenter(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.body = nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Conv2d(6, 3, 1)

    def forward(self, x):
        y = self.head(torch.relu(self.body(x)))
        return {"out": F.interpolate(y, size=x.shape[-2:], mode="bilinear")}

def segmenter():
    return Segmenter()

def classifier():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 14 * 14, 5))
'''


def run(*argv: object) -> tuple[int, str]:
    buffer = io.StringIO()
    console = Console(file=buffer, width=300, force_terminal=False, color_system=None)
    return cli.main([str(a) for a in argv], console), buffer.getvalue()


def test_explain_a_region_of_a_segmentation_output(tmp_path: Path):
    (tmp_path / "zoo.py").write_text(FACTORY)
    picture = tmp_path / "a.png"
    write_png((torch.rand(3, 20, 24, generator=torch.Generator().manual_seed(0)) * 255)
              .to(torch.uint8), picture)
    out = tmp_path / "out"
    status, text = run("explain", picture, "--arch", f"{tmp_path / 'zoo.py'}:segmenter",
                       "--region", 1, "--size", 16, "--out", out, "--style", "pair")
    assert status == 0, text
    assert "class 1 predicted at" in text and "region logit" in text
    assert load_image(out / "a.png").shape == (3, 16, 32)
    status, text = run("explain", picture, "--arch", f"{tmp_path / 'zoo.py'}:segmenter",
                       "--region", 3, "--size", 16, "--out", out)
    assert status == 2 and "--region 3: Region: class 3 is out of range" in text
    status, text = run("explain", picture, "--arch", f"{tmp_path / 'zoo.py'}:classifier",
                       "--region", 1, "--size", 16, "--out", out)
    assert status == 2 and "Region needs an output with positions" in text


def test_segmentation_architectures_are_built_by_name():
    model = build_model("lraspp_mobilenet_v3_large")
    assert type(model).__name__ == "LRASPP"
