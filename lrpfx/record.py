"""Which relevances the program returns besides the input's: ``compile(..., record=...)``.

A recorded name maps to the relevance of the **output** of that node, as it arrives from above
(before a relevance filter of that node applies). For a Sequential VGG, ``layers["features.30"]``
is what the LRP tutorial calls ``R[31]``. Names are module paths (``"features.0"``), or fx node
names for function calls (``"relu_1"``, ``"add"``); a module called twice records as
``"path"`` and ``"path@2"``; a BatchNorm folded into a convolution records as that convolution.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import fx

from lrpfx import meta
from lrpfx.ops import table

RecordSpec = bool | Sequence[str] | None


def recordable(gm: fx.GraphModule, aliases: bool = False) -> dict[str, fx.Node]:
    """The names that can be recorded, in execution order, with the node each stands for;
    ``aliases`` adds the names of folded BatchNorms."""
    names: dict[str, fx.Node] = {}
    folded: dict[str, fx.Node] = {}
    for node in gm.graph.nodes:
        facts = table.OPS.get(node.target) if node.op == "call_function" else None
        if not node.meta.get(meta.CONE) or node.op == "placeholder" or facts and facts.pieces:
            continue  # a tuple of pieces is recorded piece by piece (its getitem nodes)
        base = node.meta.get(meta.PATH) or node.name
        name, k = base, 1
        while name in names:
            k += 1
            name = f"{base}@{k}"
        names[name] = node
        folded.update((path, node) for path in node.meta.get(meta.FOLDED, ()))
    return {**names, **folded} if aliases else names


def select(gm: fx.GraphModule, spec: RecordSpec) -> dict[str, fx.Node]:
    """The nodes to record: none (``None``/``False``), all (``True``) or the named ones.

    Raises:
        ValueError: a name that is not in the graph; the message lists the names that are.
    """
    if not spec:
        return {}
    if spec is True:
        return recordable(gm)
    names = recordable(gm, aliases=True)
    if isinstance(spec, str):
        spec = [spec]
    missing = [n for n in spec if n not in names]
    if missing:
        available = ", ".join(list(names)[:40]) + (", ..." if len(names) > 40 else "")
        raise ValueError(
            f"record: no node named {', '.join(map(repr, missing))} on the relevance path "
            f"(dropout and identities are removed when compiling). Recordable: {available}"
        )
    return {n: names[n] for n in spec}
