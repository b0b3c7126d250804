"""What an explainer returns, checked after its program ran.

- ``finite``: no NaN or Inf out of finite inputs. It raises ``NonFiniteError`` naming the first
  node of the program that produced one, found by re-running the program node by node (only
  then, so a finite explanation costs one ``aminmax`` reduction per tensor), with the explanation
  attached.
- ``vanished``: no input relevance that is exactly zero while the output relevance is not. It
  warns (``VanishedRelevanceWarning``) naming the node of the program where the relevance first
  became zero and how much it had shrunk on the way, found the same way (only then: a
  non-vanished explanation costs one ``any`` reduction). The usual cause is a stabilizer ε
  that swamps ``z`` where a model's values are tiny (random weights, a degenerate model).
"""

from __future__ import annotations

import operator
import warnings
from typing import Any

import torch
from torch import fx

from lrpfx import outputs
from lrpfx import runtime as rt
from lrpfx.errors import NonFiniteError, VanishedRelevanceWarning


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
        return not rt.finite(value)
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
    forward, stack = set(), [n for _, n in outputs.leaves(model_output)]
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
           output_relevance: Any, inputs: tuple[Any, ...] | None = None) -> Any:
    """Return ``explanation``, which ``program`` computed from ``(x, target, output_relevance)``
    (``(*inputs, target, output_relevance)`` for a model with several inputs), if its output
    and relevance are finite; else raise ``NonFiniteError`` saying where the first NaN/Inf
    came from."""
    relevance, tensors = explanation[1], [t for _, t in outputs.leaves(explanation[0])]
    if all(rt.finite(t) for t in [relevance, *tensors]):
        return explanation
    rows = ~torch.isfinite(relevance.reshape(relevance.shape[0], -1)).all(1)
    for t in tensors:
        rows |= ~torch.isfinite(t.reshape(t.shape[0], -1)).all(1)
    samples = [int(i) for i in rows.nonzero()[:, 0]]
    node = _origin(program, (*(inputs or (x,)), target, output_relevance))
    where = ""
    if node is not None:
        op = getattr(node.target, "__name__", str(node.target))
        hint = _hint(program, node, explanation[0].dtype)
        where = (f"; the first one comes from node {node.name!r} ({op}) of the relevance "
                 f"program (print(explainer.code)): {hint}")
    raise NonFiniteError(
        f"the explanation contains NaN/Inf for sample(s) {samples} although x is finite{where}."
        " The result is in this error's .explanation.",
        explanation, None if node is None else node.name, samples,
    )


class _Magnitudes(fx.Interpreter):
    """Runs the program; for every node computed from the output relevance, the largest
    ``|value|`` over the given samples."""

    def __init__(self, program: fx.GraphModule, samples: list[int], batch: int) -> None:
        super().__init__(program)
        self.samples, self.batch = samples, batch
        self.relevant: set[fx.Node] = set()
        self.largest: dict[fx.Node, float] = {}
        self.seeds: set[fx.Node] = set()  # the output relevance, each output's of a structure

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        seed = n.op == "call_function" and (n.target is rt.output_relevance or (
            n.target is operator.getitem and n.args[0] in self.seeds))  # one of a structure
        if seed:
            self.seeds.add(n)
        if n.op != "output" and (seed or any(a in self.relevant for a in n.all_input_nodes)):
            self.relevant.add(n)
            values = value if seed and isinstance(value, tuple) else (value,)  # structured
            if all(isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim()
                   and v.shape[0] == self.batch for v in values):
                self.largest[n] = max(float(v[self.samples].abs().max()) for v in values)
        return value


def _where_vanished(program: fx.GraphModule, args: tuple[Any, ...], samples: list[int],
                    batch: int) -> tuple[fx.Node, float, float] | None:
    """The first node whose value is zero while a relevance it reads is not, the largest
    ``|R|`` at the output and just before that node."""
    runner = _Magnitudes(program, samples, batch)
    with torch.no_grad():
        runner.run(*args)
    seen = runner.largest
    for node, size in seen.items():
        before = [seen[a] for a in node.all_input_nodes if a in seen]
        if size == 0.0 and node not in runner.seeds and any(b > 0.0 for b in before):
            return node, next(iter(seen.values())), max(before)
    return None


_UNDERFLOW = ("It shrank on the way until it underflowed: the rules' epsilon/stabilizer swamps z "
              "where the model's values are tiny (random weights, a degenerate model); try a "
              "smaller epsilon, rules.Epsilon(..., scale='std'), or float64.")


def vanished(program: fx.GraphModule, explanation: Any, x: torch.Tensor, target: Any,
             output_relevance: Any, inputs: tuple[Any, ...] | None = None) -> Any:
    """Return ``explanation``; warn first when the relevance of a sample is exactly zero while
    its output relevance is not (see the module docstring)."""
    output, relevance = explanation[0], explanation[1]
    zero = ~relevance.reshape(relevance.shape[0], -1).any(1)
    if not bool(zero.any()):
        return explanation
    seeds = rt.output_relevance(output, target, output_relevance)
    seeded = torch.zeros_like(zero)
    for seed in seeds if isinstance(seeds, tuple) else (seeds,):
        seeded |= seed.reshape(seed.shape[0], -1).any(1)
    zero &= seeded
    samples = [int(i) for i in zero.nonzero()[:, 0]]
    if not samples:
        return explanation
    found = _where_vanished(program, (*(inputs or (x,)), target, output_relevance), samples,
                            x.shape[0])
    where, hint = "", _UNDERFLOW
    if found is not None:
        node, start, last = found
        where = (f": it first becomes zero at node {node.name!r} of the relevance program "
                 f"(print(explainer.code)), from |R| = {last:.3g} before it and {start:.3g} at "
                 "the output")
        if node.target is rt.top_k:
            hint = "The relevance filter (filters.TopK) kept only zero entries there."
        elif last > start * 1e-12:
            hint = ("Nothing there passes it on: no unit is active for the sample, or the "
                    "weights or patterns of that layer are zero.")
    warnings.warn(
        f"the relevance of sample(s) {samples} vanished (it is exactly zero at the input, the "
        f"output relevance is not){where}. {hint}",
        VanishedRelevanceWarning, stacklevel=5,  # the caller of explainer(x)
    )
    return explanation
