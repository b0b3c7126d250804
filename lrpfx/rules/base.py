"""The algebra of the layer rules: parameter modifications, terms, groups; the ``Rule`` base."""

from __future__ import annotations

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


class Rule:
    """Base class of the rules. Subclasses are frozen dataclasses."""

    #: the denominator's stabilizer
    stabilizer: float = 1e-6

    def groups(self) -> tuple[Group, ...]:
        """The rule as groups of terms (see the module docstring)."""
        raise NotImplementedError(f"{type(self).__name__} is not a rule for linear layers")
