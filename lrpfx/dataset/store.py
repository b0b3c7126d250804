"""The output folder of a dataset run: shards committed atomically, a manifest, a CSV index.

Layout of ``STORE/``::

    config.json              what the run explains and how; a restart must match it
    shards/000003.npy        relevance maps of shard 3, (items, H, W), float16 by default
    shards/000003.csv        its index rows (one per item, failures included, with the reason)
    shards/000003.channels.npy   channel relevances at the concept layer, (items, C), float32
    shards/000003.json       the shard's record (files, sizes, sha256): written last, so a
                             shard is finished exactly when its record exists
    index.csv                every item in order: the shards' rows, written at the end
    manifest.json            config and every shard record, written at the end

Every file is written to a temporary name in the same folder and renamed (``os.replace``), so a
run killed at any moment leaves either the old state or the new file, never half a file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lrpfx.errors import LrpfxError

COLUMNS = ("index", "path", "status", "target", "prediction", "logit", "relevance_sum",
           "shard", "row", "error")


class StoreError(LrpfxError):
    """The store folder belongs to another run (other data or options), or is damaged."""


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def csv_bytes(rows: Iterable[Mapping[str, Any]], header: bool = True) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=1, sort_keys=True) + "\n").encode()


class Store:
    """The folder ``root`` of one dataset run (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.shards = self.root / "shards"

    def path(self, shard: int, suffix: str) -> Path:
        return self.shards / f"{shard:06d}{suffix}"

    # -- configuration ---------------------------------------------------------------------------
    def write_config(self, config: Mapping[str, Any]) -> None:
        """Record the run's configuration, or check it against the one recorded (a restart).

        Raises:
            StoreError: the folder holds a run with another configuration.
        """
        path = self.root / "config.json"
        if not path.exists():
            atomic_write(path, json_bytes(config))
        self.check_config(config)

    def check_config(self, config: Mapping[str, Any]) -> None:
        """Raises ``StoreError`` when ``config.json`` differs from ``config``."""
        path = self.root / "config.json"
        try:
            recorded = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise StoreError(f"{path}: cannot read the run's configuration ({error})") from None
        expected = json.loads(json_bytes(config))
        changed = sorted(k for k in set(recorded) | set(expected)
                         if recorded.get(k) != expected.get(k))
        if changed:
            details = "; ".join(f"{k}: {recorded.get(k)!r} there, {expected.get(k)!r} now"
                                for k in changed[:4])
            raise StoreError(f"--store {self.root} holds another run ({details}); give a new "
                             "folder, or the same data and options to resume it")

    # -- shards ----------------------------------------------------------------------------------
    def record(self, shard: int) -> dict[str, Any] | None:
        """The record of a finished shard whose files are all there with their sizes, else
        None (the shard is explained again)."""
        try:
            record: dict[str, Any] = json.loads(self.path(shard, ".json").read_text())
        except (OSError, ValueError):
            return None
        for name, facts in record["files"].items():
            file = self.shards / name
            if not file.is_file() or file.stat().st_size != facts["bytes"]:
                return None
        return record

    def write_shard(self, shard: int, start: int, maps: np.ndarray,
                    rows: Sequence[Mapping[str, Any]],
                    channels: np.ndarray | None = None) -> dict[str, Any]:
        """Commit one shard: its files, then its record; returns the record."""
        files = {".npy": npy_bytes(maps), ".csv": csv_bytes(rows)}
        if channels is not None:
            files[".channels.npy"] = npy_bytes(channels)
        facts = {}
        for suffix, data in files.items():
            atomic_write(self.path(shard, suffix), data)
            facts[self.path(shard, suffix).name] = {
                "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        failed = sum(row["status"] != "ok" for row in rows)
        record = {"shard": shard, "start": start, "items": len(rows), "failed": failed,
                  "files": facts}
        atomic_write(self.path(shard, ".json"), json_bytes(record))
        return record

    def finished(self, shards: int) -> list[dict[str, Any]]:
        """The records of the finished shards among ``0..shards-1``."""
        return [r for k in range(shards) if (r := self.record(k)) is not None]

    def merge(self, config: Mapping[str, Any], shards: int) -> dict[str, Any]:
        """Write ``index.csv`` (every shard's rows in order) and ``manifest.json``; returns the
        manifest.

        Raises:
            StoreError: a shard is not finished.
        """
        records = self.finished(shards)
        if len(records) != shards:
            missing = sorted(set(range(shards)) - {r["shard"] for r in records})
            raise StoreError(f"{self.root}: shard(s) {missing[:10]} are not finished")
        index = bytearray(csv_bytes([]))
        for record in records:
            body = self.path(record["shard"], ".csv").read_bytes()
            index += body[body.index(b"\n") + 1:]  # without the shard's header line
        atomic_write(self.root / "index.csv", bytes(index))
        manifest = {"config": dict(config), "shards": records,
                    "items": sum(r["items"] for r in records),
                    "failed": sum(r["failed"] for r in records)}
        atomic_write(self.root / "manifest.json", json_bytes(manifest))
        return manifest


def read_index(root: Path) -> list[dict[str, str]]:
    """The rows of ``STORE/index.csv``."""
    with open(Path(root) / "index.csv", newline="") as file:
        return list(csv.DictReader(file))


def load_maps(root: Path, shard: int) -> np.ndarray:
    """The relevance maps of one shard."""
    return np.load(Store(root).path(shard, ".npy"), allow_pickle=False)
