"""Explanations at dataset scale: ``explain_dataset`` on one or many processes (``torchrun``),
resumable, into a store of relevance-map shards with a CSV index and a manifest
(``lrpfx.dataset.store``); relevance maximization over the stored channel relevances
(``lrpfx.dataset.maximization``)."""

from lrpfx.dataset.command import ImageFiles
from lrpfx.dataset.maximization import maximize, reference_grid, region, top_items
from lrpfx.dataset.runner import Options, explain_dataset, rank_and_world, shards_of
from lrpfx.dataset.store import Store, StoreError, read_index

__all__ = ["ImageFiles", "Options", "Store", "StoreError", "explain_dataset", "maximize",
           "rank_and_world", "read_index", "reference_grid", "region", "shards_of", "top_items"]
