"""``lrpfx explain DATA --store DIR``: a dataset of images explained into a store
(``lrpfx.dataset``), on one process or many::

    lrpfx explain photos/ --arch resnet18 --store runs/photos
    torchrun --nproc-per-node 4 -m lrpfx explain photos/ --arch resnet18 --store runs/photos

Without ``--store``, ``lrpfx explain`` writes one heatmap PNG per image (``lrpfx.cli``).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from torch.utils.data import Dataset

import lrpfx
from lrpfx import concepts
from lrpfx.dataset.runner import Options, explain_dataset, rank_and_world
from lrpfx.images import IMAGE_SUFFIXES, InputError, find_images, load_image, preprocess


class ImageFiles(Dataset[torch.Tensor]):
    """Image files, decoded and ImageNet-preprocessed to ``size`` x ``size`` (an unreadable
    file raises ``InputError`` naming it and why)."""

    def __init__(self, paths: list[Path], size: int) -> None:
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return preprocess(load_image(self.paths[index]), self.size)


def add_options(parser: argparse.ArgumentParser) -> None:
    """The dataset options of ``lrpfx explain``."""
    group = parser.add_argument_group(
        "dataset runs (--store; several processes with torchrun; --out is not used)")
    group.add_argument("--store", type=Path, metavar="DIR",
                       help="explain into DIR: float16 relevance-map shards, index.csv, "
                            "manifest.json; a rerun resumes an unfinished run")
    group.add_argument("--shard-size", type=int, default=256,
                       help="items per shard (default: 256)")
    group.add_argument("--workers", type=int, default=2,
                       help="decoding processes per explaining process (default: 2)")
    group.add_argument("--downsample", type=int, default=1, metavar="F",
                       help="store relevance summed over FxF pixel blocks (default: 1)")
    group.add_argument("--map-dtype", default="float16", choices=("float16", "float32"))
    group.add_argument("--layer", help="concept layer (CRP): also store the relevance of "
                                       "each of its channels per image")


def _options(args: argparse.Namespace) -> Options:
    from lrpfx.cli import _target

    try:
        return Options(batch_size=args.batch_size, shard_size=args.shard_size,
                       workers=args.workers, downsample=args.downsample,
                       dtype=args.map_dtype, target=_target(args.target))
    except ValueError as error:
        raise InputError(str(error).replace("_", "-", 1)) from None


def _explainer(args: argparse.Namespace, model: torch.nn.Module) -> lrpfx.Explainer:
    from lrpfx.cli import _compile, composite_for

    if not args.layer:
        return _compile(args, model, args.batch_size)
    try:
        return concepts.compile(model, composite_for(args.rules, args.top_k), layer=args.layer,
                                maxpool=args.maxpool, strip_softmax=True).float()
    except ValueError as error:
        raise InputError(f"--layer: {error}") from None


def _device(args: argparse.Namespace) -> torch.device:
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA device is available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _join_job(device: torch.device) -> bool:
    """Under ``torchrun`` with several processes: join the process group (gloo on CPU, nccl
    on CUDA); returns whether this call did."""
    dist = torch.distributed
    if int(os.environ.get("WORLD_SIZE", 1)) < 2 or not dist.is_available() or \
            dist.is_initialized():
        return False
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def run(args: argparse.Namespace, console: Console) -> int:
    """``lrpfx explain ... --store DIR``; exit status 1 on rank 0 when some items failed."""
    from lrpfx.cli import _check_input, _check_options, _check_target, _load, _target

    args.out = None
    _check_options(args)
    options = _options(args)
    images, others = find_images(args.paths)
    device = _device(args)
    joined = _join_job(device)
    try:
        rank, world = rank_and_world()
        quiet = Console(quiet=True) if rank else console
        for other in others:
            quiet.print(f"[yellow]ignored[/] {escape(str(other))}: not an image file name "
                        f"({' '.join(sorted(IMAGE_SUFFIXES))})", highlight=False)
        if not images:
            raise InputError(f"no images in {', '.join(map(str, args.paths))}")
        loaded = _load(args, quiet, download=not args.no_download)
        explainer = _explainer(args, loaded.model).to(device)
        _check_input(explainer, args)
        _check_target(_target(args.target), explainer, args)
        config: dict[str, Any] = {"arch": args.arch, "weights": loaded.weights,
                                  "rules": args.rules, "maxpool": args.maxpool,
                                  "top_k": args.top_k, "size": args.size}
        start = time.perf_counter()
        manifest = explain_dataset(explainer, ImageFiles(images, args.size), args.store,
                                   names=[str(p) for p in images], options=options,
                                   config=config, device=device, console=console)
        if manifest is None:
            return 0
        seconds, failed = time.perf_counter() - start, manifest["failed"]
        console.print(f"{manifest['items'] - failed} of {manifest['items']} image(s) explained "
                      f"into {escape(str(args.store))} on {world} process(es)"
                      + (f"; [red]{failed} failed[/]" if failed else "")
                      + f" [dim]({seconds:.1f} s, {manifest['items'] / seconds:.1f} images/s)[/]",
                      highlight=False)
        return 1 if failed else 0
    finally:
        if joined:
            torch.distributed.destroy_process_group()
