"""The attributions compared: LRP composites (presets by name, or any composite) and the
reference rows, random (the floor), gradient and input × gradient. Each is a ``Method``: a name
and a function ``(x, target) -> relevance`` shaped like ``x``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lrpfx import composites
from lrpfx.compiler import compile as lrpfx_compile

Explain = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
RuleSpec = str | composites.Composite | tuple[str, composites.Spec]
REFERENCES = ("random", "gradient", "input×gradient")
ALL = "all"


@dataclass(frozen=True)
class Method:
    """An attribution method under evaluation.

    Attributes:
        name: the row's name (a preset name, ``"random"``, ...).
        explain: ``(x, target) -> relevance`` shaped like ``x``.
        conserves: its output relevance is the target logit, so the conservation error
            ``|Σ R − logit| / |logit|`` means something (LRP and input × gradient).
        reference: a reference row, not an LRP composite.
    """

    name: str
    explain: Explain
    conserves: bool = True
    reference: bool = False


def preset_names() -> list[str]:
    """Every LRP preset that needs no fitted data (``"all"``)."""
    return list(composites.PRESETS)


def lrp_method(model: nn.Module, spec: RuleSpec, bounds: tuple[float, float],
               maxpool: str = "avg") -> Method:
    """An LRP composite: a preset name (``"epsilon-gamma-box"`` gets ``bounds``, the data's
    pixel range), a composite, or ``(name, spec)`` for anything ``lrpfx.compile`` takes."""
    if isinstance(spec, tuple):
        name, rules = spec
    elif isinstance(spec, str):
        name = spec
        rules = (composites.EpsilonGammaBox(low=bounds[0], high=bounds[1])
                 if spec == "epsilon-gamma-box" else spec)
    else:
        name, rules = str(getattr(spec, "name", type(spec).__name__)), spec
    explainer = lrpfx_compile(model, rules, maxpool=maxpool)  # type: ignore[arg-type]

    def explain(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return explainer(x, target=target).relevance

    return Method(name, explain)


def _gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """∂ logit_target / ∂x, one backward for the batch (samples are independent)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        selected = model(x).gather(1, target.reshape(-1, 1)).sum()
        (grad,) = torch.autograd.grad(selected, x)
    return grad


def reference_methods(model: nn.Module, seed: int = 0) -> list[Method]:
    """random (uniform noise: the floor), gradient (|∂f/∂x|, the saliency of Simonyan et al.
    2014) and input × gradient (equal to LRP-0 on ReLU networks without biases)."""
    generator = torch.Generator().manual_seed(seed)

    def random(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)

    def gradient(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _gradient(model, x, target).abs()

    def input_gradient(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return x * _gradient(model, x, target)

    return [Method("random", random, conserves=False, reference=True),
            Method("gradient", gradient, conserves=False, reference=True),
            Method("input×gradient", input_gradient, reference=True)]


def make_methods(model: nn.Module, rules: str | Sequence[RuleSpec],
                 bounds: tuple[float, float], references: bool | Sequence[str] = True,
                 seed: int = 0, maxpool: str = "avg") -> list[Method]:
    """The LRP rows for ``rules`` (``"all"``, one spec, or a list) and the reference rows
    (``True``: all three, or a list of their names)."""
    if rules == ALL:
        specs: Sequence[RuleSpec] = preset_names()
    elif isinstance(rules, str | tuple | composites.Composite):
        specs = [rules]  # type: ignore[list-item]
    else:
        specs = rules
    methods = [lrp_method(model, spec, bounds, maxpool) for spec in specs]
    wanted = REFERENCES if references is True else (references or ())
    unknown = set(wanted) - set(REFERENCES)
    if unknown:
        raise ValueError(f"unknown reference row(s) {sorted(unknown)}; choose from "
                         f"{', '.join(REFERENCES)}")
    return methods + [m for m in reference_methods(model, seed) if m.name in wanted]
