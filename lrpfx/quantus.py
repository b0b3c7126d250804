"""An lrpfx explainer as Quantus's ``explain_func`` (Hedström et al. 2023).

>>> import quantus, lrpfx.quantus
>>> metric = quantus.PixelFlipping(features_in_step=8)
>>> scores = metric(model=model, x_batch=x, y_batch=y, explain_func=lrpfx.quantus.explain_func,
...                 explain_func_kwargs={"rules": "epsilon-plus-flat"}, device="cpu")

Quantus calls ``explain_func(model=..., inputs=..., targets=..., **explain_func_kwargs)`` with
numpy arrays (channel first) and a ``device``; it wants a numpy array back with the batch
dimension of ``inputs`` and the same rank (a singleton channel is allowed). The compiled
explainer is cached per model and rules, keyed on the version counters of the model's tensors:
Quantus's randomization metrics rewrite the weights of one model object in place, so ``id()``
alone would return relevance of the old weights.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import torch
from torch import nn

from lrpfx import composites
from lrpfx.compiler import compile as lrpfx_compile
from lrpfx.explainer import Explainer

_Key = tuple[Any, ...]
# model -> {(rules, options...): (tensor versions at compile time, explainer)}
_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[_Key, tuple[_Key, Explainer]]] = (
    weakref.WeakKeyDictionary())


def _versions(model: nn.Module) -> _Key:
    """Which tensors the model holds and how often each was written in place."""
    return tuple((id(t), t._version) for t in (*model.parameters(), *model.buffers()))


def _rules_key(rules: composites.Spec) -> Any:
    return rules if isinstance(rules, str) else id(rules)


def explainer_for(model: nn.Module, rules: composites.Spec = "epsilon-plus-flat",
                  maxpool: str = "avg", **options: Any) -> Explainer:
    """The cached explainer of ``model`` with ``rules``, compiled again when any of the model's
    tensors was replaced or written in place since. ``options`` (``low``, ``high``) go to a
    preset given by name."""
    key = (_rules_key(rules), maxpool, tuple(sorted(options.items())))
    entries = _CACHE.setdefault(model, {})
    versions = _versions(model)
    cached = entries.get(key)
    if cached is not None and cached[0] == versions:
        return cached[1]
    spec = composites.resolve(rules, **options) if isinstance(rules, str) and options else rules
    explainer = lrpfx_compile(model, spec, maxpool=maxpool)  # type: ignore[arg-type]
    entries[key] = (versions, explainer)
    return explainer


def _dtype(model: nn.Module) -> torch.dtype:
    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()


def explain_func(model: nn.Module, inputs: np.ndarray | torch.Tensor,
                 targets: np.ndarray | torch.Tensor | int | None,
                 rules: composites.Spec = "epsilon-plus-flat", **kwargs: Any) -> np.ndarray:
    """Quantus's ``explain_func``: LRP relevance of ``inputs`` ``(B, C, ...)`` for ``targets``
    ``(B,)`` as a float32 numpy array ``(B, 1, ...)`` (summed over channels, as Quantus does for
    Zennit), or ``(B, C, ...)`` with ``channels="keep"``.

    Keyword arguments: ``device`` (Quantus passes it; default: the model's), ``maxpool``,
    ``channels`` (``"sum"`` or ``"keep"``), ``low``/``high`` for ``"epsilon-gamma-box"``; others
    (Quantus's own) are ignored.
    """
    options = {k: kwargs[k] for k in ("low", "high") if k in kwargs}
    explainer = explainer_for(model, rules, kwargs.get("maxpool", "avg"), **options)
    device = kwargs.get("device")
    first = next(iter(model.parameters()), None)
    device = torch.device(device) if device is not None else (
        first.device if first is not None else torch.device("cpu"))
    explainer = explainer.to(device)
    x = torch.as_tensor(np.asarray(inputs) if not isinstance(inputs, torch.Tensor) else inputs)
    x = x.to(device, _dtype(model))
    target = None if targets is None else torch.as_tensor(np.asarray(targets)).reshape(-1).long()
    if target is not None and len(target) == 1 and len(x) > 1:
        target = target.expand(len(x))
    relevance = explainer(x, target=None if target is None else target.to(device)).relevance
    if kwargs.get("channels", "sum") == "sum":
        relevance = relevance.sum(1, keepdim=True)
    return relevance.detach().float().cpu().numpy()
