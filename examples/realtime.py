"""Real-time LRP: frames from a camera or a video through the explainer, frames per second printed.

As the fast-LRP-for-VGG project's real-time loop: every frame is preprocessed, explained (one
generated program: forward and relevance together) and turned into a heatmap. Sources:

    --camera 0            a webcam (needs opencv-python)
    --video clip.gif      an animated GIF (torchvision), or any video OpenCV can read
    (nothing)             a generated video: shapes moving over a gradient

Writes a PNG strip of a few frames over their heatmaps, and with ``--gif`` the whole heatmap
video. Random VGG-16 weights unless ``--weights`` is given or torchvision's are cached.

    python examples/realtime.py [--arch vgg16] [--frames 16] [--device cuda] [--torch-compile]
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from rich.console import Console

import lrpfx
from lrpfx.cli import composite_for
from lrpfx.heatmap import heatmap, overlay, save_png, to_image
from lrpfx.images import IMAGENET_MEAN, IMAGENET_STD, load_model, preprocess


def generated_video(frames: int, height: int = 240, width: int = 320) -> Iterator[torch.Tensor]:
    """``uint8`` RGB frames ``(3, H, W)``: a disc and a square crossing a color gradient."""
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    background = torch.stack([0.3 + 0.4 * x, 0.5 + 0.2 * y, 0.8 - 0.4 * x])
    aspect = width / height
    for t in torch.linspace(0, 1, frames):
        cx, cy = 0.15 + 0.7 * t, 0.5 + 0.25 * torch.sin(6.28 * t)
        disc = (((x - cx) * aspect) ** 2 + (y - cy) ** 2 < 0.015).float()
        square = ((x - (0.85 - 0.6 * t)).abs() < 0.08) & ((y - 0.3).abs() < 0.1)
        frame = background * (1 - disc) + torch.tensor([0.95, 0.85, 0.1]).reshape(3, 1, 1) * disc
        frame = torch.where(square, torch.tensor([0.8, 0.1, 0.1]).reshape(3, 1, 1), frame)
        yield (frame * 255).to(torch.uint8)


def video_frames(path: Path, frames: int) -> Iterator[torch.Tensor]:
    """Frames of an animated GIF (torchvision) or of any video OpenCV reads."""
    if path.suffix.lower() == ".gif":
        from torchvision.io import decode_gif, read_file

        with warnings.catch_warnings():  # torchvision 0.29 deprecates its image codecs
            warnings.simplefilter("ignore", DeprecationWarning)
            video = decode_gif(read_file(str(path)))
        yield from (video if video.dim() == 4 else video[None])[:frames]
        return
    yield from _opencv(str(path), frames)


def camera_frames(index: int, frames: int) -> Iterator[torch.Tensor]:
    yield from _opencv(index, frames)


def _opencv(source: str | int, frames: int) -> Iterator[torch.Tensor]:
    try:
        import cv2  # type: ignore[import-not-found]
    except ImportError:
        raise SystemExit("cameras and non-GIF videos need OpenCV: pip install opencv-python "
                         "(or run without --camera/--video on a generated video)") from None
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        raise SystemExit(f"cannot open {source!r} with OpenCV")
    try:
        for _ in range(frames):
            ok, bgr = capture.read()
            if not ok:
                return
            yield torch.from_numpy(bgr[..., ::-1].copy()).permute(2, 0, 1)
    finally:
        capture.release()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--camera", type=int, metavar="INDEX")
    source.add_argument("--video", type=Path)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--arch", default="vgg16", help="torchvision name or module:factory")
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--rules", default="epsilon-gamma-box")
    parser.add_argument("--top-k", type=float, metavar="PERCENT", help="relevance filter")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--torch-compile", action="store_true")
    parser.add_argument("--no-download", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("out/realtime.png"))
    parser.add_argument("--gif", type=Path, help="also write the heatmap video as a GIF")
    args = parser.parse_args(argv)
    console = Console()

    loaded = load_model(args.arch, args.weights, download=not args.no_download)
    console.print(f"{args.arch} weights: {loaded.weights}", style="red" if loaded.random else "")
    model = loaded.model.to(args.device)
    explainer = lrpfx.compile(model, composite_for(args.rules, args.top_k), maxpool="avg",
                              torch_compile=args.torch_compile, strip_softmax=True)
    if args.camera is not None:
        frames = camera_frames(args.camera, args.frames)
    elif args.video is not None:
        frames = video_frames(args.video, args.frames)
    else:
        frames = generated_video(args.frames)
        console.print(f"no camera or video given: {args.frames} generated frames")
    stats = run(explainer, model, frames, args, console)
    return stats


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(explainer: lrpfx.Explainer, model: torch.nn.Module, frames: Iterator[torch.Tensor],
        args: argparse.Namespace, console: Console) -> dict[str, float]:
    """The loop: preprocess, explain, heatmap; FPS of the loop and of the model alone."""
    shown, videos, explain_time, count = [], [], 0.0, 0
    loop_start = time.perf_counter()
    for frame in frames:
        x = preprocess(frame, args.size).unsqueeze(0).to(args.device)
        _sync(args.device)
        start = time.perf_counter()
        out = explainer(x)
        _sync(args.device)
        explain_time += time.perf_counter() - start if count else 0.0  # frame 0 warms up
        image = to_image(x.cpu(), IMAGENET_MEAN, IMAGENET_STD)
        heat = heatmap(out.relevance.cpu())
        videos.append(torch.cat([image, heat], dim=-1)[0])
        shown.append((image, overlay(image, out.relevance.cpu()), heat))
        count += 1
        if count % 8 == 0:
            console.print(f"frame {count}: {count / (time.perf_counter() - loop_start):.2f} FPS")
    loop = time.perf_counter() - loop_start
    if count == 0:
        raise SystemExit("no frames could be read")
    x = preprocess(next(generated_video(1)), args.size).unsqueeze(0).to(args.device)
    with torch.no_grad():
        model(x)  # warm-up
        _sync(args.device)
        start = time.perf_counter()
        for _ in range(3):
            model(x)
        _sync(args.device)
        forward = (time.perf_counter() - start) / 3
    stats = {"frames": count, "loop_fps": count / loop,
             "explain_fps": (count - 1) / explain_time if count > 1 else float("nan"),
             "forward_fps": 1 / forward}
    console.print(f"{count} frames of {args.size}x{args.size} on {args.device}: loop "
                  f"{stats['loop_fps']:.2f} FPS (with decoding and heatmaps), explainer "
                  f"{stats['explain_fps']:.2f} FPS, model forward alone {stats['forward_fps']:.2f} "
                  "FPS")
    _write(shown, videos, args, console)
    return stats


def _write(shown: list[tuple[torch.Tensor, ...]], videos: list[torch.Tensor],
           args: argparse.Namespace, console: Console) -> None:
    picks = sorted({round(i * (len(shown) - 1) / 5) for i in range(6)})
    rows = [torch.cat([shown[i][row] for i in picks]) for row in range(3)]
    path = save_png(torch.cat(rows), args.out, nrow=len(picks))
    console.print(f"wrote {path}: frames {picks}; rows: frame, heatmap over it, heatmap")
    if args.gif:
        from PIL import Image

        images = [Image.fromarray((v.permute(1, 2, 0) * 255).byte().numpy()) for v in videos]
        args.gif.parent.mkdir(parents=True, exist_ok=True)
        images[0].save(args.gif, save_all=True, append_images=images[1:], duration=100, loop=0)
        console.print(f"wrote {args.gif}: {len(images)} frames, image | heatmap")


if __name__ == "__main__":
    main()
