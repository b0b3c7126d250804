"""Dataset-scale explanation with torchrun: 1 process against 2, a killed run resumed, and the
throughput of each (CPU, gloo).

    python examples/dataset_scale.py [--images 300] [--size 64] [--work out/dataset_scale]

It generates ``--images`` PNG images (and one unreadable file), explains them with a small
CNN (``tiny_cnn`` below, fixed random weights) into a store with ``torchrun
--standalone --nproc-per-node 1`` and ``2``, checks that both stores hold byte-identical
shards and index, stops a 2-process run after its first shards (``LRPFX_STOP_AFTER_SHARDS``)
and kills another one with SIGKILL, resumes both, checks them again, and prints images per
second of each run.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve()


def tiny_cnn() -> nn.Module:
    """A small ImageNet-shaped CNN (3 x H x W -> 10 classes) with fixed random weights."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
            nn.Flatten(), nn.Linear(128, 10),
        ).eval()


def make_images(folder: Path, count: int, size: int = 48) -> list[Path]:
    """``count`` PNG images of coloured blobs (fixed seed) and one file that is not an image."""
    from lrpfx.heatmap import save_png

    generator = torch.Generator().manual_seed(1)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for k in range(count):
        centre = torch.rand(2, generator=generator) * size
        radius = 4 + torch.rand(1, generator=generator) * size / 3
        blob = (((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) < radius ** 2).float()
        colour = torch.rand(3, 1, 1, generator=generator)
        noise = torch.rand(3, size, size, generator=generator) * 0.3
        paths.append(save_png(blob * colour + noise, folder / f"img{k:05d}.png"))
    (folder / "broken.png").write_bytes(b"this is not a png")
    return paths


def explain(data: Path, store: Path, processes: int, *extra: str,
            env: dict[str, str] | None = None) -> tuple[int, float, float]:
    """``torchrun --standalone --nproc-per-node P -m lrpfx explain DATA --store STORE``;
    returns the exit status, the wall time of the whole command and the seconds the run
    itself took (as it reports them: from the first image to the index; nan if it did not
    finish)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={processes}", "-m", "lrpfx", "explain", str(data),
               "--arch", f"{HERE}:tiny_cnn", "--store", str(store), "--rules", "epsilon-plus",
               *extra]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=HERE.parent.parent, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    wall = time.perf_counter() - start
    found = re.search(r"\(([0-9.]+) s, [0-9.]+ images/s\)", done.stdout)
    return done.returncode, wall, float(found.group(1)) if found else float("nan")


def kill_midway(data: Path, store: Path, processes: int, *extra: str) -> int:
    """Start the run, SIGKILL torchrun and its workers as soon as two shards are committed;
    returns how many were then."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={processes}", "-m", "lrpfx", "explain", str(data),
               "--arch", f"{HERE}:tiny_cnn", "--store", str(store), "--rules", "epsilon-plus",
               *extra]
    job = subprocess.Popen(command, cwd=HERE.parent.parent, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    while job.poll() is None and len(list(store.glob("shards/*.json"))) < 2:
        time.sleep(0.01)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    return len(list(store.glob("shards/*.json")))


def same_store(a: Path, b: Path) -> bool:
    """Byte-identical shards, index and channel relevances."""
    names = sorted(p.name for p in (a / "shards").iterdir() if not p.name.startswith("."))
    ours = sorted(p.name for p in (b / "shards").iterdir() if not p.name.startswith("."))
    files = [f"shards/{n}" for n in names] + ["index.csv"]
    return names == ours and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--work", type=Path, default=Path("out/dataset_scale"))
    args = parser.parse_args(argv)
    data = args.work / "images"
    if not data.exists():
        make_images(data, args.images)
    common = ("--size", str(args.size), "--batch-size", "16", "--shard-size", "32",
              "--workers", "1", "--layer", "4")
    rows = []
    for processes in (1, 2):
        store = args.work / f"store-{processes}"
        shutil.rmtree(store, ignore_errors=True)
        status, wall, seconds = explain(data, store, processes, *common)
        rows.append((processes, seconds, wall, status))
    resumed = args.work / "store-resumed"
    shutil.rmtree(resumed, ignore_errors=True)
    killed, _, _ = explain(data, resumed, 2, *common, env={"LRPFX_STOP_AFTER_SHARDS": "2"})
    partial = len(list((resumed / "shards").glob("*.json")))
    status, _, _ = explain(data, resumed, 2, *common)
    killed_hard = args.work / "store-killed"
    shutil.rmtree(killed_hard, ignore_errors=True)
    hard = kill_midway(data, killed_hard, 2, *common)
    after_kill, _, _ = explain(data, killed_hard, 2, *common)
    items = args.images + 1
    print(f"{items} items ({args.images} PNG images of 48x48 at --size {args.size}, 1 "
          f"unreadable), tiny_cnn, CPU, OMP_NUM_THREADS=1 per process, "
          f"{os.cpu_count()} cores (a shared machine)")
    print("| processes | run (s) | images/s | with start-up (s) | exit status |")
    print("|---|---|---|---|---|")
    for processes, seconds, wall, code in rows:
        print(f"| {processes} | {seconds:.1f} | {items / seconds:.1f} | {wall:.1f} | {code} |")
    same = same_store(args.work / "store-1", args.work / "store-2")
    print(f"1 process == 2 processes, byte for byte: {same}")
    print(f"stopped run (exit {killed}, {partial} shards committed), resumed (exit {status}) == "
          f"uninterrupted: {same_store(args.work / 'store-1', resumed)}")
    print(f"SIGKILL to the whole job after {hard} shards, resumed (exit {after_kill}) == "
          f"uninterrupted: {same_store(args.work / 'store-1', killed_hard)}")


if __name__ == "__main__":
    main()
