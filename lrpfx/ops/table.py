"""The op table: what lrpfx knows about each canonical op, declared once, next to its relevance.

Every stanza module of ``lrpfx.ops`` describes its ops with three calls side by side::

    defop(torch.relu, kind=OpKind.ACTIVATION, nonneg=True)      # the op's facts
    spell(torch.relu, F.relu, "relu", in_place=(torch.relu_, "relu_"), modules={nn.ReLU: None})
    @relevance(torch.relu, rule=rules.Pass)                     # one row per (op, rule class)
    def _pass(b, node, rel, rule): ...

- ``spell`` says how else the op is written (functions, ``Tensor`` methods, in-place forms,
  module classes with their arguments), so ``passes.normalize`` makes every spelling one call.
- ``defop`` writes the op's ``OpSpec``: its family (``OpKind``, what composites match on) and
  its facts (sign, gate, routing, shape query), which ``passes.facts`` turns into per-node facts
  in one sweep.
- ``relevance`` registers a backward for ``(op, rule class)``; ``rule=None`` is the row for nodes
  without a rule (routing ops, a product with one constant factor). A node's row is found along
  its rule's class hierarchy, so a subclass of ``Epsilon`` uses ``Epsilon``'s row.
- Registering a key twice is a ``RegistrationError`` (``override=True`` replaces on purpose).

Keys are functions (``call_function`` targets), method names (``call_method``) or module classes
(``call_module``, for user-defined leaf modules).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn

from lrpfx import meta
from lrpfx.errors import RegistrationError, UnsupportedOperationError
from lrpfx.rules import Rule

if TYPE_CHECKING:
    from lrpfx.builder import Builder


class OpKind(str, Enum):
    """The op families composites match on (``composites.Kind("conv", "dense")``)."""

    CONV = "conv"
    DENSE = "dense"
    BATCHNORM = "batchnorm"
    AVGPOOL = "avgpool"
    MAXPOOL = "maxpool"
    SUM = "sum"  # mean / sum over dimensions
    ADD = "add"  # sums and differences of tensors
    MUL = "mul"  # products: a scale, or a gate and a signal
    SCALE = "scale"  # division by a constant, negation
    ACTIVATION = "activation"
    LAYERNORM = "layernorm"
    MATMUL = "matmul"  # matrix products: A @ B
    SOFTMAX = "softmax"
    ATTENTION = "attention"  # a fused attention (passes.fuse), softmax and products in one
    ROUTING = "routing"  # cat, stack, indexing, permute, ...: relevance moved, not rescaled
    RESHAPE = "reshape"
    SHAPE = "shape"  # size queries and integer arithmetic: no relevance

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class OpSpec:
    """The facts of one canonical op.

    Attributes:
        kind: its family.
        nonneg: its output is ``>= 0`` whatever its input (ReLU, sigmoid, softmax).
        keeps_nonneg: its output is ``>= 0`` when its first input is (pools, reshapes).
        gate: its output lies in ``[0, 1]``: a gate in ``gate * signal``.
        routes: it moves the values of its first input without changing them (a gate stays a
            gate through it).
        shape_query: its result is a size, a rank or a dtype, never a tensor.
        constant: its value depends on its inputs' shapes, dtypes and devices only, never on
            their values (``zeros_like``, ``x.new_ones``): it carries no relevance.
        pieces: its result is a tuple of tensors (chunk, split, unbind); relevance reaches its
            input through the ``getitem`` of each piece.
        statistic: its result is a statistic of its input that normalizes it (``var``,
            ``std``, ``norm``): computed in the forward, held constant in the backward, so it
            carries no relevance (the LN-rule's constant normalizer, for norms written by hand).
        rule_when: which of its nodes take a rule (default: every node, when the op has rows
            for rule classes).
        forward: emits the node's forward when the backward needs more than its output.
    """

    kind: OpKind
    nonneg: bool = False
    keeps_nonneg: bool = False
    gate: bool = False
    routes: bool = False
    shape_query: bool = False
    constant: bool = False
    pieces: bool = False
    statistic: bool = False
    rule_when: Callable[[fx.Node], bool] | None = None
    forward: Forward | None = None


Contribution = tuple[fx.Node, fx.Node]
Backward = Callable[["Builder", fx.Node, fx.Node, Any], Sequence[Contribution]]
Forward = Callable[["Builder", fx.Node], fx.Node]
OpKey = Callable[..., Any] | str | type[nn.Module]
RuleKey = type[Rule] | None

#: the aten ops of ``torch.export`` graphs (``lrpfx.frontend.export``): stanzas list their
#: spellings (``aten.linear.default``) with ``spell`` like any other alias
aten = torch.ops.aten

OPS: dict[OpKey, OpSpec] = {}
ROWS: dict[tuple[OpKey, RuleKey], Backward] = {}


def _name(key: Any) -> str:
    return getattr(key, "__qualname__", None) or getattr(key, "__name__", None) or repr(key)


def defop(*keys: OpKey, kind: OpKind | str, override: bool = False, **facts: Any) -> None:
    """Declare the family and facts of ``keys`` (see ``OpSpec``)."""
    spec = OpSpec(OpKind(kind), **facts)
    for key in keys:
        if key in OPS and not override:
            raise RegistrationError(f"the op {_name(key)} is already declared "
                                    f"({OPS[key].kind.value}); pass override=True to replace it")
        OPS[key] = spec


def relevance(*keys: OpKey, rule: RuleKey | tuple[type[Rule], ...] = None,
              override: bool = False) -> Callable[[Backward], Backward]:
    """Register the decorated backward for every ``(key, rule class)`` pair.

    The backward gets the builder, the forward node, the relevance of its output and the node's
    rule, and returns ``(input node, relevance)`` pairs for the inputs that receive relevance.
    """
    classes = rule if isinstance(rule, tuple) else (rule,)

    def register(backward: Backward) -> Backward:
        for key in keys:
            if key not in OPS:
                raise RegistrationError(f"declare {_name(key)} with defop(...) before its rows")
            for cls in classes:
                if (key, cls) in ROWS and not override:
                    raise RegistrationError(
                        f"{_name(key)} already has a relevance implementation for "
                        f"{'nodes without a rule' if cls is None else cls.__name__}; pass "
                        "override=True to replace it")
                ROWS[key, cls] = backward
        return backward

    return register


def unregister(*keys: OpKey) -> None:
    """Forget ``keys``: their facts, rows and spellings (for registrations no longer wanted)."""
    for key in keys:
        OPS.pop(key, None)
        BINDERS.pop(key, None)
        for row in [r for r in ROWS if r[0] == key]:
            del ROWS[row]
        for spellings in (FUNCTIONS, METHODS):
            for alias in [a for a, fn in spellings.items() if fn is key]:
                del spellings[alias]
                IN_PLACE.discard(alias)
        for cls in [c for c, fns in EQUIVALENT.items() if key in fns]:
            MODULES.pop(cls, None)
            EQUIVALENT.pop(cls)


def op_key(node: fx.Node, modules: dict[str, nn.Module]) -> OpKey | None:
    """The table key of a node, or None for placeholders, constants and the output."""
    if node.op == "call_function":
        return node.target  # type: ignore[return-value]
    if node.op == "call_method":
        return str(node.target)
    if node.op == "call_module":
        return type(modules[str(node.target)])
    return None


def spec(node: fx.Node, modules: dict[str, nn.Module]) -> OpSpec | None:
    """The facts of a node's op, or None when the op is not in the table."""
    key = op_key(node, modules)
    return None if key is None else OPS.get(key)


def kind_of(key: Any) -> OpKind | None:
    """The family of the op ``key`` (a ``call_function`` target, method name or module class)."""
    facts = OPS.get(key)
    return None if facts is None else facts.kind


def rules_of(key: OpKey) -> tuple[type[Rule], ...]:
    """The rule classes ``key`` has rows for."""
    return tuple(cls for k, cls in ROWS if k == key and cls is not None)


def takes_rule(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether the composite gives ``node`` a rule."""
    key = op_key(node, modules)
    facts = None if key is None else OPS.get(key)
    if facts is None or key is None:
        return False
    return facts.rule_when(node) if facts.rule_when else bool(rules_of(key))


def backward(node: fx.Node, modules: dict[str, nn.Module], rule: Rule | None) -> Backward | None:
    """The row for ``node`` under ``rule``, found along the rule's class hierarchy."""
    key = op_key(node, modules)
    if key is None:
        return None
    if rule is None:
        return ROWS.get((key, None))
    return next((ROWS[key, c] for c in type(rule).__mro__ if (key, c) in ROWS), None)


# -- spellings: every way to write an op, onto its one canonical call (read by passes.normalize)
@dataclass(frozen=True)
class Param:
    """A tensor argument of a canonical call, lifted as a buffer named ``<module path>.<name>``."""

    name: str
    value: torch.Tensor | None


@dataclass(frozen=True)
class Call:
    """A canonical call ``fn(x, *args, **kwargs)``."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Unsupported:
    """A spelling lrpfx cannot canonicalize, and why (``check`` reports it)."""

    reason: str


Converted = Call | Unsupported | None  # None: the spelling is an identity at eval time
#: a module spelling: the module -> the arguments after the input (a tuple), or a ``Converted``
ModuleSpelling = Callable[[Any], "tuple[Any, ...] | Converted"] | None
Binder = Callable[..., Converted]

FUNCTIONS: dict[Any, Callable[..., Any]] = {}  # function spelling -> canonical function
METHODS: dict[str, Callable[..., Any]] = {}  # Tensor method name -> canonical function
MODULES: dict[type[nn.Module], Callable[[Any], Converted]] = {}  # module class -> its call
IN_PLACE: set[Any] = set()  # spellings that write their first argument
BINDERS: dict[Any, Binder] = {}  # canonical function -> its arguments in canonical positions


def _claim(table: dict[Any, Any], key: Any, value: Any, override: bool) -> None:
    if key in table and table[key] is not value and not override:
        raise RegistrationError(f"the spelling {_name(key)} already means {_name(table[key])}")
    table[key] = value


def _module_call(fn: Callable[..., Any], spelling: ModuleSpelling) -> Callable[[Any], Converted]:
    def convert(module: Any) -> Converted:
        result = () if spelling is None else spelling(module)
        return Call(fn, result) if isinstance(result, tuple) else result
    return convert


def spell(fn: Callable[..., Any], *aliases: Callable[..., Any] | str,
          in_place: Sequence[Callable[..., Any] | str] = (),
          modules: dict[type[nn.Module], ModuleSpelling] | None = None,
          bind: Binder | None = None, override: bool = False) -> None:
    """Declare the spellings of the canonical function ``fn``: functions and ``Tensor`` method
    names with its arguments (``aliases``, ``in_place`` for those that write their input),
    module classes (``modules``: each with the arguments after the input, from the module), and
    ``bind``, which puts the arguments of any spelling into ``fn``'s canonical positions."""
    for alias in (*aliases, *in_place):
        _claim(METHODS if isinstance(alias, str) else FUNCTIONS, alias, fn, override)
    IN_PLACE.update(a for a in in_place if not isinstance(a, str))
    for cls, spelling in (modules or {}).items():
        _claim(MODULES, cls, _module_call(fn, spelling), override)
        EQUIVALENT.setdefault(cls, set()).add(fn)
    if bind is not None:
        _claim(BINDERS, fn, bind, override)


#: module class -> the canonical functions it is written as (``Type(nn.Conv2d)`` matches them)
EQUIVALENT: dict[type[nn.Module], set[Callable[..., Any]]] = {}


def carries(arg: Any) -> bool:
    """Whether a node argument receives relevance (its ``CARRIES`` fact; constants do not)."""
    return isinstance(arg, fx.Node) and bool(arg.meta.get(meta.CARRIES))


def pass_through(b: Builder, node: fx.Node, rel: fx.Node, rule: Any) -> list[Contribution]:
    """The row of ``Pass`` (and of ops that move relevance unchanged): ``R_in = R_out``."""
    return [(node.args[0], rel)]  # type: ignore[list-item]


def unsupported(node: fx.Node, why: str) -> UnsupportedOperationError:
    """The error for a node whose arguments its row cannot explain (raised at codegen)."""
    return UnsupportedOperationError(
        [f"{node.name} ({node.meta.get(meta.ORIGIN) or node.target}): {why}"],
        "Fix: rewrite the expression, or register an implementation with @lrpfx.register.",
    )


def register(
    *keys: OpKey,
    kind: OpKind | str,
    rules: Sequence[type[Rule]] = (),
    forward: Forward | None = None,
    needs_rule: Callable[[fx.Node], bool] | None = None,
    override: bool = False,
) -> Callable[[Backward], Backward]:
    """``lrpfx.register``: declare your op or module class and its backward in one decorator.

    ``kind`` is its family (what composites match on), ``rules`` the rule classes the backward
    accepts (none: it moves relevance without a rule), ``needs_rule`` which nodes take a rule.
    A key lrpfx already knows is refused unless ``override=True``, which replaces all its rows.

    Example:
        >>> @lrpfx.register(MyScale, kind="activation", rules=(rules.Pass,))
        ... def _my_scale(b, node, rel, rule):
        ...     return [(node.args[0], rel)]
    """

    def decorate(backward: Backward) -> Backward:
        if override:
            unregister(*keys)
        defop(*keys, kind=kind, forward=forward, rule_when=needs_rule)
        return relevance(*keys, rule=tuple(rules) or None)(backward)

    return decorate
