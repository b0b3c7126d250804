"""Dataset runs (``lrpfx.dataset``): shards split by index without duplicates, a store whose
index and maps hold what the explainer gives, failures listed with the reason, resuming after
a kill gives byte-identical files, and 2 processes under torchrun give what 1 gives."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn

import lrpfx
from lrpfx import cli, concepts, dataset
from lrpfx.dataset.runner import batches
from lrpfx.images import load_image

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).parent.parent


class Blobs(torch.utils.data.Dataset):
    """``n`` random 3x12x12 inputs (seeded by index); the items in ``broken`` raise."""

    def __init__(self, n: int = 23, broken: tuple[int, ...] = (5,)) -> None:
        self.n, self.broken = n, broken

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        if i in self.broken:
            raise OSError(f"item {i} is broken")
        return torch.randn(3, 12, 12, generator=torch.Generator().manual_seed(i))


def small() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)).eval()


OPTIONS = dataset.Options(batch_size=4, shard_size=5, downsample=2)


def files(store: Path) -> dict[str, bytes]:
    """Every file of a store but its temporary ones, by relative path."""
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


@pytest.mark.parametrize(("items", "size", "world"), [(23, 5, 2), (10, 3, 4), (3, 8, 2)])
def test_every_item_in_exactly_one_shard_of_one_process(items, size, world):
    options = dataset.Options(batch_size=2, shard_size=size)
    seen = [i for rank in range(world)
            for batch in batches(dataset.shards_of(items, size, rank, world), items, options)
            for i in batch]
    assert sorted(seen) == list(range(items))
    for batch in batches(range(-(-items // size)), items, options):
        assert len({i // size for i in batch}) == 1  # no batch across a shard's end


def test_the_store_holds_what_the_explainer_gives(tmp_path):
    model = small()
    crp = concepts.compile(model, "epsilon-plus", layer="2")
    manifest = dataset.explain_dataset(crp, Blobs(), tmp_path, options=OPTIONS,
                                       names=[f"item{i}" for i in range(23)])
    assert manifest is not None and manifest["items"] == 23 and manifest["failed"] == 1
    rows = dataset.read_index(tmp_path)
    assert [int(r["index"]) for r in rows] == list(range(23))
    assert rows[5]["status"] == "error" and rows[5]["error"] == "item 5 is broken"
    assert (rows[5]["shard"], rows[5]["row"], rows[5]["logit"]) == ("1", "0", "")
    x = torch.stack([Blobs()[i] for i in range(10, 15)])  # shard 2
    out = lrpfx.compile(model, "epsilon-plus")(x)
    maps = dataset.store.load_maps(tmp_path, 2)
    assert maps.dtype == np.float16 and maps.shape == (5, 6, 6)
    summed = out.relevance.sum(1).unflatten(1, (6, 2)).unflatten(3, (6, 2)).sum((2, 4))
    np.testing.assert_allclose(maps, summed.numpy(), rtol=2e-3, atol=1e-5)
    for j, row in enumerate(rows[10:15]):
        assert row["path"] == f"item{10 + j}" and int(row["target"]) == out.output[j].argmax()
        assert float(row["logit"]) == pytest.approx(float(out.output[j].max()), rel=1e-12)
        assert float(row["relevance_sum"]) == pytest.approx(float(out.relevance[j].sum()))
    channels = np.load(tmp_path / "shards" / "000002.channels.npy")
    np.testing.assert_allclose(channels, crp.relevances(x).numpy(), rtol=1e-6)
    assert np.isnan(np.load(tmp_path / "shards" / "000001.channels.npy")[0]).all()


def test_shards_of_two_ranks_and_a_resumed_run_are_byte_identical(tmp_path, monkeypatch):
    explainer = lrpfx.compile(small(), "epsilon-plus")
    dataset.explain_dataset(explainer, Blobs(), tmp_path / "one", options=OPTIONS)
    expected = files(tmp_path / "one")
    for rank in (1, 0):  # rank 1 returns at once; rank 0 finds its peer's shards and merges
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        result = dataset.explain_dataset(explainer, Blobs(), tmp_path / "two", options=OPTIONS)
        assert (result is None) == (rank == 1)
    assert files(tmp_path / "two") == expected
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    shards = tmp_path / "one" / "shards"  # as a kill leaves it: records, files, leftovers
    (shards / "000003.json").unlink()
    (shards / "000004.npy").write_bytes(b"half")  # a shard whose file does not match its record
    (shards / ".000001.npy.123.tmp").write_bytes(b"partial")
    (tmp_path / "one" / "index.csv").unlink()
    before = (shards / "000000.npy").stat().st_mtime_ns
    dataset.explain_dataset(explainer, Blobs(), tmp_path / "one", options=OPTIONS)
    assert files(tmp_path / "one") == expected
    assert (shards / "000000.npy").stat().st_mtime_ns == before  # finished: not redone


def test_a_store_of_another_run_is_refused(tmp_path):
    explainer = lrpfx.compile(small(), "epsilon-plus")
    dataset.explain_dataset(explainer, Blobs(), tmp_path, options=OPTIONS)
    with pytest.raises(dataset.StoreError, match="holds another run.*batch_size: 4 there, 2"):
        dataset.explain_dataset(explainer, Blobs(), tmp_path,
                                options=dataset.Options(batch_size=2, shard_size=5, downsample=2))
    with pytest.raises(dataset.StoreError, match="items: 23 there, 22 now"):
        dataset.explain_dataset(explainer, Blobs(22), tmp_path, options=OPTIONS)


# -- the command line, on one process and under torchrun --------------------------------------
def images(folder: Path, count: int) -> Path:
    sys.path.insert(0, str(ROOT))
    try:
        from examples.dataset_scale import make_images
    finally:
        sys.path.remove(str(ROOT))
    make_images(folder, count, size=20)
    return folder


def store_args(data: Path, store: Path) -> list[str]:
    return ["explain", str(data), "--arch", f"{ROOT / 'examples' / 'dataset_scale.py'}:tiny_cnn",
            "--store", str(store), "--size", "16", "--batch-size", "3", "--shard-size", "4",
            "--workers", "1", "--rules", "epsilon-plus", "--layer", "4", "--maximize", "2"]


def run_cli(argv: list[str]) -> tuple[int, str]:
    console = Console(file=io.StringIO(), width=200)
    status = cli.main(argv, console)
    return status, console.file.getvalue()  # type: ignore[attr-defined]


def test_cli_store_lists_unreadable_images_and_refuses_a_bad_layer(tmp_path):
    data = images(tmp_path / "images", 6)
    status, text = run_cli(store_args(data, tmp_path / "store"))
    assert status == 1, text
    assert "broken.png: not a readable image" in text and "6 of 7 image(s)" in text
    rows = dataset.read_index(tmp_path / "store")
    assert [r["status"] for r in rows] == ["error"] + ["ok"] * 6
    assert not (tmp_path / "out").exists()
    status, text = run_cli(["grid", str(tmp_path / "store"), "7", "--tile", "20"])
    assert status == 0 and "grid-7.png" in text, text
    assert load_image(tmp_path / "store" / "grid-7.png").shape == (3, 2 + 2 * 22, 2 + 2 * 22)
    status, text = run_cli([*store_args(data, tmp_path / "x"), "--layer", "", "--maximize", "2"])
    assert status == 2 and "--maximize needs --layer" in text
    status, text = run_cli(["explain", str(data), "--layer", "4", "--workers", "3"])
    assert status == 2 and "--workers, --layer only apply with --store DIR" in text
    bad = store_args(data, tmp_path / "other")
    bad[bad.index("--layer") + 1] = "nope"
    status, text = run_cli(bad)
    assert status == 2 and "--layer: record: no node named 'nope'" in text


def torchrun(data: Path, store: Path, processes: int, **env: str) -> int:
    """Run the job; on a timeout, kill torchrun and its workers (no orphans) and fail."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={processes}", "-m", "lrpfx", *store_args(data, store)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    job = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, start_new_session=True)
    try:
        job.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        output = job.communicate()[0].decode(errors="replace")
        pytest.fail(f"torchrun did not finish in 240 s:\n{output[-3000:]}")
    return job.returncode


def test_torchrun_two_processes_killed_and_resumed_equal_one_process(tmp_path):
    data = images(tmp_path / "images", 19)  # and broken.png: 20 items, 5 shards
    torch.set_default_dtype(torch.float32)  # as in the torchrun processes: the same weights
    assert run_cli(store_args(data, tmp_path / "one"))[0] == 1
    assert torchrun(data, tmp_path / "two", 2, LRPFX_STOP_AFTER_SHARDS="1") != 0
    committed = list((tmp_path / "two" / "shards").glob("*.json"))
    assert 1 <= len(committed) < 5 and not (tmp_path / "two" / "index.csv").exists()
    assert torchrun(data, tmp_path / "two", 2) == 1  # 1: the unreadable image
    assert files(tmp_path / "two") == files(tmp_path / "one")


# -- relevance maximization --------------------------------------------------------------------
def test_relevance_maximization_ranks_items_by_channel_relevance(tmp_path):
    from lrpfx.dataset import maximization

    crp = concepts.compile(small(), "epsilon-plus", layer="2")
    data = Blobs(23, broken=(5, 11))
    dataset.explain_dataset(crp, data, tmp_path, options=OPTIONS)
    indices = maximization.maximize(crp, data, tmp_path, k=4)
    everything = np.concatenate([np.load(tmp_path / "shards" / f"{k:06d}.channels.npy")
                                 for k in range(5)])  # (23, 6), NaN rows for the broken ones
    for c in range(6):
        order = [i for i in np.argsort(-everything[:, c], kind="stable")
                 if not np.isnan(everything[i, c])]
        assert list(indices[c]) == order[:4]
    with open(tmp_path / "maximization.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 24 and [int(r["rank"]) for r in rows[:4]] == [0, 1, 2, 3]
    heatmaps = np.load(tmp_path / "maximization.heatmaps.npy")
    c, item = 3, int(indices[3, 1])
    assert int(rows[13]["index"]) == item and rows[13]["channel"] == "3"
    target = int(dataset.read_index(tmp_path)[item]["target"])
    reference = crp(data[item][None], [c], target).relevance[0, 0].sum(0)  # (12, 12)
    pooled = reference.unflatten(0, (6, 2)).unflatten(2, (6, 2)).sum((1, 3))  # downsample=2
    np.testing.assert_allclose(heatmaps[c, 1], pooled.numpy(), rtol=2e-3, atol=1e-7)
    box = [int(rows[13][k]) for k in ("top", "left", "bottom", "right")]
    assert box == list(maximization.region(reference))
    png = maximization.reference_grid(tmp_path, 3, data, tmp_path / "grid.png", (0, 0, 0),
                                  (1, 1, 1), tile=16)
    picture = load_image(png)
    assert picture.shape == (3, 2 + 2 * 18, 2 + 4 * 18)  # 4 regions over their heatmaps
    with pytest.raises(dataset.StoreError, match="channel 9 is not in the maximization"):
        maximization.reference_grid(tmp_path, 9, data, tmp_path / "x.png", (0,), (1,))
    with pytest.raises(dataset.StoreError, match="no finished run"):
        maximization.maximize(crp, data, tmp_path / "nothing", k=4)


def test_relevance_maximization_on_two_ranks_equals_one(tmp_path, monkeypatch):
    from lrpfx.dataset import maximization

    crp = concepts.compile(small(), "epsilon-plus", layer="2")
    data = Blobs(23, broken=(5, 11))
    dataset.explain_dataset(crp, data, tmp_path, options=OPTIONS)
    maximization.maximize(crp, data, tmp_path, k=3)
    expected = files(tmp_path)
    for name in ("csv", "indices.npy", "heatmaps.npy"):
        (tmp_path / f"maximization.{name}").unlink()
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in (1, 0):  # rank 1 leaves its part; rank 0 explains its own and joins both
        monkeypatch.setenv("RANK", str(rank))
        assert (maximization.maximize(crp, data, tmp_path, k=3) is None) == (rank == 1)
    assert files(tmp_path) == expected and not (tmp_path / "maximization.parts").exists()


def test_region_is_the_box_of_the_strong_positive_relevance():
    from lrpfx.dataset.maximization import region

    heat = torch.zeros(48, 48)
    heat[10:20, 30:40] = 1.0
    heat[40, 0] = 0.05  # weak: outside the region
    heat[0:5, 0:5] = -3.0  # negative: never in the region
    top, left, bottom, right = region(heat)
    assert 7 <= top <= 10 and 19 <= bottom <= 23 and 27 <= left <= 30 and 40 <= right <= 43
    assert region(-heat.abs()) == (0, 0, 48, 48)


def test_inside_a_users_process_group_rank_and_world_come_from_it(tmp_path, monkeypatch):
    dist = torch.distributed
    monkeypatch.setenv("RANK", "1")  # stale variables: the initialized group has precedence
    monkeypatch.setenv("WORLD_SIZE", "2")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0,
                            world_size=1)
    try:
        assert dataset.rank_and_world() == (0, 1)
        explainer = lrpfx.compile(small(), "epsilon-plus")
        manifest = dataset.explain_dataset(explainer, Blobs(7, broken=()), tmp_path / "store",
                                           options=OPTIONS)
    finally:
        dist.destroy_process_group()
    assert manifest is not None and manifest["items"] == 7 and manifest["failed"] == 0


class Huge(Blobs):
    """Item 3 is finite but so large that the model's values overflow."""

    def __getitem__(self, i: int) -> torch.Tensor:
        return super().__getitem__(i) * (1e307 if i == 3 else 1.0)


def test_an_item_without_a_finite_explanation_is_listed_and_its_batch_kept(tmp_path):
    explainer = lrpfx.compile(small(), "epsilon-plus")
    manifest = dataset.explain_dataset(explainer, Huge(9, broken=()), tmp_path, options=OPTIONS)
    assert manifest is not None and manifest["failed"] == 1
    rows = dataset.read_index(tmp_path)
    assert rows[3]["status"] == "error" and rows[3]["error"].startswith("NonFiniteError")
    assert [r["status"] for r in rows[:5]] == ["ok"] * 3 + ["error", "ok"]
    x = torch.stack([Blobs()[i] for i in (0, 1, 2)])
    sums = lrpfx.compile(small(), "epsilon-plus")(x).relevance.sum((1, 2, 3))
    assert [float(r["relevance_sum"]) for r in rows[:3]] == pytest.approx(sums.tolist())
