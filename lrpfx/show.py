"""``lrpfx.show``: the annotated graph as a rich table."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from torch import fx

from lrpfx import meta
from lrpfx.explainer import Explainer


def _op(node: fx.Node) -> str:
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return str(node.target)


def _notes(node: fx.Node) -> str:
    notes = []
    if node.meta.get(meta.FOLDED):
        notes.append("folded " + ", ".join(node.meta[meta.FOLDED]))
    mode = node.meta.get(meta.MAXPOOL)
    if mode:
        notes.append("max-pool as average" if mode == "avg" else "winner-takes-all")
    if node.meta.get(meta.NONNEG):
        notes.append("≥ 0")
    return "; ".join(notes)


def table(explainer: Explainer) -> Table:
    """The rich table of ``lrpfx.show``: node, op, module, rule, notes."""
    t = Table(title=f"lrpfx program ({explainer.composite!r})", title_justify="left")
    for column in ("node", "op", "module", "rule", "notes"):
        t.add_column(column, overflow="fold")
    for node in explainer.graph_module.graph.nodes:
        if node.op in ("get_attr", "output"):
            continue
        rule = node.meta.get(meta.RULE)
        t.add_row(meta.display_name(node), _op(node), node.meta.get(meta.PATH) or "",
                  repr(rule) if rule is not None else "", _notes(node))
    return t


def show(explainer: Explainer, console: Console | None = None) -> None:
    """Print the annotated graph of ``explainer``: one row per node with its rule."""
    (console or Console()).print(table(explainer))
