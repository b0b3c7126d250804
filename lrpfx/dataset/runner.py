"""Explain a dataset on one or many processes, resumable: ``explain_dataset``.

The items ``0..n-1`` are cut into shards of ``shard_size`` consecutive items; shard ``k`` belongs
to the process of rank ``k mod world`` (no padding with duplicates, unlike
``DistributedSampler``). A shard is explained in batches of ``batch_size`` consecutive items that
never cross a shard's end, so every batch, and with it every number, is the same whatever the
number of processes, and the same after a restart: finished shards (their record is in the
store) are skipped, the others explained again from their start. Decoding runs in a
``DataLoader`` with ``workers`` processes.

The processes share nothing but the store folder (a shared file system across machines). Rank
and world size come from ``torch.distributed`` when it is initialized (a user's own job), else
from the variables ``torchrun`` sets (``RANK``, ``WORLD_SIZE``). Rank 0 shows a progress bar for
the whole run (it counts the shards the others commit), waits for every shard, and writes the
index and the manifest.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.utils.data import DataLoader, Dataset

from lrpfx.concepts import channel_relevance
from lrpfx.dataset.store import Store
from lrpfx.errors import NonFiniteError

STOP_AFTER = "LRPFX_STOP_AFTER_SHARDS"  # testing aid: exit abruptly after committing k shards


@dataclass(frozen=True)
class Options:
    """How a dataset is explained and stored (recorded in ``config.json``)."""

    batch_size: int = 32
    shard_size: int = 256
    workers: int = 0
    downsample: int = 1  # relevance maps summed over f x f pixel blocks (sums are kept)
    dtype: str = "float16"  # of the stored maps: float16 or float32
    target: int | None = None  # None: each item's predicted class

    def __post_init__(self) -> None:
        for name in ("batch_size", "shard_size", "downsample"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise ValueError(f"workers must be 0 or more, got {self.workers}")
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be float16 or float32, got {self.dtype!r}")


Item = tuple[int, torch.Tensor | None, str]  # index, input (None when unreadable), reason


class Guarded(Dataset[Item]):
    """``dataset`` whose items come with their index, and unreadable ones with the reason
    instead of an exception (listed in the index, never dropped)."""

    def __init__(self, dataset: Dataset[Any]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Item:
        try:
            value = self.dataset[index]
        except Exception as error:  # any decoding error of any dataset: recorded, not raised
            return index, None, str(error) or type(error).__name__
        if isinstance(value, tuple | list):
            value = value[0]  # (input, label) datasets: the input
        return index, torch.as_tensor(value), ""


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def shards_of(items: int, shard_size: int, rank: int, world: int) -> list[int]:
    """The shards of process ``rank``: ``k`` with ``k mod world == rank``."""
    return list(range(rank, math.ceil(items / shard_size), world))


def batches(shards: Sequence[int], items: int, options: Options) -> list[list[int]]:
    """The batches of item indices of ``shards``, in order, none across a shard's end."""
    result = []
    for k in shards:
        start, stop = k * options.shard_size, min(items, (k + 1) * options.shard_size)
        result += [list(range(i, min(stop, i + options.batch_size)))
                   for i in range(start, stop, options.batch_size)]
    return result


def relevance_maps(relevance: torch.Tensor, downsample: int) -> torch.Tensor:
    """Relevance maps: an image's relevance summed over its channels, then over
    ``downsample`` x ``downsample`` blocks; other inputs as they are."""
    if relevance.dim() != 4:
        return relevance
    maps = relevance.sum(1, keepdim=True)
    if downsample > 1:
        maps = F.avg_pool2d(maps, downsample, ceil_mode=True, divisor_override=1)
    return maps[:, 0]


def _explain(explainer: Any, x: torch.Tensor, target: int | None) -> Any:
    """One batch: an ``Explanation`` (with the concept layer recorded for a
    ``ConceptExplainer``); a static-shape explainer gets a short batch padded with zeros."""
    shape = explainer.static_shape
    padded = x if shape is None or len(x) == shape[0] else torch.cat(
        [x, x.new_zeros(shape[0] - len(x), *x.shape[1:])])
    explain = getattr(explainer, "explain", explainer)  # ConceptExplainer.explain, or __call__
    return explain(padded, target)


@dataclass(frozen=True)
class Shapes:
    """What one item's stored results look like: its relevance map, and its number of
    channels at the concept layer (0 without one)."""

    map: tuple[int, ...]
    channels: int


@dataclass
class _Shard:
    """The results of one shard as they come in."""

    index: int
    start: int
    length: int
    rows: list[dict[str, Any]]
    maps: list[np.ndarray]
    channels: list[np.ndarray]


Results = dict[int, tuple[torch.Tensor, torch.Tensor, float, torch.Tensor | None] | str]


def _compute(explainer: Any, batch: list[Item], options: Options,
             device: torch.device) -> Results:
    """Explain the readable items of ``batch``: item index -> (logits, map, relevance sum,
    channel relevances or None), or the reason it has no explanation (a NaN or Inf in it)."""
    good = [(i, x) for i, x, _ in batch if x is not None]
    if not good:
        return {}
    n = len(good)
    x = torch.stack([t for _, t in good]).to(device)
    try:
        out = _explain(explainer, x, options.target)
        bad: dict[int, str] = {}
    except NonFiniteError as error:  # the other samples of the batch are fine: keep them
        out = error.explanation
        bad = {good[j][0]: f"{type(error).__name__}: {error}" for j in error.samples if j < n}
    layer = getattr(explainer, "layer", None)
    maps = relevance_maps(out.relevance[:n].float(), options.downsample).cpu()
    sums = out.relevance[:n].flatten(1).double().sum(1).cpu()
    chans = channel_relevance(out.layers[layer][:n]).float().cpu() if layer else None
    logits = out.output[:n].double().cpu()
    return {i: bad.get(i) or (logits[j], maps[j], float(sums[j]),
                              None if chans is None else chans[j])
            for j, (i, _) in enumerate(good)}


def _add(shard: _Shard, batch: list[Item], results: Results, names: Sequence[str],
         options: Options, shapes: Shapes) -> list[str]:
    """Append the rows and arrays of ``batch`` to ``shard``; returns the failures' lines."""
    dtype, failures = np.dtype(options.dtype), []
    for i, _, error in batch:
        row: dict[str, Any] = {"index": i, "path": names[i], "status": "ok",
                               "shard": shard.index, "row": i - shard.start, "error": error}
        result = results.get(i, error)
        if not isinstance(result, str):
            logits, heat, total, chans = result
            k = int(logits.argmax()) if options.target is None else options.target
            row.update(target=k, prediction=int(logits.argmax()), logit=float(logits[k]),
                       relevance_sum=total)
            shard.maps.append(heat.numpy().astype(dtype))
            shard.channels.append(np.zeros(0, np.float32) if chans is None else chans.numpy())
        else:
            row.update(status="error", error=result)
            shard.maps.append(np.zeros(shapes.map, dtype))
            shard.channels.append(np.full(shapes.channels, np.nan, np.float32))
            failures.append(result if names[i] in result else f"{names[i]}: {result}")
        shard.rows.append(row)
    return failures


class _Bar:
    """The progress of the whole run on rank 0 (the items of every committed shard plus this
    process's own uncommitted ones); on the other ranks only failures are printed."""

    def __init__(self, show: bool, console: Console, total: int, store: Store,
                 shards: int) -> None:
        self.show, self.console, self.total, self.store = show, console, total, store
        self.shards = shards
        self.seen: dict[int, int] = {}  # committed shard -> its items
        self.mine = 0
        self.last = 0.0
        columns = (TextColumn("explaining"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn())
        self.progress = Progress(*columns, console=console, transient=True, disable=not show)
        self.task = self.progress.add_task("explain", total=total)

    def __enter__(self) -> _Bar:
        self.progress.start()
        self.refresh(force=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def say(self, text: str) -> None:
        self.progress.console.print(text, highlight=False, soft_wrap=True)

    def advance(self, items: int, committed: bool = False) -> None:
        self.mine += -items if committed else items
        self.refresh(force=committed)

    def refresh(self, force: bool = False) -> None:
        if not self.show or not force and time.monotonic() - self.last < 0.5:
            return
        self.last = time.monotonic()
        for k in range(self.shards):
            if k not in self.seen and (record := self.store.record(k)) is not None:
                self.seen[k] = record["items"]
        self.progress.update(self.task, completed=sum(self.seen.values()) + self.mine)

    def wait(self) -> None:
        """Until every shard is committed (by any process)."""
        while len(self.seen) < self.shards:
            time.sleep(0.2)
            self.refresh(force=True)


def _probe(explainer: Any, dataset: Dataset[Any], options: Options,
           device: torch.device) -> Shapes:
    """The stored shapes, from the first item that can be explained (explained once)."""
    guarded = Guarded(dataset)
    for i in range(len(guarded)):
        _, x, _ = guarded[i]
        if x is not None:
            result = _compute(explainer, [(i, x, "")], options, device)[i]
            if not isinstance(result, str):
                _, heat, _, chans = result
                return Shapes(tuple(heat.shape), 0 if chans is None else int(chans.numel()))
    return Shapes((), 0)


def _work(explainer: Any, dataset: Dataset[Any], names: Sequence[str], store: Store,
          pending: Sequence[int], options: Options, shapes: Shapes, device: torch.device,
          bar: _Bar) -> None:
    """Explain and commit the ``pending`` shards of this process."""
    n, size = len(names), options.shard_size
    loader = DataLoader(Guarded(dataset), batch_sampler=batches(pending, n, options),
                        num_workers=options.workers, collate_fn=list)
    stop, committed = int(os.environ.get(STOP_AFTER, 0)), 0
    shard: _Shard | None = None
    for batch in loader:
        k = batch[0][0] // size
        if shard is None or shard.index != k:
            shard = _Shard(k, k * size, min(n, (k + 1) * size) - k * size, [], [], [])
        results = _compute(explainer, batch, options, device)
        for line in _add(shard, batch, results, names, options, shapes):
            bar.say(f"[red]error[/] {escape(line)}")
        bar.advance(len(batch))
        if len(shard.rows) == shard.length:
            channels = np.stack(shard.channels) if shapes.channels else None
            store.write_shard(k, shard.start, np.stack(shard.maps), shard.rows, channels)
            bar.advance(shard.length, committed=True)
            committed += 1
            if stop and committed >= stop:
                os._exit(3)  # as abruptly as a kill: no cleanup, no merge


def explain_dataset(explainer: Any, dataset: Dataset[Any], store: str | Path, *,
                    names: Sequence[str] | None = None, options: Options | None = None,
                    config: dict[str, Any] | None = None, device: str | torch.device = "cpu",
                    console: Console | None = None) -> dict[str, Any] | None:
    """Explain every item of ``dataset`` into the folder ``store`` (``lrpfx.dataset.store``),
    on this process's share of the shards; call it on every process of a job.

    Args:
        explainer: an ``lrpfx.Explainer``, or a ``lrpfx.concepts.ConceptExplainer`` (its
            layer's channel relevances are stored too).
        dataset: a map-style dataset of input tensors (or ``(input, label)`` pairs); an item
            whose loading raises is listed in the index with the error message.
        store: the output folder; a folder of an unfinished run with the same data and
            options is resumed.
        names: one name per item for the index (default: the item number).
        options: batch and shard sizes, workers, downsampling, map dtype, target.
        config: more facts that must match when resuming (model, rules, ...).
        device: where this process explains.

    Returns:
        The manifest on rank 0, once every shard is finished; None on the other ranks.

    Raises:
        StoreError: ``store`` holds another run.
    """
    options = options or Options()
    device = torch.device(device)
    store_ = Store(Path(store))
    n = len(dataset)  # type: ignore[arg-type]
    names = [str(k) for k in range(n)] if names is None else [str(name) for name in names]
    if len(names) != n:
        raise ValueError(f"names: {len(names)} names for {n} items")
    rank, world = rank_and_world()
    shapes = _probe(explainer, dataset, options, device)
    facts = {k: v for k, v in asdict(options).items() if k != "workers"}  # workers: no effect
    full = {**(config or {}), **facts, "items": n, "map_shape": list(shapes.map),
            "channels": shapes.channels, "layer": getattr(explainer, "layer", None),
            "names_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest()}
    store_.write_config(full)
    shards = math.ceil(n / options.shard_size)
    pending = [k for k in shards_of(n, options.shard_size, rank, world)
               if store_.record(k) is None]
    with _Bar(rank == 0, console or Console(), n, store_, shards) as bar:
        _work(explainer, dataset, names, store_, pending, options, shapes, device, bar)
        if rank == 0:
            bar.wait()
    return store_.merge(full, shards) if rank == 0 else None
