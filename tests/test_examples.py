"""Each example runs end to end in a tiny setting and writes its pictures."""

from __future__ import annotations

import io
import runpy
from pathlib import Path

import pytest
import torch
from rich.console import Console

from lrpfx import cli
from lrpfx.images import load_image

EXAMPLES = Path(__file__).parent.parent / "examples"
TINY = '''
from torch import nn

def tiny():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3))
'''


def example(name: str) -> dict:
    return runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name=f"example_{name}")


@pytest.fixture(autouse=True)
def _float32():
    torch.set_default_dtype(torch.float32)  # the examples run as users run them


def test_tutorial_vgg16_records_four_depths(tmp_path):
    out = tmp_path / "tutorial.png"
    path = example("tutorial_vgg16")["main"](["--small", "--size", "32", "--out", str(out)])
    picture = load_image(path)
    assert picture.shape == (3, 32 + 4, 7 * 34 + 2)  # 7 tiles: image, 4 depths, R[0], overlay


def test_realtime_on_a_generated_video(tmp_path):
    factory = tmp_path / "tiny.py"
    factory.write_text(TINY)
    png, gif = tmp_path / "rt.png", tmp_path / "rt.gif"
    stats = example("realtime")["main"](["--arch", f"{factory}:tiny", "--size", "32",
                                         "--frames", "4", "--out", str(png), "--gif", str(gif),
                                         "--device", "cpu"])
    assert stats["frames"] == 4 and stats["explain_fps"] > 0 and stats["forward_fps"] > 0
    assert load_image(png).shape == (3, 3 * 34 + 2, 4 * 34 + 2)  # 3 rows of 4 frames
    assert gif.stat().st_size > 0
    again = example("realtime")["main"](["--video", str(gif), "--arch", f"{factory}:tiny",
                                         "--size", "32", "--frames", "2", "--out", str(png),
                                         "--device", "cpu"])
    assert again["frames"] == 2  # read back from the GIF


def test_interactive_occlusions_on_the_digits(tmp_path):
    out = tmp_path / "strip.png"
    result = example("interactive")["main"](["--epochs", "1", "--at", "0,0", "--at", "2,4",
                                             "--out", str(out)])
    assert result["patches"] == 2.0
    strip = load_image(out)
    assert strip.shape[2] == 3 * 66 + 2  # the image and two occlusions, 64 px each


def test_the_demo_runs_the_digits_main_job(tmp_path):
    out = tmp_path / "digits.png"
    console = Console(file=io.StringIO(), width=120)
    assert cli.main(["demo", "--epochs", "1", "--out", str(out)], console) == 0
    assert load_image(out).shape[0] == 3


def test_the_demo_without_scikit_learn_says_what_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    console = Console(file=io.StringIO(), width=200)
    assert cli.main(["demo", "--epochs", "1"], console) == 2
    assert 'pip install "lrpfx[demo]"' in console.file.getvalue()
    assert len(console.file.getvalue().strip().splitlines()) == 1


def test_compile_scaling_prints_the_table_and_explains_a_deep_chain(capsys):
    example("compile_scaling")["main"](["--blocks", "10", "20", "--repeat", "1", "--deep", "400"])
    printed = capsys.readouterr().out
    assert "t(2N)/t(N)" in printed and "  20 │" in printed
    error = float(printed.split("against the logit:")[1].split()[0])
    assert error < 1e-8  # 400 residual adds, LRP-0 in float64: conserved


def test_a_vision_transformer_on_the_digits_explained_by_the_attention_presets(tmp_path):
    out = tmp_path / "vit.png"
    result = example("digits_vit")["main"](["--epochs", "1", "--out", str(out)])
    assert set(result) == {"accuracy", "attn-lrp", "attn-lrp-gamma", "cp-lrp"}
    picture = load_image(out)
    assert picture.shape[1] == 4 * 66 + 2  # the digits and three rows of heatmaps, 64 px each
