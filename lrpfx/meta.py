"""Keys of the annotations lrpfx writes into ``node.meta``, and small graph questions."""

from __future__ import annotations

import re

import networkx as nx
from torch import fx

PATH = "lrpfx.path"  # qualified name of the module the node came from ("features.0")
MODULE_TYPE = "lrpfx.module_type"  # class of that module
ORIGIN = "lrpfx.origin"  # the spelling the node had before normalize ("nn.ReLU", "torch.relu")
FOLDED = "lrpfx.folded"  # qualified names of BatchNorms folded into this node
MAXPOOL = "lrpfx.maxpool"  # "avg" or "wta"
RULE = "lrpfx.rule"  # the rule the composite assigned
NONNEG = "lrpfx.nonneg"  # True when the value is statically known to be >= 0


def to_networkx(graph: fx.Graph) -> nx.DiGraph:
    """The data-flow graph of ``graph`` as a networkx DiGraph of fx nodes."""
    g = nx.DiGraph()
    for node in graph.nodes:
        g.add_node(node)
        for user in node.users:
            g.add_edge(node, user)
    return g


def relevance_cone(graph: fx.Graph) -> set[fx.Node]:
    """Nodes on a path from an input to the output: the ones relevance can flow through."""
    g = to_networkx(graph)
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    output = next(n for n in graph.nodes if n.op == "output")
    below: set[fx.Node] = set(inputs).union(*(nx.descendants(g, n) for n in inputs))
    return below & nx.ancestors(g, output)


def identifier(path: str) -> str:
    """A Python identifier for a qualified name: ``features.0`` -> ``features_0``, ``0`` ->
    ``_0``."""
    name = re.sub(r"\W", "_", path)
    return f"_{name}" if name[:1].isdigit() else name


def display_name(node: fx.Node) -> str:
    """A readable identifier for a forward node: its module path, else its fx name."""
    path = node.meta.get(PATH)
    return identifier(path) if path else node.name
