"""What ``lrpfx.compile`` accepts, checked before anything is traced.

- ``model``: an ``nn.Module`` (``TypeError`` naming ``model`` otherwise, with what to pass);
  wrappers are unwrapped to the module they hold: ``nn.DataParallel`` and
  ``DistributedDataParallel`` (``.module``), ``torch.compile``'s ``OptimizedModule``
  (``._orig_mod``); a TorchScript module, whose Python ``forward`` is gone, is refused with
  what to pass instead; tensors on the ``meta`` device (no values) and lazy modules not run yet
  (no shapes) are ``ValueError`` naming the first such tensor or module and the fix.
- ``rules``: a preset name, a ``Composite``, a ``Rule``, a map ``{key: Rule}`` or a sequence
  of ``(matcher, Rule)`` pairs (``TypeError`` naming ``rules`` otherwise). A name key that
  matches no layer of the traced model is a warning naming the key and the closest names.
"""

from __future__ import annotations

import difflib
import fnmatch
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import fx, nn

from lrpfx import meta
from lrpfx.composites import Composite, Matcher
from lrpfx.rules import Rule

_RULES = ("rules must be a preset name ('epsilon-plus-flat'), a Composite, one Rule "
          "(rules.Epsilon()), a map {nn.Conv2d: rules.ZPlus(), 'features.0': rules.Flat()} or a "
          "list of (matcher, rule) pairs")


def model_to_compile(model: Any) -> nn.Module:
    """``model``, or the module a wrapper holds; refuses what cannot be traced or has no values
    (see the module docstring)."""
    if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
        model = model.module
    orig = getattr(model, "_orig_mod", None)  # torch.compile(model)
    if isinstance(model, nn.Module) and isinstance(orig, nn.Module):
        model = orig
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError(
            f"model is a TorchScript module ({type(model).__name__}, from torch.jit.script or "
            "torch.jit.trace): its Python forward is gone, so torch.fx cannot trace it. Pass the "
            "original nn.Module (the one given to torch.jit)")
    if not isinstance(model, nn.Module):
        what = (f"the function {getattr(model, '__name__', '?')!r}" if callable(model)
                else f"{type(model).__name__} {model!r}"[:80])
        raise TypeError(f"model must be a torch.nn.Module, got {what}; wrap a function in a "
                        "module whose forward calls it")
    _refuse_without_values(model)
    return model


def _refuse_without_values(model: nn.Module) -> None:
    for name, module in model.named_modules():
        lazy = getattr(module, "has_uninitialized_params", None)
        if callable(lazy) and lazy():
            where = f"{name!r}" if name else "the model itself"
            raise ValueError(
                f"model's module {where} ({type(module).__name__}) is a lazy module not "
                "initialized yet: its shapes are unknown until it has run. Run the model once "
                "on an example batch (model(x)) before lrpfx.compile")
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_meta:
            raise ValueError(
                f"model's tensor {name!r} is on the meta device: it has a shape but no values. "
                "Give the model its weights first (model.to_empty(device='cpu'), then "
                "model.load_state_dict(...)), then compile it")


def check_rules(rules: Any) -> None:
    """Raise ``TypeError`` naming ``rules`` when it is none of the accepted forms."""
    if isinstance(rules, str | Composite | Rule):
        return
    if isinstance(rules, Mapping):
        for key, rule in rules.items():
            if not isinstance(key, str | Matcher) and not (
                    isinstance(key, type) and issubclass(key, nn.Module)):
                raise TypeError(f"rules: the key {key!r} is not a module class, a name glob "
                                "('features.0', 'classifier.*') or a matcher")
            if not isinstance(rule, Rule):
                raise TypeError(f"rules: the value for {key!r} must be a Rule (rules.Epsilon(),"
                                f" ...), got {type(rule).__name__} {rule!r}"[:200])
        return
    if isinstance(rules, Sequence) and all(
            isinstance(e, tuple) and len(e) == 2 and isinstance(e[1], Rule) for e in rules):
        return
    got = type(rules).__name__
    if isinstance(rules, Sequence) and rules and all(isinstance(e, str) for e in rules):
        got += " of names; give each name its rule: {'features.0': rules.Flat(), ...}"
    elif isinstance(rules, type):
        got = f"the class {rules.__name__}; pass an instance: {rules.__name__}()"
    raise TypeError(f"{_RULES}, got {got}")


def warn_unmatched_names(gm: fx.GraphModule, rules: Any, stacklevel: int) -> None:
    """Warn about each name key of the user's ``rules`` map that matches no layer of ``gm``."""
    if not isinstance(rules, Mapping):
        return
    paths = sorted({str(p) for n in gm.graph.nodes if (p := n.meta.get(meta.PATH))})
    for key in rules:
        if isinstance(key, str) and not any(fnmatch.fnmatchcase(p, key) for p in paths):
            close = difflib.get_close_matches(key, paths, n=3, cutoff=0.5)
            hint = (f"closest names: {', '.join(map(repr, close))}" if close else
                    f"the layers are named {', '.join(map(repr, paths[:6]))}"
                    + (", ..." if paths[6:] else ""))
            warnings.warn(f"rules: the name {key!r} matches no layer of the model, so its rule "
                          f"is used nowhere; {hint}", stacklevel=stacklevel)
