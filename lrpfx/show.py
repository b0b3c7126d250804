"""``lrpfx.show``: the annotated graph as a rich table, and the one-line summary of an explainer.

One row per node of the canonical graph the program was generated from: the node (its module
path, or the fx name of a function call), the op as it was written (``nn.Conv2d``, ``F.relu``),
the rule with its parameters, the output shape (given an example input), and what canonization
did to it (BatchNorm folded in, max-pool mode, known sign, stripped softmax, relevance filter).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import torch
from rich import box
from rich.console import Console
from rich.table import Table
from torch import fx

from lrpfx import meta
from lrpfx.explainer import summary as explainer_summary
from lrpfx.filters import FILTER, TopK
from lrpfx.rules import Epsilon, Rule, ZBox


class Compiled(Protocol):
    """What ``show`` reads of an explainer: the canonical graph its program was generated from,
    the program, and the composite that chose the rules."""

    graph_module: fx.GraphModule
    program: fx.GraphModule
    composite: object


SYMBOLS = {"epsilon": "ε", "gamma": "γ", "alpha": "α", "beta": "β", "stabilizer": "stab"}
MAXPOOL_NOTES = {"avg": "as avg-pool", "wta": "winner-takes-all"}


def _value(value: Any) -> str:
    if isinstance(value, Rule):  # a rule of rules (rules.Attention)
        return describe_rule(value)
    if isinstance(value, torch.Tensor):
        if value.numel() == 1:
            return f"{value.item():.3g}"
        return f"[{value.min().item():.3g}…{value.max().item():.3g}]"
    return f"{value:g}" if isinstance(value, float) else repr(value)


def describe_rule(rule: Rule | None) -> str:
    """A compact ``Name(param=value)``: the rule's own parameters always, the stabilizer and
    ``ignore_bias`` only when not the default: ``Gamma(γ=0.25)``, ``Epsilon(ε=0.25·std)``,
    ``ZBox(-2.12…2.64)`` (the lowest and highest bound), ``TopK(10%, ZPlus())``, and the rules
    of a rule so: ``Attention(scores=Epsilon(ε=1e-06), softmax=SoftmaxTaylor(), ...)``."""
    if rule is None:
        return ""
    if isinstance(rule, TopK):
        return f"TopK({rule.percent:g}%, {describe_rule(rule.rule)})"
    if not dataclasses.is_dataclass(rule):
        return repr(rule)
    parts = []
    for field in dataclasses.fields(rule):
        value = getattr(rule, field.name)
        if field.name in ("scale", "low", "high") or (
            field.name in ("stabilizer", "ignore_bias") and _equal(value, field.default)
        ):
            continue
        if field.name == "ignore_bias":
            parts.append("no bias")
            continue
        text = f"{SYMBOLS.get(field.name, field.name)}={_value(value)}"
        if field.name == "epsilon" and isinstance(rule, Epsilon) and rule.scale == "std":
            text += "·std"
        parts.append(text)
    if isinstance(rule, ZBox):
        low, high = torch.as_tensor(rule.low).min(), torch.as_tensor(rule.high).max()
        parts.insert(0, f"{low.item():.3g}…{high.item():.3g}")
    return f"{type(rule).__name__}({', '.join(parts)})"


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return False
    return bool(a == b)


def _op(node: fx.Node) -> str:
    if node.op == "placeholder":
        return "input"
    origin = node.meta.get(meta.ORIGIN)
    if origin:
        return str(origin).removeprefix("nn.")
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return str(node.target)


def _notes(node: fx.Node) -> str:
    notes = []
    if node.meta.get(meta.FOLDED):
        path = str(node.meta.get(meta.PATH) or "")
        folded = [_relative(str(bn), path) for bn in node.meta[meta.FOLDED]]
        notes.append("folded " + ", ".join(f"BN {n}" if n.isdigit() else n for n in folded))
    mode = node.meta.get(meta.MAXPOOL)
    if mode:
        notes.append(MAXPOOL_NOTES.get(mode, mode))
    if node.meta.get(meta.STRIPPED):
        notes.append(f"output {node.meta[meta.STRIPPED]} stripped")
    if node.meta.get(meta.NONNEG):
        notes.append("≥0")
    return "; ".join(notes)


def _relative(path: str, to: str) -> str:
    """``path`` without the module prefix it shares with ``to`` (``layer1.0.bn1`` next to
    ``layer1.0.conv1`` is ``bn1``); a bare index keeps its parent (``downsample.1``)."""
    parts, others = path.split("."), to.split(".")
    common = 0
    while common < min(len(parts), len(others)) - 1 and parts[common] == others[common]:
        common += 1
    if parts[common:] and parts[common].isdigit() and common > 0 and len(parts) - common == 1:
        common -= 1
    return ".".join(parts[common:])


def _shape(node: fx.Node) -> str:
    tensor_meta = node.meta.get("tensor_meta")
    shape = getattr(tensor_meta, "shape", None)
    return "×".join(map(str, shape[1:])) if shape is not None else ""  # per sample


def shapes(explainer: Compiled, example: torch.Tensor) -> None:
    """Record the output shape of every node of ``explainer.graph_module`` for ``example``."""
    from torch.fx.passes.shape_prop import ShapeProp

    from lrpfx import guard

    program = getattr(explainer, "program", None)
    if isinstance(program, fx.GraphModule):  # named errors, as explaining it would give
        guard.check_x(program, explainer.graph_module, example, "example")
    with torch.no_grad():
        ShapeProp(explainer.graph_module).propagate(example)


def _rule(node: fx.Node) -> str:
    text = describe_rule(node.meta.get(meta.RULE))
    relevance_filter = node.meta.get(FILTER)
    if relevance_filter is not None:
        text = f"TopK({relevance_filter.percent:g}%, {text})"
    return text


def table(explainer: Compiled, example: torch.Tensor | None = None) -> Table:
    """The rich table of ``lrpfx.show``: node, op, rule, shape, notes."""
    if example is not None:
        shapes(explainer, example)
    every = [n for n in explainer.graph_module.graph.nodes if n.op not in ("get_attr", "output")]
    nodes = [n for n in every if n.op == "placeholder" or n.meta.get(meta.CARRIES)
             or n.meta.get(meta.RULE) is not None]  # not: shape arithmetic, asserts, masks
    with_shapes = any(_shape(n) for n in nodes)
    hidden = len(every) - len(nodes)
    t = Table(title=summary(explainer), title_justify="left", box=box.SIMPLE_HEAD,
              pad_edge=False, title_style="bold",
              caption=f"{hidden} node(s) on shapes and constants only, without relevance, "
                      "not listed" if hidden else None, caption_justify="left")
    t.add_column("node", overflow="fold", style="cyan", max_width=44)
    t.add_column("op", overflow="fold", max_width=16)
    t.add_column("rule", overflow="fold", style="green", min_width=16, ratio=2)
    if with_shapes:
        t.add_column("shape", no_wrap=True, style="dim")
    t.add_column("notes", overflow="fold", style="yellow", min_width=12, ratio=1)
    for node in nodes:
        row = [node.meta.get(meta.PATH) or node.name, _op(node), _rule(node)]
        row += [_shape(node)] if with_shapes else []
        t.add_row(*row, _notes(node))
    return t


def show(explainer: Compiled, console: Console | None = None, *,
         example: torch.Tensor | None = None) -> None:
    """Print the annotated graph of ``explainer``: one row per node with its rule.

    Args:
        explainer: from ``lrpfx.compile``.
        console: where to print (default: a new ``rich`` console, which renders as HTML in
            Jupyter).
        example: an input batch; with it the table has each node's output shape.
    """
    (console or Console()).print(table(explainer, example))


def summary(explainer: Compiled) -> str:
    """One line: model, composite, how many layers of each kind, what canonization did (the
    explainer's ``repr``)."""
    return explainer_summary(explainer.graph_module, explainer.program, explainer.composite)
