"""The explained input of a model with several inputs, and where its relevance is taken.

A model may take several inputs (``input_ids`` and ``attention_mask``; an image and a flag
tensor). One of them is explained; the others are passed through: their values are computed,
and nothing computed from them alone carries relevance (``passes.facts``). ``mark_explained``
writes ``meta.EXPLAINED`` on the node where relevance is taken:

- a floating-point input: on its placeholder (``"input"``); the relevance has its shape;
- token ids (an integer input): ``"tokens"`` on the placeholder and ``"embedding"`` on every
  embedding lookup that reads them (``F.embedding(ids, weight)``, through re-indexings): the
  relevance is taken at the embedding output, ``(batch, seq, hidden)``, and reported per token
  by the explainer (summed over the hidden dimension). A lookup table has no relevance rule of
  its own, so this is the input of the relevance program, as in LXT and AttnLRP.

The explained input is the one named by ``explain=``, else the first floating-point input,
else the first integer input read by an embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx

from lrpfx import meta
from lrpfx.errors import TraceError
from lrpfx.meta import EMBEDDING, INPUT, TOKENS


def argument_name(node: fx.Node) -> str:
    """The name of the model's argument a placeholder stands for."""
    return str(node.target).lstrip("*")


def input_names(gm: fx.GraphModule) -> list[str]:
    """The names of the model's inputs, in the order of its arguments."""
    return [argument_name(n) for n in gm.graph.find_nodes(op="placeholder")]


def _integer(node: fx.Node) -> bool:
    dtype = node.meta.get(meta.DTYPE)
    return dtype is not None and not dtype.is_floating_point and dtype != torch.bool


def _lookups(gm: fx.GraphModule, ids: fx.Node) -> list[fx.Node]:
    """The embedding lookups whose indices are computed from ``ids``."""
    reached = {ids}
    found = []
    for node in gm.graph.nodes:
        if node is ids or not any(a in reached for a in node.all_input_nodes):
            continue
        if node.op == "call_function" and node.target is F.embedding and node.args[0] in reached:
            found.append(node)  # its output is a tensor of values: not followed further
        else:
            reached.add(node)
    return found


def _choose(gm: fx.GraphModule, explain: str | None) -> fx.Node:
    placeholders = list(gm.graph.find_nodes(op="placeholder"))
    names = [argument_name(n) for n in placeholders]
    if not placeholders:
        raise TraceError(f"{type(gm).__name__} takes no tensor input: nothing to explain")
    if explain is not None:
        if explain not in names:
            raise ValueError(f"explain={explain!r} is not an input of the model; its inputs "
                             f"are {', '.join(names)}")
        return placeholders[names.index(explain)]
    floats = [n for n in placeholders if n.meta.get(meta.DTYPE, torch.float32).is_floating_point]
    if floats:
        return floats[0]
    ids = [n for n in placeholders if _integer(n) and _lookups(gm, n)]
    if ids:
        return ids[0]
    raise TraceError(f"none of the inputs {', '.join(names)} is floating point or token ids "
                     "read by an embedding; name the input to explain with explain=...")


def mark_explained(gm: fx.GraphModule, explain: str | None = None) -> fx.GraphModule:
    """Write ``meta.EXPLAINED`` (see the module docstring) and return ``gm``.

    Raises:
        ValueError: ``explain`` names no input.
        TraceError: no input can be explained (none floating point, no token ids), or token
            ids that no embedding reads.
    """
    chosen = _choose(gm, explain)
    if not _integer(chosen):
        chosen.meta[meta.EXPLAINED] = INPUT
        return gm
    lookups = _lookups(gm, chosen)
    if not lookups:
        raise TraceError(f"the explained input {argument_name(chosen)!r} holds integers but no "
                         "embedding lookup (nn.Embedding, F.embedding) reads it; explain a "
                         "floating-point input (explain=...) or pass the embeddings instead")
    chosen.meta[meta.EXPLAINED] = TOKENS
    for node in lookups:
        node.meta[meta.EXPLAINED] = EMBEDDING
    return gm
