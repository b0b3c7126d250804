"""The ``Patterns`` value: fitted signal patterns, their persistence, and whether they belong to
a model's weights (``check``). What a pattern is: ``lrpfx.patterns``; how one is fitted:
``lrpfx.patterns.fit``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from lrpfx.errors import PatternError
from lrpfx.patterns.moments import Center

PatternKind = Literal["linear", "positive"]
KINDS = ("linear", "positive")
CENTERS = ("regime", "all")
FORMAT = "lrpfx.patterns/1"
TOLERANCE = 1e-3  # |wᵀa − 1| allowed when checking that patterns belong to a weight


class Patterns:
    """Fitted signal patterns: one per conv/dense layer, shaped like its weight.

    Attributes:
        kind: ``"linear"`` (``S_a``) or ``"positive"`` (``S_a+-``).
        center: how positive patterns were centered: ``"regime"`` or ``"all"`` (``lrpfx.patterns``).
        tensors: layer key (module path, ``"path#i"`` per call site, or node name) -> pattern.
        counts: layer key -> samples per unit the statistics counted (for ``"positive"``: the
            samples where the unit was active).

    Save with ``torch.save(patterns.state_dict(), f)``, load with
    ``Patterns.from_state_dict(torch.load(f))``.
    """

    def __init__(self, kind: PatternKind, tensors: Mapping[str, torch.Tensor],
                 counts: Mapping[str, torch.Tensor] | None = None,
                 center: Center = "regime") -> None:
        if kind not in KINDS:
            raise ValueError(f"pattern kind must be 'linear' or 'positive', got {kind!r}")
        if center not in CENTERS:
            raise ValueError(f"center must be 'regime' or 'all', got {center!r}")
        self.kind, self.center = kind, center
        self.tensors = dict(tensors)
        self.counts = dict(counts or {})

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def __contains__(self, key: object) -> bool:
        return key in self.tensors

    def __len__(self) -> int:
        return len(self.tensors)

    def keys(self) -> list[str]:
        return list(self.tensors)

    def __repr__(self) -> str:
        return f"Patterns({self.kind!r}, {len(self)} layers)"

    def summary(self) -> str:
        """One line per layer: key, shape, counted samples per unit, units without a pattern."""
        lines = [f"{self.kind} patterns{' (centered on all)' if self.center == 'all' else ''}:"]
        for key, a in self.tensors.items():
            n = self.counts.get(key)
            seen = f", {int(n.min())}..{int(n.max())} samples/unit" if n is not None else ""
            lines.append(f"  {key}: {tuple(a.shape)}{seen}, {self.dead_units(key)} without pattern")
        return "\n".join(lines)

    def dead_units(self, key: str) -> int:
        """Units of layer ``key`` without a pattern (never active, or zero variance)."""
        return int((self.tensors[key].flatten(1).abs().sum(1) == 0).sum())

    # -- persistence -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """A ``torch.save``-able dict (tensors and strings only: loads with weights_only)."""
        return {"format": FORMAT, "kind": self.kind, "center": self.center,
                "patterns": dict(self.tensors), "counts": dict(self.counts)}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> Patterns:
        """The patterns saved by ``state_dict``."""
        if not isinstance(state, Mapping) or state.get("format") != FORMAT:
            found = state.get("format") if isinstance(state, Mapping) else type(state).__name__
            raise PatternError(f"not a patterns state dict (format {found!r}, expected "
                               f"{FORMAT!r}); save with torch.save(patterns.state_dict(), f)")
        return cls(state["kind"], state["patterns"], state.get("counts"),
                   state.get("center", "regime"))

    def save(self, path: str | Path) -> None:
        torch.save(self.state_dict(), path)

    @classmethod
    def load(cls, path: str | Path, map_location: Any = None) -> Patterns:
        return cls.from_state_dict(torch.load(path, map_location=map_location, weights_only=True))

    # -- belonging to a model ----------------------------------------------------------------------
    def problem(self, key: str, weight: torch.Tensor) -> str | None:
        """Why these patterns cannot serve the layer ``key`` with ``weight``, or None."""
        if key not in self.tensors:
            return f"no pattern for layer {key!r}"
        a = self.tensors[key]
        if a.shape != weight.shape:
            return (f"pattern {key!r} has shape {tuple(a.shape)}, the layer's weight "
                    f"{tuple(weight.shape)}")
        a64 = a.detach().to(device=weight.device, dtype=torch.float64)
        wa = (weight.detach().double() * a64).flatten(1).sum(1)
        alive = a64.flatten(1).abs().sum(1) > 0
        if alive.any() and ((wa[alive] - 1).abs().max() > TOLERANCE):
            return (f"pattern {key!r} does not belong to this weight: wᵀa = 1 holds for every "
                    f"unit of a fitted pattern, here wᵀa ranges over "
                    f"[{wa[alive].min():.4g}, {wa[alive].max():.4g}]")
        return None

    def check(self, layers: Iterable[tuple[str, str, torch.Tensor]]) -> None:
        """Raise one ``PatternError`` for all ``(where, key, weight)`` the patterns cannot serve."""
        problems = [f"{where}: {p}" for where, key, weight in layers
                    if (p := self.problem(key, weight)) is not None]
        if problems:
            keys = ", ".join(self.keys()[:8]) + (", ..." if len(self) > 8 else "")
            listing = "\n".join(f"  - {p}" for p in problems)
            raise PatternError(
                f"{len(problems)} layer(s) cannot use these {self.kind!r} patterns:\n{listing}\n"
                f"The patterns were fitted for {len(self)} layers ({keys}) of another model, or "
                "before its weights changed. Fit them on the model you compile: "
                "lrpfx.patterns.fit(model, loader)."
            )
