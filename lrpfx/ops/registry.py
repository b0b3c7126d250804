"""The op registry: one relevance implementation per canonical op.

After the passes, every node of the graph is a ``call_function`` on a canonical target (or a
``call_module`` on a module the user registered). An implementation receives the builder, the
forward node, the relevance of its output and its rule, and returns the relevance of each input
that carries relevance, as ``(input_node, relevance_node)`` pairs; weights and constants get none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import fx, nn

from lrpfx.rules import Rule

if TYPE_CHECKING:
    from lrpfx.builder import Builder

Contribution = tuple[fx.Node, fx.Node]
Backward = Callable[["Builder", fx.Node, fx.Node, Any], Sequence[Contribution]]
Forward = Callable[["Builder", fx.Node], fx.Node]


@dataclass(frozen=True)
class OpImpl:
    """How relevance passes one op.

    Attributes:
        kind: the op family composites match on (``"conv"``, ``"dense"``, ``"activation"``, ...).
        backward: emits the relevance of the inputs from the relevance of the output.
        rules: the rule classes it accepts; empty when the op routes relevance without a rule.
        forward: emits the forward of the node when the backward needs more than its output
            (the default copies the node).
        needs_rule: whether a given node takes a rule (default: ``bool(rules)``).
    """

    kind: str
    backward: Backward
    rules: tuple[type[Rule], ...] = ()
    forward: Forward | None = None
    needs_rule: Callable[[fx.Node], bool] | None = None

    def takes_rule(self, node: fx.Node) -> bool:
        return self.needs_rule(node) if self.needs_rule else bool(self.rules)


OpKey = Callable[..., Any] | str | type[nn.Module]
REGISTRY: dict[OpKey, OpImpl] = {}


def register(
    *keys: OpKey,
    kind: str,
    rules: tuple[type[Rule], ...] = (),
    forward: Forward | None = None,
    needs_rule: Callable[[fx.Node], bool] | None = None,
) -> Callable[[Backward], Backward]:
    """Decorator registering a backward implementation for one or more canonical ops.

    Keys are functions (``call_function`` targets), method names (``call_method``) or module
    classes (``call_module``, for user-defined leaf modules).

    Example:
        >>> @register(MyScale, kind="activation", rules=(rules.Pass,))
        ... def _my_scale(b, node, rel, rule):
        ...     return [(node.args[0], rel)]
    """

    def decorate(backward: Backward) -> Backward:
        impl = OpImpl(kind, backward, rules, forward, needs_rule)
        for key in keys:
            REGISTRY[key] = impl
        return backward

    return decorate


def op_key(node: fx.Node, modules: dict[str, nn.Module]) -> OpKey | None:
    """The registry key of a node, or None for placeholders, constants and the output."""
    if node.op == "call_function":
        return node.target  # type: ignore[return-value]
    if node.op == "call_method":
        return str(node.target)
    if node.op == "call_module":
        return type(modules[str(node.target)])
    return None


def lookup(node: fx.Node, modules: dict[str, nn.Module]) -> OpImpl | None:
    """The implementation of a node's op, or None when there is none."""
    key = op_key(node, modules)
    return None if key is None else REGISTRY.get(key)
