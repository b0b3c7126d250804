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
from lrpfx.dataset.maximization import maximize, read_manifest, reference_grid
from lrpfx.dataset.runner import Options, explain_dataset, rank_and_world
from lrpfx.images import IMAGENET_MEAN, IMAGENET_STD, InputError, load_image, preprocess


class ImageFiles(Dataset[torch.Tensor]):
    """Image files, decoded and ImageNet-preprocessed to ``size`` x ``size`` (an unreadable
    file raises ``InputError`` naming it and why)."""

    def __init__(self, paths: list[Path], size: int) -> None:
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return preprocess(load_image(self.paths[index]), self.size)


DEFAULTS = {"shard_size": 256, "workers": 2, "downsample": 1, "map_dtype": "float16",
            "layer": None, "maximize": 0}


def add_options(parser: argparse.ArgumentParser) -> None:
    """The dataset options of ``lrpfx explain``."""
    group = parser.add_argument_group(
        "dataset runs (--store; several processes with torchrun; --out is not used)")
    group.add_argument("--store", type=Path, metavar="DIR",
                       help="explain into DIR: float16 relevance-map shards, index.csv, "
                            "manifest.json; a rerun resumes an unfinished run")
    group.add_argument("--shard-size", type=int, default=DEFAULTS["shard_size"],
                       help="items per shard (default: 256)")
    group.add_argument("--workers", type=int, default=DEFAULTS["workers"],
                       help="decoding processes per explaining process (default: 2)")
    group.add_argument("--downsample", type=int, default=DEFAULTS["downsample"], metavar="F",
                       help="store relevance summed over FxF pixel blocks (default: 1)")
    group.add_argument("--map-dtype", default="float16", choices=("float16", "float32"))
    group.add_argument("--layer", help="concept layer (CRP): also store the relevance of "
                                       "each of its channels per image")
    group.add_argument("--maximize", type=int, default=DEFAULTS["maximize"], metavar="K",
                       help="with --layer: the K most relevant images of every channel and "
                            "their regions (relevance maximization; then: lrpfx grid DIR C)")


def check_unused(args: argparse.Namespace) -> None:
    """Without ``--store``: refuse the dataset options, which would be silently ignored."""
    given = [f"--{name.replace('_', '-')}" for name, default in DEFAULTS.items()
             if getattr(args, name) != default]
    if given:
        raise InputError(f"{', '.join(given)} only apply with --store DIR (a dataset run); "
                         "without it, lrpfx explain writes one heatmap PNG per image")


def _options(args: argparse.Namespace) -> Options:
    target = None if args.target == "pred" else int(args.target)  # checked by lrpfx.cli
    try:
        return Options(batch_size=args.batch_size, shard_size=args.shard_size,
                       workers=args.workers, downsample=args.downsample,
                       dtype=args.map_dtype, target=target)
    except ValueError as error:
        raise InputError(str(error).replace("_", "-", 1)) from None


def setup(args: argparse.Namespace, console: Console) -> Console:
    """Before ``lrpfx explain --store`` loads anything: check the dataset options, join the
    process group under ``torchrun`` (gloo on CPU, nccl on CUDA, each process on the GPU of its
    ``LOCAL_RANK``); returns the console of this process (a quiet one but on rank 0: the
    failures of every process are in the index)."""
    args.out = None  # no PNGs
    if args.maximize and not args.layer:
        raise InputError("--maximize needs --layer (the layer whose channels are ranked)")
    if args.maximize < 0:
        raise InputError(f"--maximize must be a positive number of images, got {args.maximize}")
    if args.device == "cuda" and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist = torch.distributed
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and dist.is_available() and \
            not dist.is_initialized():
        dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    return console if rank_and_world()[0] == 0 else Console(quiet=True)


def compile_concepts(args: argparse.Namespace, model: torch.nn.Module,
                     composite: Any) -> concepts.ConceptExplainer:
    """The explainer for ``--layer``: a ``ConceptExplainer`` of that layer, float32."""
    try:
        return concepts.compile(model, composite, layer=args.layer, maxpool=args.maxpool,
                                strip_softmax=True).float()
    except ValueError as error:
        raise InputError(f"--layer: {error}") from None


def run(args: argparse.Namespace, console: Console, explainer: lrpfx.Explainer,
        images: list[Path], weights: str) -> int:
    """Explain ``images`` into ``--store`` on this process's shards; on rank 0 wait for the
    others, write the index and the manifest and report. Exit status: 1 on rank 0 when some
    images could not be read, else 0."""
    config: dict[str, Any] = {"arch": args.arch, "weights": weights, "rules": args.rules,
                              "maxpool": args.maxpool, "top_k": args.top_k, "size": args.size}
    try:
        start = time.perf_counter()
        manifest = explain_dataset(explainer, ImageFiles(images, args.size), args.store,
                                   names=[str(p) for p in images], options=_options(args),
                                   config=config, device=args.device, console=console)
        if manifest is None:
            if args.maximize:  # a share of the top items' regions; rank 0 joins them
                maximize(explainer, ImageFiles(images, args.size), args.store,  # type: ignore[arg-type]
                         args.maximize, device=args.device)
            return 0
        seconds, failed, items = time.perf_counter() - start, manifest["failed"], \
            manifest["items"]
        console.print(f"{items - failed} of {items} image(s) explained into "
                      f"{escape(str(args.store))} on {rank_and_world()[1]} process(es)"
                      + (f"; [red]{failed} failed[/] (listed in index.csv)" if failed else "")
                      + f" [dim]({seconds:.1f} s, {items / seconds:.1f} images/s)[/]",
                      highlight=False, soft_wrap=True)
        if args.maximize:
            maximize(explainer, ImageFiles(images, args.size), args.store,  # type: ignore[arg-type]
                     args.maximize, device=args.device)
            console.print(f"the {args.maximize} most relevant images of every channel of "
                          f"{args.layer}: {escape(str(args.store / 'maximization.csv'))}",
                          highlight=False, soft_wrap=True)
        return 1 if failed else 0
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def add_parsers(commands: Any) -> None:
    """``lrpfx grid``."""
    grid = commands.add_parser("grid", help="a PNG of the most relevant image regions of one "
                               "channel, from a store made with --layer and --maximize")
    grid.add_argument("store", type=Path, metavar="STORE")
    grid.add_argument("channel", type=int, metavar="CHANNEL")
    grid.add_argument("--out", type=Path, help="the PNG (default: STORE/grid-CHANNEL.png)")
    grid.add_argument("--tile", type=int, default=96, help="pixels per region (default: 96)")


def grid_command(args: argparse.Namespace, console: Console) -> int:
    """``lrpfx grid STORE CHANNEL``: ``maximization.reference_grid`` of the store's images."""
    config = read_manifest(args.store)["config"]
    if "size" not in config:
        raise InputError(f"{args.store}: not a store of image files (lrpfx explain --store)")
    from lrpfx.dataset.store import read_index

    paths = [Path(row["path"]) for row in read_index(args.store)]
    out = args.out or args.store / f"grid-{args.channel}.png"
    reference_grid(args.store, args.channel, ImageFiles(paths, config["size"]), out,
                   IMAGENET_MEAN, IMAGENET_STD, args.tile)
    console.print(f"channel {args.channel} of {config['layer']}: {escape(str(out))}",
                  highlight=False, soft_wrap=True)
    return 0
