"""softmax: the model check for an output softmax (as RelevancePropagation.jl's ``check_model``).

LRP explains a score that the network builds up layer by layer: a logit. A softmax or
log-softmax at the output turns it into a probability, whose relevance does not decompose over
the input the same way (and the target "logit" becomes a probability below 1).

Before: a normalized graph.
After:  unchanged when the output is not a (log-)softmax; with ``strip=True`` the output is the
softmax's input (the logits) and that node carries ``meta["lrpfx.stripped"]``; otherwise
``ModelCheckError`` names the node and the two fixes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from lrpfx import meta
from lrpfx.diagnostics import spelling
from lrpfx.errors import ModelCheckError  # raised here, and importable from here as before

STRIPPED = meta.STRIPPED  # on the logits node: what was stripped after it
SOFTMAX_FUNCTIONS = {
    F.softmax: "softmax", torch.softmax: "softmax", torch.special.softmax: "softmax",
    F.log_softmax: "log-softmax", torch.log_softmax: "log-softmax",
    torch.special.log_softmax: "log-softmax",
}
SOFTMAX_METHODS = {"softmax": "softmax", "log_softmax": "log-softmax"}
SOFTMAX_MODULES = {nn.Softmax: "softmax", nn.Softmax2d: "softmax", nn.LogSoftmax: "log-softmax"}


def softmax_kind(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """``"softmax"`` or ``"log-softmax"`` when ``node`` computes one, in any spelling."""
    if node.op == "call_function":
        return SOFTMAX_FUNCTIONS.get(node.target)  # type: ignore[call-overload]
    if node.op == "call_method":
        return SOFTMAX_METHODS.get(str(node.target))
    if node.op == "call_module":
        module = modules.get(str(node.target))
        return SOFTMAX_MODULES.get(type(module)) if module is not None else None
    return None


def strip_softmax(gm: fx.GraphModule, strip: bool = False) -> fx.GraphModule:
    """Check the output for a (log-)softmax; strip it or raise (see the module docstring)."""
    output = next(n for n in gm.graph.nodes if n.op == "output")
    last = output.args[0]
    if not isinstance(last, fx.Node):
        return gm
    kind = softmax_kind(last, dict(gm.named_modules()))
    if kind is None:
        return gm
    if not strip:
        raise ModelCheckError(
            f"the model output is a {kind} ({spelling(last)}): LRP explains logits, not "
            "probabilities. Fix: compile with strip_softmax=True to explain the logits before "
            "it, or pass the model without its output softmax."
        )
    logits = last.args[0]
    assert isinstance(logits, fx.Node)
    output.args = (logits,)
    logits.meta[STRIPPED] = kind
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    return gm
