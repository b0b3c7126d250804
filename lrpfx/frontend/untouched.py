"""Tracing runs the user's ``forward``, which may write to the model: fx stores tensor
constants as new attributes of the root (``_tensor_constant0``), and a model that caches
values in eval mode (timm's LeViT and EfficientFormer keep ``attention_bias_cache`` dicts) puts
*proxies* of the traced graph into its own state, where the next trace reads them back as
nodes of a graph that is gone. ``untouched(model)`` gives the model back as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch import fx, nn

_OWN = {"_parameters", "_buffers", "_modules"}  # nn.Module's registries: tracing only reads them


def _containers(module: nn.Module) -> dict[str, Any]:
    """Shallow copies of the module's plain dict, list and set attributes."""
    return {k: type(v)(v) for k, v in vars(module).items()
            if k not in _OWN and type(v) in (dict, list, set)}


def _holds_proxy(value: Any) -> bool:
    items = value.values() if isinstance(value, dict) else value
    return isinstance(value, fx.Proxy) or (
        type(value) in (dict, list, set) and any(isinstance(v, fx.Proxy) for v in items))


@contextlib.contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
    """Within the block the model may be traced; afterwards every module's new attributes are
    gone and every attribute that took a proxy has its old value back."""
    modules = list(model.modules())
    names = [set(vars(m)) for m in modules]
    saved = [_containers(m) for m in modules]
    try:
        yield
    finally:
        for module, before, copies in zip(modules, names, saved, strict=True):
            for name in set(vars(module)) - before:
                delattr(module, name)
            for name, value in list(vars(module).items()):
                if name in copies and _holds_proxy(value):
                    setattr(module, name, copies[name])
