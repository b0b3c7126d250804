"""Every spelling of an op in scope, mapped onto one canonical function call.

``passes.normalize`` reads these views of the op table (each stanza of ``lrpfx.ops`` declares
its op's spellings with ``spell``), plus what vanishes at eval time: dropout, identities,
``contiguous``/``clone``/``detach``. A module converter returns the canonical call with its
arguments after the input (``Param`` marks a tensor to lift into the program), or ``None`` when
the module is an identity at eval time; an ``Unsupported`` result keeps the module and says why.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lrpfx.ops.table import BINDERS, FUNCTIONS, IN_PLACE, METHODS, MODULES, Call, Converted
from lrpfx.ops.table import Param as Param
from lrpfx.ops.table import Unsupported as Unsupported

# modules that vanish at eval time
IDENTITIES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
              nn.FeatureAlphaDropout)
DROPOUT_FUNCTIONS: set[Any] = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
                               F.alpha_dropout, F.feature_alpha_dropout,
                               torch.ops.aten.dropout.default}
IDENTITY_METHODS = {"contiguous", "clone", "detach"}
IDENTITY_FUNCTIONS = {torch.clone, torch.detach, torch.ops.aten.clone.default,
                      torch.ops.aten.alias.default, torch.ops.aten.detach.default,
                      torch.ops.aten.contiguous.default, torch.ops.aten.lift_fresh_copy.default}
try:  # torchvision's stochastic depth is the identity at eval time
    from torchvision.ops import stochastic_depth as _stochastic_depth
    DROPOUT_FUNCTIONS.add(_stochastic_depth)
except ImportError:  # pragma: no cover  (torchvision is a dependency)
    pass


def convert_module(module: nn.Module) -> Converted:
    """The canonical call of a leaf module, by exact class first, then by subclass."""
    if isinstance(module, IDENTITIES):
        return None
    converter = MODULES.get(type(module))
    if converter is None:
        converter = next((c for cls, c in MODULES.items() if isinstance(module, cls)), None)
    if converter is None:
        return Unsupported(f"no relevance implementation for {type(module).__qualname__}")
    return converter(module)


def canonical_function(target: Any) -> Any:
    """The canonical function a function spelling stands for (itself when canonical)."""
    return FUNCTIONS.get(target, target)


def canonical_method(name: str) -> Any:
    """The canonical function a ``Tensor`` method stands for, or None."""
    return METHODS.get(name)


def in_place(target: Any) -> bool:
    """Whether a function spelling writes its first argument."""
    return target in IN_PLACE


def binds(fn: Any) -> bool:
    """Whether the canonical function ``fn`` puts its arguments into canonical positions."""
    return fn in BINDERS


def bind(call: Call) -> Converted:
    """``call`` with its arguments in the canonical positions of its function."""
    binder = BINDERS.get(call.fn)
    return binder(*call.args, **call.kwargs) if binder else call
