"""Evaluation inputs: whatever ``data`` is (a tensor, ``(x, y)``, batches of either) as one
tensor pair, the model's device, its hash and the protocol record."""

from __future__ import annotations

import copy
import hashlib
import warnings
from collections.abc import Iterable
from importlib import metadata
from typing import Any

import torch
from torch import nn

Data = torch.Tensor | tuple[torch.Tensor, torch.Tensor] | Iterable[Any]


def collect(data: Data, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inputs ``(N, C, H, W)`` and labels (or None) from a tensor, an ``(x, y)`` pair, or an
    iterable of either (a DataLoader); at most ``n`` samples."""
    if isinstance(data, torch.Tensor):
        return data[:n], None
    if isinstance(data, tuple | list) and len(data) == 2 and all(
            isinstance(t, torch.Tensor) for t in data) and len(data[0]) == len(data[1]) and \
            data[1].dim() == 1:
        return data[0][:n], data[1][:n]
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    for item in data:
        x, y = (item, None) if isinstance(item, torch.Tensor) else (item[0], item[1])
        xs.append(x)
        if y is not None:
            ys.append(torch.as_tensor(y))
        if n is not None and sum(map(len, xs)) >= n:
            break
    if not xs:
        raise ValueError("evaluate: data holds no samples")
    labels = torch.cat(ys)[:n] if len(ys) == len(xs) else None
    return torch.cat(xs)[:n], labels


def check_inputs(x: torch.Tensor) -> None:
    """Images ``(N, C, H, W)`` of floats, at least one."""
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"evaluate takes images (N, C, H, W) of floats, got shape "
                         f"{tuple(x.shape)} and dtype {x.dtype}")
    if len(x) == 0:
        raise ValueError("evaluate: data holds no samples")


def eval_copy(model: nn.Module) -> nn.Module:
    """The model in eval mode: itself, or a copy (with a warning) when it is training."""
    if not model.training:
        return model
    warnings.warn(f"{type(model).__name__} is in training mode; evaluating an eval-mode copy",
                  stacklevel=3)
    return copy.deepcopy(model).eval()


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU when it has none)."""
    tensors = [*model.parameters(), *model.buffers()]
    return tensors[0].device if tensors else torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating parameter (the default dtype when none)."""
    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()


def model_hash(model: nn.Module) -> str:
    """SHA-256 (first 16 hex digits) of the state dict's names and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy()
                      .tobytes())
    return digest.hexdigest()[:16]


def version() -> str:
    """The installed lrpfx version."""
    try:
        return metadata.version("lrpfx")
    except metadata.PackageNotFoundError:
        return "unknown"


def predict(model: nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    """The model's logits for ``x``, in batches."""
    with torch.no_grad():
        return torch.cat([model(chunk) for chunk in x.split(batch)])
