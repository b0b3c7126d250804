"""Relevance maximization (CRP): for every channel of the concept layer, the dataset items it is
most relevant for, and where in them.

A store made with a ``ConceptExplainer`` (``lrpfx explain --store DIR --layer L``) holds each
item's channel relevances (``shards/*.channels.npy``). ``maximize`` ranks the items of every
channel by that relevance (streaming over the shards: memory ``C x k``), explains each top item
once more conditioned on the channel (``lrpfx.concepts``), and takes as its *region* the
bounding box of where the smoothed conditional heatmap exceeds ``threshold`` times its maximum
(the reference-image crop of Achtibat et al.). It writes, next to the index::

    maximization.csv            channel, rank, index, path, relevance, top, left, bottom, right
    maximization.indices.npy    (C, k) item indices, most relevant first (-1: fewer items)
    maximization.heatmaps.npy   (C, k, H, W) the conditional heatmaps, float16

``reference_grid`` draws the regions of one channel's top items as a PNG grid.
"""

from __future__ import annotations

import csv
import io
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from lrpfx import heatmap
from lrpfx.concepts import ConceptExplainer
from lrpfx.dataset.runner import rank_and_world, relevance_maps
from lrpfx.dataset.store import Store, StoreError, atomic_write, npy_bytes, read_index

FIELDS = ("channel", "rank", "index", "path", "relevance", "top", "left", "bottom", "right")


def top_items(store: Path, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` items of largest relevance for each channel: indices and relevances, each
    ``(C, k)``, most relevant first (ties: the earlier item); unreadable items never count.

    Raises:
        StoreError: the store has no channel relevances (made without a concept layer).
    """
    manifest = read_manifest(store)
    if not manifest["config"].get("channels"):
        raise StoreError(f"{store}: no channel relevances stored; explain with a concept "
                         "layer (--layer) to rank items by channel")
    best_v = torch.full((manifest["config"]["channels"], 0), -torch.inf, dtype=torch.float64)
    best_i = torch.zeros(best_v.shape, dtype=torch.long)
    for record in manifest["shards"]:
        values = torch.from_numpy(np.load(Store(store).path(record["shard"], ".channels.npy")))
        values = values.double().nan_to_num(-torch.inf).T  # (C, items)
        index = torch.arange(record["start"], record["start"] + values.shape[1])
        v = torch.cat([best_v, values], 1)
        i = torch.cat([best_i, index.expand(values.shape[0], -1)], 1)
        order = torch.argsort(-v, dim=1, stable=True)[:, :k]  # stable: the earlier item first
        best_v, best_i = v.gather(1, order), i.gather(1, order)
    best_i[best_v == -torch.inf] = -1
    return best_i.numpy(), best_v.numpy()


def read_manifest(store: Path) -> dict[str, Any]:
    import json

    try:
        manifest: dict[str, Any] = json.loads((Path(store) / "manifest.json").read_text())
    except (OSError, ValueError) as error:
        raise StoreError(f"{store}: no finished run ({error})") from None
    return manifest


def region(relevance: torch.Tensor, threshold: float = 0.25) -> tuple[int, int, int, int]:
    """``(top, left, bottom, right)`` (bottom/right exclusive) of where the positive part of a
    heatmap ``(H, W)``, smoothed over about a twelfth of its size, exceeds ``threshold`` times
    its maximum; the whole map when it has no positive relevance."""
    h, w = relevance.shape
    size = max(1, min(h, w) // 12) * 2 + 1
    smooth = F.avg_pool2d(relevance.clamp(min=0)[None, None].double(), size, 1, size // 2,
                          count_include_pad=False)[0, 0]
    if not bool((smooth > 0).any()):
        return 0, 0, h, w
    rows, cols = (smooth >= threshold * smooth.max()).nonzero(as_tuple=True)
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


def maximize(explainer: ConceptExplainer, dataset: Dataset[Any], store: Path, k: int, *,
             threshold: float = 0.25, device: str | torch.device = "cpu",
             poll: float = 0.2) -> np.ndarray | None:
    """Write the relevance maximization of every channel into ``store`` (see the module
    docstring); ``dataset`` is the one explained. On several processes call it on each, after
    ``explain_dataset``: they wait for the finished run, explain a share of the top items each
    (item ``j`` of the sorted top items on rank ``j mod world``) into
    ``maximization.parts/``, and rank 0 joins the parts.

    Returns:
        The ``(C, k)`` item indices on rank 0, None on the other ranks.
    """
    store = Path(store)
    rank, world = rank_and_world()
    while world > 1 and not (store / "manifest.json").exists():  # rank 0 writes it last
        time.sleep(poll)
    indices, values = top_items(store, k)
    rows = {int(r["index"]): r for r in read_index(store)}
    config = read_manifest(store)["config"]
    items = sorted({int(i) for i in indices.flat if i >= 0})[rank::world]
    lines, maps = [], []
    for item in items:
        where = np.argwhere(indices == item)  # (channel, rank) pairs, in order
        x = torch.as_tensor(dataset[item]).unsqueeze(0).to(device)
        out = explainer(x, [int(c) for c, _ in where], int(rows[item]["target"]))
        heat = out.relevance[0].sum(1).float().cpu()  # (K, H, W)
        small = relevance_maps(heat[:, None], config["downsample"])
        for (c, place), h, m in zip(where, heat, small, strict=True):
            box = region(h, threshold)
            maps.append(m.numpy().astype(np.float16))
            lines.append({"channel": int(c), "rank": int(place), "index": item,
                          "path": rows[item]["path"], "relevance": float(values[c, place]),
                          "top": box[0], "left": box[1], "bottom": box[2], "right": box[3]})
    parts = store / "maximization.parts"
    name = f"k{k}-t{threshold!r}-of{world}".replace(".", "p")
    shape = tuple(config["map_shape"])
    atomic_write(parts / f"{rank:05d}.{name}.npy",
                 npy_bytes(np.stack(maps) if maps else np.zeros((0, *shape), np.float16)))
    atomic_write(parts / f"{rank:05d}.{name}.csv", _csv(lines))  # written last: part done
    if rank != 0:
        return None
    while not all((parts / f"{r:05d}.{name}.csv").exists() for r in range(world)):
        time.sleep(poll)
    _join(store, parts, name, world, indices, shape)
    return indices


def _csv(lines: list[dict[str, Any]]) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(lines)
    return text.getvalue().encode()


def _join(store: Path, parts: Path, name: str, world: int, indices: np.ndarray,
          shape: tuple[int, ...]) -> None:
    """The parts of every rank into the maximization files; the parts are removed."""
    maps = np.zeros((*indices.shape, *shape), np.float16)
    lines = []
    for r in range(world):
        with open(parts / f"{r:05d}.{name}.csv", newline="") as file:
            mine = list(csv.DictReader(file))
        heat = np.load(parts / f"{r:05d}.{name}.npy")
        for line, m in zip(mine, heat, strict=True):
            maps[int(line["channel"]), int(line["rank"])] = m
        lines += mine
    lines.sort(key=lambda line: (int(line["channel"]), int(line["rank"])))
    atomic_write(store / "maximization.csv", _csv(lines))
    atomic_write(store / "maximization.indices.npy", npy_bytes(indices))
    atomic_write(store / "maximization.heatmaps.npy", npy_bytes(maps))
    shutil.rmtree(parts, ignore_errors=True)


def reference_grid(store: Path, channel: int, dataset: Dataset[Any], out: Path,
                   mean: tuple[float, ...], std: tuple[float, ...], tile: int = 96) -> Path:
    """A PNG of the regions of ``channel``'s top items (most relevant first): each crop of the
    input (un-normalized with ``mean``/``std``) resized to ``tile`` pixels, with its
    conditional heatmap's crop below it.

    Raises:
        StoreError: no maximization in the store, or no such channel.
    """
    try:
        with open(Path(store) / "maximization.csv", newline="") as file:
            lines = [r for r in csv.DictReader(file) if int(r["channel"]) == channel]
        maps = np.load(Path(store) / "maximization.heatmaps.npy")
    except OSError:
        raise StoreError(f"{store}: no relevance maximization (--maximize K)") from None
    if not lines:
        raise StoreError(f"{store}: channel {channel} is not in the maximization "
                         f"(channels 0..{maps.shape[0] - 1}; items with relevance only)")
    crops: list[torch.Tensor] = []
    heats: list[torch.Tensor] = []
    for line in lines:
        x = torch.as_tensor(dataset[int(line["index"])]).float()
        image = heatmap.to_image(x[None], mean, std)[0]
        hm = torch.from_numpy(maps[channel, int(line["rank"])].astype(np.float32))
        hm = F.interpolate(hm[None, None], size=image.shape[-2:], mode="nearest")[0]
        top, left, bottom, right = (int(line[k]) for k in ("top", "left", "bottom", "right"))
        for picture, into in ((image, crops), (heatmap.heatmap(hm)[0], heats)):
            crop = picture[:, top:bottom, left:right][None]
            into.append(F.interpolate(crop, size=(tile, tile), mode="bilinear",
                                      align_corners=False)[0].clamp(0, 1))
    return heatmap.save_png(torch.stack(crops + heats), out, nrow=len(crops))
