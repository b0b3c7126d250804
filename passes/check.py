"""check: every node on the relevance path can be explained, or one error lists them all.

Before: an annotated graph.
After:  the same graph, unchanged; or ``UnsupportedOperationError`` naming, for every
offending node, its module path, op, source line and what to do (and every output that is not a
tensor: a model returns one tensor or a dict / tuple / list of them). A node passes when the op
table has a row for its op and its rule's class (or, without a rule, a row for that); fitted
patterns are checked against their weights (``lrpfx.patterns.PatternError``).
"""

from __future__ import annotations

from torch import fx

from lrpfx import meta, outputs
from lrpfx.diagnostics import where as _where  # a node: spelling, module, source line
from lrpfx.errors import ExampleInputsNeededError, UnsupportedOperationError
from lrpfx.frontend import static
from lrpfx.ops import table
from lrpfx.ops.patterns import check_patterns

NO_ROW = "no relevance implementation for this op"
HINT = (
    "Fix: register a relevance implementation with @lrpfx.register(<op or module class>, "
    "kind=..., rules=(...)), give the node a supported rule in the composite, or mark a "
    "submodule that contains the op as a leaf (leaf_modules=[...]) and register that module."
)


def _wrapped_hint(node: fx.Node) -> str:
    """For a function wrapped with ``torch.fx.wrap``: how to trace through it."""
    if node.op == "call_function" and static.wrapped(node.target):
        return ("; it is a function wrapped with torch.fx.wrap (traced as one call): pass "
                "example_inputs=<an input> to lrpfx.compile to trace through it with static "
                "shapes")
    return ""


def _problem(node: fx.Node, modules: dict) -> str | None:
    key = table.op_key(node, modules)
    facts = table.OPS.get(key) if key is not None else None
    reason = node.meta.get(meta.UNSUPPORTED)
    if reason and not (node.op == "call_module" and facts is not None):  # a registered module
        return reason
    if facts is None:
        return NO_ROW + _wrapped_hint(node)
    rule = node.meta.get(meta.RULE)
    if not node.meta.get(meta.TAKES_RULE):
        return None if table.backward(node, modules, None) else NO_ROW
    if rule is None:
        return "no composite entry matches it; add one for its class, name or kind"
    if table.backward(node, modules, rule) is None:
        accepted = ", ".join(r.__name__ for r in table.rules_of(key))  # type: ignore[arg-type]
        return (f"rule {rule!r} is not supported by {facts.kind.value!r} ops "
                f"(accepted: {accepted})")
    return None


def _output_problems(gm: fx.GraphModule) -> list[str]:
    """The model output must be a tensor, or a dict / tuple / list of tensors."""
    output = next((n for n in gm.graph.nodes if n.op == "output"), None)
    if output is None:
        return []
    return [f"output: {outputs.spell(path)} is {type(leaf).__name__}; the model must return "
            "one tensor or a dict / tuple / list of tensors (compute the others outside)"
            for path, leaf in outputs.leaves(output.args[0]) if not isinstance(leaf, fx.Node)]


def check(gm: fx.GraphModule) -> fx.GraphModule:
    """Raise one error listing every node that cannot be explained (see the module docstring)."""
    modules = dict(gm.named_modules())
    found = [(n, p) for n in gm.graph.nodes
             if n.meta.get(meta.CONE) and n.op not in ("placeholder", "get_attr")
             and not n.meta.get(meta.EXPLAINED) and (p := _problem(n, modules)) is not None]
    problems = [f"{_where(n)}: {p}" for n, p in found]
    problems += _output_problems(gm)
    if found and len(found) == len(problems) and all(_wrapped_hint(n) for n, _ in found):
        raise ExampleInputsNeededError(problems, HINT)  # static shapes would trace through
    if problems:
        raise UnsupportedOperationError(problems, HINT)
    check_patterns(gm)
    return gm
