"""What an explainer returns, checked after its program ran: no NaN or Inf out of finite inputs.

``finite`` raises ``NonFiniteError`` naming the first node of the program that produced one,
found by re-running the program node by node (only then, so a finite explanation costs two
``isfinite`` reductions), with the explanation attached.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from lrpfx.errors import NonFiniteError


class _FirstNonFinite(fx.Interpreter):
    """Runs the program node by node and stops at the first node whose value is non-finite
    while all its inputs are finite."""

    class Found(Exception):
        def __init__(self, node: fx.Node) -> None:
            self.node = node

    def __init__(self, program: fx.GraphModule) -> None:
        super().__init__(program)
        self.bad: set[fx.Node] = set()

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        if n.op in ("placeholder", "output") or not _nonfinite(value):
            return value
        if any(a in self.bad for a in n.all_input_nodes):
            self.bad.add(n)
            return value
        raise self.Found(n)


def _nonfinite(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.is_floating_point() and not bool(torch.isfinite(value).all())
    if isinstance(value, tuple | list):
        return any(_nonfinite(v) for v in value)
    return False


def _origin(program: fx.GraphModule, args: tuple[Any, ...]) -> fx.Node | None:
    try:
        with torch.no_grad():
            _FirstNonFinite(program).run(*args)
    except _FirstNonFinite.Found as found:
        return found.node
    return None


def _hint(program: fx.GraphModule, node: fx.Node, dtype: torch.dtype) -> str:
    output = next(n for n in program.graph.nodes if n.op == "output")
    model_output = output.args[0][0]  # type: ignore[index]
    forward, stack = set(), [model_output]
    while stack:
        n = stack.pop()
        if n not in forward:
            forward.add(n)
            stack.extend(n.all_input_nodes)
    if node.op == "get_attr":
        return "a parameter or buffer of the model is already NaN/Inf"
    if node in forward:
        return f"the model's own forward overflows there in {dtype}; explain in a wider dtype"
    if node.target in (torch.div, torch.true_divide) or getattr(node.target, "__name__", "") in (
            "truediv", "div"):
        return ("a denominator z is 0 where the rule's stabilizer is 0 (or too small for "
                f"{dtype}); give the rule a positive epsilon/stabilizer, e.g. rules.Epsilon(1e-6)")
    return f"a value overflows {dtype} there; explain in a wider dtype"


def finite(program: fx.GraphModule, explanation: Any, x: torch.Tensor, target: Any,
           output_relevance: Any) -> Any:
    """Return ``explanation``, which ``program`` computed from ``(x, target, output_relevance)``,
    if its output and relevance are finite; else raise ``NonFiniteError`` saying where the
    first NaN/Inf came from."""
    output, relevance = explanation[0], explanation[1]
    if bool(torch.isfinite(relevance).all() & torch.isfinite(output).all()):
        return explanation
    rows = ~torch.isfinite(relevance.reshape(relevance.shape[0], -1)).all(1)
    rows |= ~torch.isfinite(output.reshape(output.shape[0], -1)).all(1)
    samples = [int(i) for i in rows.nonzero()[:, 0]]
    node = _origin(program, (x, target, output_relevance))
    where = ""
    if node is not None:
        op = getattr(node.target, "__name__", str(node.target))
        hint = _hint(program, node, x.dtype)
        where = (f"; the first one comes from node {node.name!r} ({op}) of the relevance "
                 f"program (print(explainer.code)): {hint}")
    raise NonFiniteError(
        f"the explanation contains NaN/Inf for sample(s) {samples} although x is finite{where}."
        " The result is in this error's .explanation.",
        explanation, None if node is None else node.name, samples,
    )
