"""The ``lrpfx`` command line end to end on a folder of generated images with a tiny model:
PNGs written, predictions printed, and one-line errors for a bad image, a bad path, bad weights
and a bad target; ``show`` and the module entry point."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch import nn

from lrpfx import cli, images
from lrpfx.images import load_image

FACTORY = '''
import torch
from torch import nn

def tiny():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(24, 5), nn.Softmax(dim=1))

def other():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(5))
'''


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Three PNGs and a JPEG (in a subfolder) of different sizes, a broken PNG, a text file."""
    from lrpfx.heatmap import write_png

    root = tmp_path / "images"
    (root / "more").mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    for k, (h, w) in enumerate([(40, 50), (64, 48), (33, 33)]):
        write_png((torch.rand(3, h, w, generator=generator) * 255).to(torch.uint8),
                  root / f"img{k}.png")
    from PIL import Image

    Image.new("RGB", (45, 38), (200, 30, 30)).save(root / "more" / "red.jpg")
    (root / "broken.png").write_bytes(b"\x89PNG but not really")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def factory(tmp_path: Path) -> str:
    path = tmp_path / "zoo.py"
    path.write_text(FACTORY)
    return f"{path}:tiny"


def run(*argv: str) -> tuple[int, str]:
    buffer = io.StringIO()
    console = Console(file=buffer, width=300, force_terminal=False, color_system=None)
    status = cli.main([str(a) for a in argv], console)
    return status, buffer.getvalue()


def test_explain_a_folder(folder, factory, tmp_path):
    out = tmp_path / "heatmaps"
    status, text = run("explain", folder, "--arch", factory, "--size", 32, "--out", out,
                       "--batch-size", 3)
    assert status == 1  # one image could not be read, and that is said
    lines = text.splitlines()
    broken = [line for line in lines if "broken.png" in line]
    assert len(broken) == 1
    assert broken[0].startswith(f"error {folder / 'broken.png'}: not a readable image (")
    assert any(line.startswith("ignored") and "notes.txt" in line for line in lines)
    explained = [line for line in lines if "predicted" in line]
    assert len(explained) == 4 and all("relevance sum" in line for line in explained)
    assert "4 of 5 image(s) explained" in text and "1 failed" in text
    written = sorted(p.name for p in out.iterdir())
    assert written == ["img0.png", "img1.png", "img2.png", "red.png"]
    assert load_image(out / "img1.png").shape == (3, 32, 32)


def test_pair_style_target_and_weights(folder, factory, tmp_path):
    model = images.load_model(factory).model
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2)
    weights = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "pairs"
    status, text = run("explain", folder / "img0.png", folder / "more", "--arch", factory,
                       "--weights", weights, "--size", 32, "--out", out, "--style", "pair",
                       "--target", 3, "--rules", "epsilon-plus-flat", "--top-k", 20)
    assert status == 0, text
    assert f"weights {weights}" in text
    assert text.count("explained 3:") == 2
    assert load_image(out / "red.png").shape == (3, 32, 64)  # image | heatmap


@pytest.mark.parametrize(("args", "message"), [
    (["explain", "{folder}/nothere", "{folder}"], "no such file or folder: {folder}/nothere"),
    (["explain", "{folder}", "--weights", "{folder}/notes.txt"], "not a PyTorch weights file"),
    (["explain", "{folder}", "--weights", "{tmp}/other.pt"], "does not fit"),
    (["explain", "{folder}", "--target", "9"], "--target 9 is not a class of this model (0..4)"),
    (["explain", "{folder}", "--target", "cat"], "--target must be a class index or 'pred'"),
    (["explain", "{folder}/notes.txt"], "not a readable image"),
    (["show", "--arch", "no_such_model"], "unknown architecture 'no_such_model'"),
    (["show", "--arch", "{tmp}/missing.py:tiny"], "no such file"),
])
def test_errors_are_one_line(args, message, folder, factory, tmp_path):
    torch.save({"0.weight": torch.zeros(1)}, tmp_path / "other.pt")
    fill = {"folder": folder, "tmp": tmp_path}
    argv = [a.format(**fill) for a in args]
    if argv[0] == "explain":
        argv += ["--arch", factory, "--size", "32", "--out", str(tmp_path / "o")]
    status, text = run(*argv)
    assert status in (1, 2)
    errors = [line for line in text.splitlines() if line.startswith(("lrpfx: error", "error "))]
    assert len(errors) == 1 and message.format(**fill) in errors[0], text


def test_random_weights_are_announced(folder, tmp_path, monkeypatch):
    """A torchvision name without --weights: pretrained weights when they can be had, else a
    clear note. Here the download fails (as offline) and the model is replaced by a tiny one."""
    tiny = images._from_import_path(f"{_write(tmp_path)}:tiny")
    monkeypatch.setattr(images, "build_model", lambda arch: tiny)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(url: str, **kwargs: object) -> None:
        raise OSError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    status, text = run("explain", folder / "img0.png", "--arch", "vgg16", "--size", 32,
                       "--out", tmp_path / "o")
    assert status == 0
    assert "vgg16: weights RANDOM (could not download https://download.pytorch.org" in text
    assert "meaningless" in text
    assert "predicted" in text and any(name in text for name in ("tench", "goldfish",
                                                                  "great white shark",
                                                                  "tiger shark", "hammerhead"))
    status, text = run("explain", folder / "img0.png", "--arch", "vgg16", "--size", 32,
                       "--out", tmp_path / "o", "--no-download")
    assert "RANDOM" in text and "downloading is off" in text


def _write(tmp_path: Path) -> Path:
    path = tmp_path / "zoo2.py"
    path.write_text(FACTORY)
    return path


def test_show_prints_the_annotated_graph(factory):
    status, text = run("show", "--arch", factory, "--size", 16, "--rules", "epsilon-plus")
    assert status == 0
    assert "output softmax stripped" in text and "ZPlus()" in text and "6×16×16" in text


def test_the_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "lrpfx", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0
    assert all(command in result.stdout for command in ("explain", "show", "demo"))


def test_a_model_that_cannot_be_explained_is_one_error(tmp_path):
    path = tmp_path / "odd.py"
    path.write_text("from torch import nn\n\nclass Odd(nn.Module):\n"
                    "    def forward(self, x):\n        return x.sort(1).values.sum(1)\n\n"
                    "def odd():\n    return Odd()\n")
    status, text = run("show", "--arch", f"{path}:odd", "--size", 8)
    assert status == 2 and "lrpfx: UnsupportedOperationError" in text


def test_composites_for_imagenet_pixels():
    composite = cli.composite_for("epsilon-gamma-box")
    zbox = composite.entries[0][1]
    torch.testing.assert_close(zbox.low.flatten(), (0 - torch.tensor(images.IMAGENET_MEAN))
                               / torch.tensor(images.IMAGENET_STD), check_dtype=False)
    assert isinstance(cli.composite_for("epsilon-plus", top_k=5), cli.filters.Filtered)
    assert isinstance(nn.Module(), nn.Module)


def test_the_console_script_is_installed():
    """pyproject's [project.scripts]; any installed copy of lrpfx's metadata (a stale egg-info
    in the source tree may shadow the installed one) declares it."""
    from importlib.metadata import distributions

    scripts = {ep.value for d in distributions() if d.metadata["Name"] == "lrpfx"
               for ep in d.entry_points if ep.group == "console_scripts" and ep.name == "lrpfx"}
    assert scripts == {"lrpfx.cli:main"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the message without a GPU")
def test_cuda_without_a_gpu_is_one_error(folder, factory):
    status, text = run("explain", folder, "--arch", factory, "--device", "cuda")
    assert status == 2
    assert text.strip() == "lrpfx: error: --device cuda: no CUDA device is available"


SWIN = '''
import torch, torchvision

def swin():
    torch.manual_seed(0)
    return torchvision.models.SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[2], num_heads=[2], window_size=[4, 4],
        num_classes=5)
'''


def test_a_model_that_needs_static_shapes_is_explained_in_padded_batches(folder, tmp_path):
    """Swin is compiled for ``--batch-size`` images of ``--size``; the last batch (2 of 3
    images) is padded with zero images, whose explanations are dropped."""
    path = tmp_path / "swin_zoo.py"
    path.write_text(SWIN)
    out = tmp_path / "heatmaps"
    status, text = run("explain", folder, "--arch", f"{path}:swin", "--size", 36, "--out", out,
                       "--batch-size", 3)
    assert status == 1 and "4 of 5 image(s) explained" in text  # broken.png fails, as above
    assert sorted(p.name for p in out.iterdir()) == ["img0.png", "img1.png", "img2.png",
                                                     "red.png"]
