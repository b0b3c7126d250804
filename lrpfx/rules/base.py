"""The algebra of the layer rules: parameter modifications, terms, groups; the ``Rule`` base."""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

Input = Literal["x", "x+", "x-", "ones", "low", "high"]


@dataclass(frozen=True)
class Mod:
    """A named parameter modification, evaluated once at compile time."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor] = field(compare=False, repr=False)

    def __call__(self, param: torch.Tensor) -> torch.Tensor:
        return self.fn(param)


IDENTITY = Mod("", lambda p: p)
POSITIVE = Mod("pos", lambda p: p.clamp(min=0))
NEGATIVE = Mod("neg", lambda p: p.clamp(max=0))
SQUARE = Mod("sq", lambda p: p * p)
ONES = Mod("ones", torch.ones_like)


def gamma_mod(gamma: float, positive: bool) -> Mod:
    """``w + gamma * w+`` (``positive``) or ``w + gamma * w-``."""
    if positive:
        return Mod(f"gamma{gamma:g}pos", lambda p: p + gamma * p.clamp(min=0))
    return Mod(f"gamma{gamma:g}neg", lambda p: p + gamma * p.clamp(max=0))


@dataclass(frozen=True)
class Term:
    """One modified forward ``sign * f(input; weight(w), bias(b))``; ``bias=None`` drops it."""

    input: Input
    weight: Mod
    bias: Mod | None
    sign: float = 1.0


@dataclass(frozen=True)
class Group:
    """Terms sharing one denominator; ``where`` keeps the outputs whose plain ``z`` has a sign."""

    terms: tuple[Term, ...]
    coefficient: float = 1.0
    where: Literal["z>0", "z<0"] | None = None


# parameters that are real numbers >= 0 wherever a rule has them, and flags
NONNEGATIVE = ("epsilon", "gamma", "stabilizer", "alpha", "beta")
FLAGS = ("ignore_bias",)


def check_parameters(rule: object) -> None:
    """Refuse, at construction, a parameter of the wrong type (``TypeError``) or a negative or
    non-finite one (``ValueError``), naming the rule and the parameter."""
    name = type(rule).__name__
    for field_ in dataclasses.fields(rule):  # type: ignore[arg-type]
        value = getattr(rule, field_.name)
        if field_.name in FLAGS and not isinstance(value, bool):
            raise TypeError(f"{name} {field_.name} must be True or False, got {value!r}")
        if field_.name not in NONNEGATIVE:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} {field_.name} must be a number, got "
                            f"{type(value).__name__} {value!r}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} {field_.name} must be a finite number >= 0, got {value!r}")


class Rule:
    """Base class of the rules. Subclasses are frozen dataclasses; their parameters are checked
    at construction (``check_parameters``)."""

    #: the denominator's stabilizer
    stabilizer: float = 1e-6

    def __post_init__(self) -> None:
        check_parameters(self)

    def groups(self) -> tuple[Group, ...]:
        """The rule as groups of terms (see the module docstring)."""
        raise NotImplementedError(f"{type(self).__name__} is not a rule for linear layers")
