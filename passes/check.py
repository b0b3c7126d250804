"""check: every node on the relevance path can be explained, or one error lists them all.

Before: an annotated graph.
After:  the same graph, unchanged; or ``UnsupportedOperationError`` naming, for every
offending node, its module path, op, source line and what to do.
"""

from __future__ import annotations

from torch import fx

from lrpfx import meta
from lrpfx.diagnostics import where as _where  # a node: spelling, module, source line
from lrpfx.errors import UnsupportedOperationError
from lrpfx.ops.registry import lookup

HINT = (
    "Fix: register a relevance implementation with @lrpfx.register(<op or module class>, "
    "kind=..., rules=(...)), give the node a supported rule in the composite, or mark a "
    "submodule that contains the op as a leaf (leaf_modules=[...]) and register that module."
)


def _problem(node: fx.Node, modules: dict) -> str | None:
    impl = lookup(node, modules)
    reason = node.meta.get("lrpfx.unsupported")
    if reason and not (node.op == "call_module" and impl is not None):  # a registered module
        return reason
    if impl is None:
        return "no relevance implementation for this op"
    if not impl.takes_rule(node):
        return None
    rule = node.meta.get(meta.RULE)
    if rule is None:
        return "no composite entry matches it; add one for its class, name or kind"
    if not isinstance(rule, impl.rules):
        accepted = ", ".join(r.__name__ for r in impl.rules)
        return f"rule {rule!r} is not supported by {impl.kind!r} ops (accepted: {accepted})"
    return None


def check(gm: fx.GraphModule) -> fx.GraphModule:
    """Raise one error listing every node that cannot be explained (see the module docstring)."""
    modules = dict(gm.named_modules())
    cone = meta.relevance_cone(gm.graph)
    problems = [
        f"{_where(n)}: {p}"
        for n in gm.graph.nodes
        if n in cone and n.op not in ("placeholder", "output", "get_attr")
        and (p := _problem(n, modules)) is not None
    ]
    outputs = [n for n in gm.graph.nodes if n.op == "output"]
    if outputs and not isinstance(outputs[0].args[0], fx.Node):
        problems.append("output: the model must return one tensor")
    if problems:
        raise UnsupportedOperationError(problems, HINT)
    return gm
