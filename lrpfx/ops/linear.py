"""The linear family's recipe (``deflinear``): conv, linear, eval-mode BatchNorm (affine),
average pools, mean/sum and max-pools read as average pools all use it (``linear_rule``).

Every member is ``z = f(x; w, b)`` with ``f`` linear in ``x`` and in ``w``. One recipe serves
them all (see ``lrpfx.rules``): for each group of the rule, ``z`` = sum of modified forwards,
``s = R / stabilize(z)``, ``c = f_wᵀ(s)`` with an explicit transposed op, ``R_in = in(x) * c``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

from lrpfx import meta
from lrpfx import runtime as rt
from lrpfx.builder import Builder, like
from lrpfx.ops import shortcuts
from lrpfx.ops.table import Backward, Contribution
from lrpfx.rules import IDENTITY, Epsilon, Group, Rule, Term

Emit = Callable[[Builder, fx.Node, Any, Any, Any], fx.Node]
Transpose = Callable[[Builder, fx.Node, fx.Node, Any], fx.Node]


@dataclass(frozen=True)
class LinearOp:
    """How to run ``f(x; w, b)`` and its transpose ``f_wᵀ(s)`` for one op.

    ``weight``/``bias`` are the argument positions of the parameters (None for pools);
    ``output_is_z`` says the node's own output is ``f(x; w, b)``, so rules that need no
    modification reuse it instead of running the layer again.
    """

    forward: Emit
    transpose: Transpose
    weight: int | None = None
    bias: int | None = None
    output_is_z: bool = True


def _simplify(term: Term, nonneg: bool) -> Term | None:
    """Drop the x⁻ part of a term for an input known to be >= 0 (and x⁺ = x there)."""
    if nonneg and term.input == "x-":
        return None
    if nonneg and term.input == "x+":
        return Term("x", term.weight, term.bias, term.sign)
    return term


class _Inputs:
    """The modified inputs of one node, each emitted once.

    ``per_sample``: the op maps each sample on its own (conv, dense, affine), so a constant
    input (ones, bounds) is given as one sample and its forward broadcast over the batch.
    """

    def __init__(self, b: Builder, node: fx.Node, rule: Rule, per_sample: bool = False) -> None:
        self.b, self.node, self.rule, self.per_sample = b, node, rule, per_sample
        self.cache: dict[str, fx.Node] = {}

    def full(self, kind: str) -> bool:
        """Whether the variant ``kind`` in a forward has the input's full (batch) shape."""
        return kind in ("x", "x+", "x-") or not self.per_sample

    def __call__(self, kind: str, for_forward: bool) -> fx.Node | None:
        """The input variant ``kind``; None stands for ones in a product (nothing to multiply)."""
        if kind == "x":
            return self.b[self.node.args[0]]
        if kind == "ones" and not for_forward:
            return None
        key = kind if kind in ("x+", "x-") else f"{kind}/{for_forward}"  # x± serve both
        if key not in self.cache:
            self.cache[key] = self._emit(kind, for_forward)
        return self.cache[key]

    def _emit(self, kind: str, for_forward: bool) -> fx.Node:
        b, n, x = self.b, self.node, self.b[self.node.args[0]]
        if kind == "x+":
            return b.call(torch.clamp, x, min=0, name=f"xpos_{b.name(n)}")
        if kind == "x-":
            return b.call(torch.clamp, x, max=0, name=f"xneg_{b.name(n)}")
        if kind == "ones":
            ones = rt.ones_sample if self.per_sample else torch.ones_like
            return b.call(ones, x, name=f"ones_{b.name(n)}")
        if kind not in self.cache:  # the bound itself, shared by the forward and the product
            weight = b.tensor(n.args[1])  # type: ignore[arg-type]  # zB is for conv/dense
            bound = torch.as_tensor(getattr(self.rule, kind)).to(weight)
            self.cache[kind] = b.constant(bound, name=f"{b.name(n)}_{kind}")
        value = self.cache[kind]
        if not for_forward:
            return value
        if self.per_sample:
            return b.call(rt.expand_sample, value, x, name=f"{kind}_{b.name(n)}")
        return b.method("expand_as", value, x, name=f"{kind}_{b.name(n)}")


def _param(b: Builder, node: fx.Node, index: int | None, mod: Any) -> fx.Node | None:
    """The parameter at ``index`` modified by ``mod``; None when absent or dropped."""
    if index is None or mod is None or node.args[index] is None:
        return None
    return b.attr(node.args[index], mod)  # type: ignore[arg-type]


def _signed_sum(b: Builder, parts: list[tuple[float, fx.Node]], name: str,
                full: list[bool] | None = None) -> fx.Node:
    """``±p0 ± p1 ± ...`` with infix operators, so the generated code reads as the formula.

    ``full[i]``: part ``i`` has the result's shape (False: one sample, broadcast).
    """
    full = full or [True] * len(parts)
    (first_sign, total), *rest = parts
    total_full = full[0]
    if first_sign < 0:
        total = b.call(operator.neg, total, name=name)
    for (sign, part), part_full in zip(rest, full[1:], strict=True):
        total = b.call(operator.add if sign > 0 else operator.sub, total, part, name=name)
        like(total, *(i for i, f in enumerate((total_full, part_full)) if f))
        total_full = total_full or part_full
    return total


def _reuses_forward(op: LinearOp, node: fx.Node, term: Term) -> bool:
    """True when the term's forward is the node's own forward output."""
    if not op.output_is_z or term.input != "x" or term.weight != IDENTITY:
        return False
    return term.bias == IDENTITY or not _biased(op, node)


def _biased(op: LinearOp, node: fx.Node) -> bool:
    return op.bias is not None and node.args[op.bias] is not None


def _z(b: Builder, op: LinearOp, node: fx.Node, terms: list[Term],
       inputs: _Inputs) -> tuple[fx.Node, bool]:
    """A group's ``z`` (its terms' forwards summed) and whether it has the full batch shape."""
    parts, full = [], []
    for t in terms:
        if _reuses_forward(op, node, t):
            parts.append((t.sign, b[node]))
        else:
            weight, bias = _param(b, node, op.weight, t.weight), _param(b, node, op.bias, t.bias)
            parts.append((t.sign, op.forward(b, node, inputs(t.input, True), weight, bias)))
        full.append(inputs.full(t.input))
    return _signed_sum(b, parts, f"z_{b.name(node)}", full), any(full)


def stabilizer(b: Builder, rule: Rule, z: fx.Node, tag: str) -> float | fx.Node:
    """The ε of the denominator: the rule's constant, or one scaled by the std of ``z``."""
    if isinstance(rule, Epsilon) and rule.scale == "std":
        return b.call(rt.std_epsilon, z, rule.epsilon, name=f"eps_{tag}")
    return rule.stabilizer


# one transposed term: (input variant, factor, c); the input relevance is Σ factor · in(x) · c
Transposed = tuple[str, float, fx.Node]


def _group(
    b: Builder, op: LinearOp, node: fx.Node, rel: fx.Node, rule: Rule, group: Group,
    inputs: _Inputs,
) -> list[Transposed]:
    """The transposed terms of one group of a rule."""
    nonneg = bool(node.args[0].meta.get(meta.NONNEG))  # type: ignore[union-attr]
    terms = [t for t in (_simplify(t, nonneg) for t in group.terms) if t is not None]
    if not terms:
        return []
    tag = b.name(node)
    plain = group.coefficient == 1.0 and group.where is None
    if plain and shortcuts.flat_convolution(b, node, terms):
        return [("ones", 1.0, shortcuts.flat_conv(b, node, rel, rule.stabilizer))]
    z, full = _z(b, op, node, terms, inputs)
    epsilon = stabilizer(b, rule, z, tag)
    if shortcuts.nonnegative(terms, nonneg, op.weight is not None, _biased(op, node)):
        z = like(b.call(operator.add, z, epsilon, name=f"z_{tag}"), 0)  # z >= 0: z + ε sign0(z)
    else:
        z = b.call(rt.stabilize, z, epsilon, name=f"z_{tag}")
    s = like(b.call(operator.truediv, rel, z, name=f"s_{tag}"), *((0, 1) if full else (0,)))
    if group.where is not None:
        compare = operator.gt if group.where == "z>0" else operator.lt
        s = like(b.call(operator.mul, s, b.call(compare, b[node], 0, name=f"mask_{tag}"),
                        name=f"s_{tag}"), 0)
    return [(t.input, group.coefficient * t.sign,
             op.transpose(b, node, s, _param(b, node, op.weight, t.weight))) for t in terms]


def _relevance(b: Builder, node: fx.Node, transposed: list[Transposed],
               inputs: _Inputs) -> fx.Node:
    """``Σ_variants in(x) · Σ factor · c``: the transposes of one input variant are summed
    before the product (α-β or γ on a ReLU output: one product for both groups)."""
    tag = b.name(node)
    kinds: dict[str, list[tuple[float, fx.Node]]] = {}
    for kind, factor, c in transposed:
        kinds.setdefault(kind, []).append((factor, c))
    parts = []
    for kind, items in kinds.items():
        sign = 1.0 if items[0][0] > 0 else -1.0  # the first sign goes to the outer sum
        scaled = []
        for factor, c in items:
            if abs(factor) != 1.0:
                c = b.call(operator.mul, c, abs(factor), name=f"c_{tag}")
            scaled.append((1.0 if factor * sign > 0 else -1.0, c))
        c = _signed_sum(b, scaled, f"c_{tag}")
        x = inputs(kind, False)
        if x is not None:  # c has the input's shape; a bound may be smaller
            c = like(b.call(operator.mul, x, c, name=f"r_{tag}"),
                     *((0, 1) if kind in ("x", "x+", "x-") else (1,)))
        parts.append((sign, c))
    return _signed_sum(b, parts, f"r_{tag}")


def linear_rule(op: LinearOp) -> Backward:
    """The backward of a linear-family op: the rule's groups, summed."""

    def backward(b: Builder, node: fx.Node, rel: fx.Node, rule: Rule) -> list[Contribution]:
        x = node.args[0]
        assert isinstance(x, fx.Node)
        inputs = _Inputs(b, node, rule, per_sample=op.weight is not None)
        transposed = [t for g in rule.groups() for t in _group(b, op, node, rel, rule, g, inputs)]
        if not transposed:
            return []
        return [(x, _relevance(b, node, transposed, inputs))]

    return backward


