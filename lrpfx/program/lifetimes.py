"""Where the explain program reads each value, and which values share storage: what the program
passes that free memory (``recompute``, ``shapes``) reason about.

The program is a forward, then the turn (``runtime.output_relevance``, the output relevance),
then the backward; a forward value the backward reads is held across the turn. Storage is
tracked as far as it is known: a node that may return a view of its first argument (anything
not known to make a new tensor) shares that argument's storage owner.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import fx

from lrpfx import runtime as rt

QUERIES = {"size", "dim", "numel"}  # methods whose result is no tensor


def turn(graph: fx.Graph) -> fx.Node | None:
    """The node where the forward ends and the backward starts (None in a hand-made graph)."""
    return next((n for n in graph.nodes
                 if n.op == "call_function" and n.target is rt.output_relevance), None)


class Lifetimes:
    """Where each value of the program is read, and which values share storage; kept up to date
    by ``inserted`` and ``moved`` as a pass rewrites the graph.

    ``fresh(node)`` says whether a node's result is known to be a new tensor.
    """

    def __init__(self, graph: fx.Graph, turn: fx.Node, fresh: Callable[[fx.Node], bool]) -> None:
        self.graph, self.fresh = graph, fresh
        self.order: dict[fx.Node, float] = {n: float(i) for i, n in enumerate(graph.nodes)}
        self.turn = self.order[turn]
        self.base: dict[fx.Node, fx.Node] = {}  # storage owner, as far as known
        self.views: dict[fx.Node, list[fx.Node]] = {}  # owner -> the views of it, in order
        self.held: dict[fx.Node, float] = {}  # owner -> where its storage is last read
        for node in graph.nodes:
            self._share(node)
        for owner in set(self.base.values()):
            self.moved(owner)

    def _share(self, node: fx.Node) -> None:
        first = node.args[0] if node.args else None
        view = (node.op in ("call_function", "call_method") and isinstance(first, fx.Node)
                and not self.fresh(node) and node.target not in QUERIES)
        owner = self.base[first] if view else node  # type: ignore[index]
        self.base[node] = owner
        if owner is not node:
            self.views.setdefault(owner, []).append(node)

    def inserted(self, nodes: list[fx.Node]) -> None:
        """``nodes`` were inserted, one after the other, into the graph."""
        before, after = nodes[0].prev, nodes[-1].next
        low, high = self.order[before], self.order[after]
        if high - low < 1e-6 * len(nodes):  # no room left between them: number anew
            self.order = {n: float(i) for i, n in enumerate(self.graph.nodes)}
        else:
            for i, node in enumerate(nodes, 1):
                self.order[node] = low + (high - low) * i / (len(nodes) + 1)
        for node in nodes:
            self._share(node)
            self.held[node] = self.order[node]
        for owner in {self.base[n] for n in nodes}:
            self.moved(owner)

    def moved(self, owner: fx.Node) -> None:
        """The readers of ``owner``'s storage changed: where it is last read, again."""
        self.held[owner] = max(self.order[u] if u in self.order else self.order[n]
                               for n in self.group(owner) for u in [n, *n.users])

    def forward(self, node: fx.Node) -> bool:
        return self.order[node] < self.turn

    def late(self, node: fx.Node) -> list[fx.Node]:
        """The readers of ``node`` in the backward."""
        return [u for u in node.users if self.order[u] > self.turn]

    def group(self, owner: fx.Node) -> list[fx.Node]:
        """``owner`` and the views of it, in program order."""
        return [owner, *self.views.get(owner, [])]

    def derived(self, node: fx.Node) -> list[fx.Node]:
        """``node`` and the views the forward takes of it (and of those), in program order."""
        found = [node]
        for view in self.views.get(self.base[node], []):
            if node is not view and self.forward(view) and view.args[0] in found \
                    and self.order[view] > self.order[node]:
                found.append(view)
        return found
