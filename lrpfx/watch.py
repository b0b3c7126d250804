"""Whether the model an explainer was compiled from is still the model it was.

The program's tensors are aliases of the model's, or derived from them at compile time (folded
BatchNorm, w⁺, channels-last kernels), or, for a model compiled in training mode, aliases of an
eval copy's. Explaining after the model changed would give a stale result, or a mix of old and
new weights, so each call first checks the model's own tensors, by name:

- the same tensor object is still registered under each name (not replaced by
  ``model.fc = nn.Linear(...)``, ``load_state_dict(..., assign=True)``);
- it has the same version counter (in-place writes: a plain optimizer step, ``copy_``,
  BatchNorm statistics updated in training mode);
- it has the same storage (``p.data = other``, ``model.double()``, ``model.to(device)``);
- no ``torch.optim`` optimizer stepped it: fused kernels (``SGD(..., fused=True)``, Adam's)
  write without bumping version counters, so a global optimizer step post-hook (installed at the
  first compile; it only counts steps of the parameters watched here) records each step.

Not seen: in-place writes through ``.data`` (``p.data.mul_(2)``), which share storage but not
the version counter, and writes by kernels outside ``torch.optim`` that do not bump versions.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Iterator

import torch
from torch import nn
from torch.optim.optimizer import Optimizer, register_optimizer_step_post_hook

from lrpfx.errors import StaleExplainerError

_watched: dict[int, weakref.ref[torch.Tensor]] = {}  # id -> tensor, of every watched tensor
_steps: dict[int, int] = {}  # id -> optimizer steps seen since it was first watched
_hooked = False


def _count_step(optimizer: Optimizer, args: object, kwargs: object) -> None:
    """The optimizer step post-hook: count a step of each watched parameter it holds."""
    if not _watched:
        return
    for group in optimizer.param_groups:
        for p in group["params"]:
            ref = _watched.get(id(p))
            if ref is not None and ref() is p:
                _steps[id(p)] = _steps.get(id(p), 0) + 1


def _watch(t: torch.Tensor) -> int:
    """Watch ``t`` for optimizer steps; its step count now."""
    global _hooked
    if not _hooked:
        register_optimizer_step_post_hook(_count_step)
        _hooked = True
    key = id(t)
    ref = _watched.get(key)
    if ref is None or ref() is not t:
        _watched[key] = weakref.ref(t, lambda _: (_watched.pop(key, None), _steps.pop(key, None)))
        _steps[key] = 0
    return _steps[key]


def _version(t: torch.Tensor) -> int:
    """``t``'s version counter; -1 for an inference tensor (made under ``torch.inference_mode``),
    which has none: outside that mode it cannot be written in place at all."""
    return -1 if t.is_inference() else t._version


def _named(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    return itertools.chain(model.named_parameters(), model.named_buffers())


class Watch:
    """The state of ``model``'s tensors at compile time; ``check()`` refuses a changed model."""

    def __init__(self, model: nn.Module) -> None:
        self._model = weakref.ref(model)
        self._seen = [(name, weakref.ref(t), _version(t), t.data_ptr(), _watch(t))
                      for name, t in _named(model)]

    def check(self) -> None:
        """Raise ``StaleExplainerError`` naming the first tensor of the model that changed (see
        the module docstring); nothing when the model is gone (the program keeps its tensors)."""
        model = self._model()
        if model is None:
            return
        now = dict(_named(model))
        for name, ref, version, pointer, steps in self._seen:
            t, current = ref(), now.pop(name, None)
            if current is None or current is not t:
                how = "removed" if current is None else "replaced by another tensor"
            elif _version(t) != version:
                how = ("written in place (e.g. by an optimizer step or a forward pass in "
                       "training mode)")
            elif t.data_ptr() != pointer:
                how = "given new data (.data = ..., .to(), .double())"
            elif _steps.get(id(t), 0) != steps:
                how = "updated by an optimizer step (a fused one: its version is unchanged)"
            else:
                continue
            _stale(f"the model's tensor {name!r} was {how}")
        if now:
            _stale(f"the model has a new tensor {next(iter(now))!r}")


def _stale(what: str) -> None:
    raise StaleExplainerError(
        f"the model changed after it was compiled: {what}, so the explainer's tensors (aliases "
        "of the model's, and those derived from them at compile time: folded BatchNorm, "
        "modified weights) are out of date. Compile the model again.")
