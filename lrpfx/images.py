"""Images and models for the command line and the examples: find and decode image files, ImageNet
preprocessing, and models by torchvision name or import path, with their weights.

Every failure is an :class:`InputError` whose message is one line naming the file and the
problem, so a caller can print it and go on with the next file.
"""

from __future__ import annotations

import importlib
import importlib.util
import pickle
import re
import socket
import sys
import warnings
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lrpfx.errors import LrpfxError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".webp"})  # what torchvision decodes


class InputError(LrpfxError):
    """A path, image, model name or weight file that cannot be used; the message is one line."""


# -- images --------------------------------------------------------------------------------------
def find_images(paths: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """The image files among ``paths`` (files, or folders searched recursively), sorted, and the
    other files found in the folders (reported, not silently dropped).

    Raises:
        InputError: a path that does not exist (all of them are named).
    """
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise InputError(f"no such file or folder: {', '.join(missing)}")
    images: list[Path] = []
    others: list[Path] = []
    for path in map(Path, paths):
        if path.is_file():
            images.append(path)  # named explicitly: decoding will tell whether it is an image
            continue
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            hidden = any(part.startswith(".") for part in file.relative_to(path).parts)
            if not hidden:
                (images if file.suffix.lower() in IMAGE_SUFFIXES else others).append(file)
    return images, others


def load_image(path: Path) -> torch.Tensor:
    """Decode an image file into RGB ``uint8`` ``(3, H, W)`` (the first frame of a GIF); a
    16-bit image is scaled by its real depth (65535 is white), not cut at 255.

    Raises:
        InputError: unreadable or not an image.
    """
    try:
        image = _decode(path)
    except (RuntimeError, ValueError, OSError) as error:  # PIL's errors are OSError/ValueError
        raise InputError(f"{path}: not a readable image ({_reason(error)})") from None
    return _to_uint8(image[0] if image.dim() == 4 else image)


def _unit(image: torch.Tensor) -> torch.Tensor:
    """An image in [0, 1] (float64): an integer one divided by its dtype's largest value."""
    if image.is_floating_point():
        return image.to(torch.float64).clamp(0, 1)
    return image.to(torch.float64) / torch.iinfo(image.dtype).max


def _to_uint8(image: torch.Tensor) -> torch.Tensor:
    """An image of any depth as ``uint8``: ``round(v · 255 / max)``, max the dtype's."""
    if image.dtype == torch.uint8:
        return image
    return (_unit(image) * 255).round().to(torch.uint8)


def _decode(path: Path) -> torch.Tensor:
    """torchvision.io's decoder, or Pillow where torchvision no longer decodes images."""
    try:
        from torchvision.io import ImageReadMode, decode_image, read_file
    except ImportError:
        import numpy as np
        from PIL import Image

        with Image.open(path) as image:
            if image.mode.startswith("I"):  # 16- or 32-bit grey: convert("RGB") would cut at 255
                grey = torch.from_numpy(np.array(image).astype(np.int32))
                wide = not image.mode.startswith("I;16") and int(grey.max()) > 65535
                grey = grey if wide else grey.to(torch.uint16)
                return _to_uint8(grey).expand(3, -1, -1)
            return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The image decoding and encoding", DeprecationWarning)
        return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)


def _reason(error: Exception) -> str:
    """The gist of a decoder error, without the C++ source location torchvision prefixes."""
    text = " ".join(str(error).split()) or type(error).__name__
    text = re.sub(r"^\w+, \S+:\d+, ", "", text)
    return text.split(". ")[0].rstrip(".")


def preprocess(image: torch.Tensor, size: int = 224,
               mean: Sequence[float] = IMAGENET_MEAN,
               std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """ImageNet evaluation preprocessing of a ``uint8`` ``(3, H, W)`` image: resize the shorter
    side to ``size · 256/224``, center-crop ``size × size``, scale to [0, 1] by the image's depth
    (255 for ``uint8``, 65535 for ``uint16``; a float image is taken as in [0, 1]), normalize."""
    x = _unit(image).to(torch.float32).unsqueeze(0)
    short = round(size * 256 / 224)
    h, w = x.shape[-2:]
    scale = short / min(h, w)
    new = (max(size, round(h * scale)), max(size, round(w * scale)))
    x = F.interpolate(x, size=new, mode="bilinear", antialias=True, align_corners=False)
    top, left = (new[0] - size) // 2, (new[1] - size) // 2
    x = x[..., top : top + size, left : left + size].clamp(0, 1)
    return ((x - _channels(mean)) / _channels(std))[0]


def _channels(values: Sequence[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(1, -1, 1, 1)


def pixel_bounds(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The lowest and highest normalized pixel values, ``(1, C, 1, 1)`` each: what the zᴮ rule
    needs (``(0 - mean) / std`` and ``(1 - mean) / std``)."""
    return (0 - _channels(mean)) / _channels(std), (1 - _channels(mean)) / _channels(std)


# -- models --------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """A model in eval mode, where its weights came from, and its class names if known."""

    model: nn.Module
    weights: str
    random: bool
    categories: list[str] | None = None


def _from_import_path(spec: str) -> nn.Module:
    """``"package.module:factory"`` or ``"path/to/file.py:factory"``: call the factory."""
    where, _, name = spec.rpartition(":")
    try:
        if where.endswith(".py"):
            loader = importlib.util.spec_from_file_location(Path(where).stem, where)
            if loader is None or loader.loader is None or not Path(where).is_file():
                raise InputError(f"--arch {spec}: no such file {where}")
            module = importlib.util.module_from_spec(loader)
            sys.modules[loader.name] = module
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
        model = getattr(module, name)()
    except InputError:
        raise
    except Exception as error:  # any import or construction error becomes one line
        raise InputError(f"--arch {spec}: {type(error).__name__}: {error}") from None
    if not isinstance(model, nn.Module):
        raise InputError(f"--arch {spec}: {name}() returned {type(model).__name__}, not a model")
    return model


def build_model(arch: str) -> nn.Module:
    """A torchvision architecture by name with random weights, or a factory by import path."""
    if ":" in arch:
        return _from_import_path(arch)
    from torchvision import models

    if arch in models.list_models(module=models.segmentation):  # their weights have aux heads
        aux = {} if arch.startswith("lraspp") else {"aux_loss": True}
        return models.get_model(arch, weights=None, weights_backbone=None, **aux)
    if arch not in models.list_models(module=models):
        raise InputError(f"unknown architecture {arch!r}: give a torchvision classification "
                         "or segmentation model name (vgg16, resnet50, deeplabv3_resnet50, ...) "
                         "or module:factory")
    return models.get_model(arch, weights=None)


def load_weights(model: nn.Module, path: Path, arch: str) -> None:
    """Load a state dict (or a checkpoint holding one under "state_dict" or "model").

    Raises:
        InputError: the file is missing, not a PyTorch file, or does not fit the model.
    """
    if not path.is_file():
        raise InputError(f"--weights {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # a torch file holding objects beyond tensors
        if "Weights only load failed" not in str(error) or not zipfile.is_zipfile(path):
            raise InputError(f"--weights {path}: not a PyTorch weights file "
                             f"({type(error).__name__})") from None
        raise InputError(f"--weights {path}: holds pickled Python objects (a whole model saved "
                         "with torch.save(model)?), which lrpfx does not unpickle: they can "
                         "run code. Save the weights with torch.save(model.state_dict(), path) "
                         "and pass that file") from None
    except Exception as error:  # pickle, zip and torch errors alike
        raise InputError(f"--weights {path}: not a PyTorch weights file "
                         f"({type(error).__name__})") from None
    if isinstance(state, dict):
        state = state.get("state_dict", state.get("model", state))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"--weights {path}: expected a state dict of tensors")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if missing or unexpected or shapes:
        problems = [f"{len(missing)} missing ({_few(missing)})",
                    f"{len(unexpected)} unexpected ({_few(unexpected)})",
                    f"{len(shapes)} of another shape ({_few(shapes)})"]
        raise InputError(f"--weights {path} does not fit {arch}: keys " + "; ".join(problems))
    model.load_state_dict(state)


def _few(keys: Iterable[str]) -> str:
    keys = list(keys)
    return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "") if keys else "-"


def _pretrained(arch: str, download: bool) -> tuple[dict[str, torch.Tensor] | None, str]:
    """torchvision's default weights from the torch hub cache, or downloaded (with a short
    timeout); None and the reason when neither works."""
    from torchvision import models

    try:
        weights = models.get_model_weights(arch).DEFAULT  # type: ignore[attr-defined]
    except (ValueError, KeyError, AttributeError):
        return None, f"torchvision has no pretrained weights for {arch}"
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.is_file() and not download:
        return None, f"{cached} is not there and downloading is off"
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)
    try:
        state = torch.hub.load_state_dict_from_url(weights.url, progress=False, map_location="cpu")
    except Exception as error:  # network errors of every kind
        return None, f"could not download {weights.url} ({type(error).__name__}: {error})"
    finally:
        socket.setdefaulttimeout(previous)
    return state, f"torchvision {weights}"


def load_model(arch: str, weights: Path | None = None, download: bool = True) -> LoadedModel:
    """The model ``arch`` in eval mode with ``weights`` (a file), else torchvision's pretrained
    weights when they can be had, else random weights (``LoadedModel.random`` says which)."""
    model = build_model(arch)
    categories = None
    if ":" not in arch:
        from torchvision import models

        try:
            meta = models.get_model_weights(arch).DEFAULT.meta  # type: ignore[attr-defined]
            categories = list(meta.get("categories") or []) or None
        except (ValueError, KeyError, AttributeError):
            categories = None
    if weights is not None:
        load_weights(model, Path(weights), arch)
        return LoadedModel(model.eval(), str(weights), False, categories)
    if ":" in arch:
        return LoadedModel(model.eval(), f"as built by {arch}", False, None)
    state, origin = _pretrained(arch, download)
    if state is None:
        return LoadedModel(model.eval(), f"RANDOM ({origin})", True, categories)
    model.load_state_dict(state)
    return LoadedModel(model.eval(), origin, False, categories)
