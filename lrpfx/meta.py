"""Keys of the annotations lrpfx writes into ``node.meta`` (every one of them), and small graph
questions."""

from __future__ import annotations

import re

from torch import fx

PATH = "lrpfx.path"  # qualified name of the module the node came from ("features.0")
MODULE_TYPE = "lrpfx.module_type"  # class of that module
ORIGIN = "lrpfx.origin"  # the spelling the node had before normalize ("nn.ReLU", "torch.relu")
FOLDED = "lrpfx.folded"  # qualified names of BatchNorms folded into this node
MAXPOOL = "lrpfx.maxpool"  # "avg" or "wta"
UNSUPPORTED = "lrpfx.unsupported"  # why a node was left as it was (normalize, maxpool)
STATIC_SHAPE = "lrpfx.static_shape"  # on the input: the only shape it takes (example_inputs)
DTYPE = "lrpfx.dtype"  # on an input: the dtype of its example value (example_inputs)
# where relevance is taken: the explained input, or the embedding lookups of explained token ids
EXPLAINED = "lrpfx.explained"  # "input", "tokens" (the ids' placeholder) or "embedding"
INPUT, TOKENS, EMBEDDING = "input", "tokens", "embedding"  # the values of EXPLAINED
STRIPPED = "lrpfx.stripped"  # on the logits node: the output (log-)softmax stripped after it
# facts, written once by passes.facts
KIND = "lrpfx.kind"  # the op family (ops.table.OpKind), None for ops not in the table
SHAPE = "lrpfx.shape"  # the value is a size, a rank, a dtype or integer arithmetic on them
CARRIES = "lrpfx.carries"  # a tensor computed from the explained input: it receives relevance
CONE = "lrpfx.cone"  # carries and reaches the output: relevance flows through it
NONNEG = "lrpfx.nonneg"  # True when the value is statically known to be >= 0
GATE = "lrpfx.gate"  # the value lies in [0, 1] (a sigmoid or softmax, maybe re-indexed)
TAKES_RULE = "lrpfx.takes_rule"  # the composite gives the node a rule
RULE = "lrpfx.rule"  # the rule the composite assigned (annotate)
FILTER = "lrpfx.filter"  # the relevance filter of the node's output (annotate)
# program passes
LIKE = "lrpfx.like"  # indices of the args whose shape and dtype the result has


def identifier(path: str) -> str:
    """A Python identifier for a qualified name: ``features.0`` -> ``features_0``, ``0`` ->
    ``_0``."""
    name = re.sub(r"\W", "_", path)
    return f"_{name}" if name[:1].isdigit() else name


def display_name(node: fx.Node) -> str:
    """A readable identifier for a forward node: its module path, else its fx name."""
    path = node.meta.get(PATH)
    return identifier(path) if path else node.name
