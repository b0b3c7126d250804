"""Explain one detected box of a torchvision detector (RetinaNet, FCOS, SSD / SSDlite).

A detector's post-processing (box decoding, score thresholds, top-k, non-maximum suppression)
is data-dependent control flow that fx cannot trace and LRP should not pass through. lrpfx
explains the dense part instead: :func:`dense` is the backbone and head as one module, from the
images the backbone sees (normalized, resized and padded by ``model.transform``) to the
per-anchor outputs ``{"cls_logits": (N, A, C), "bbox_regression": (N, A, 4), ...}``.

A kept detection came from one anchor (one location and shape of one feature level), whose
class logit it scores. :func:`locate` finds that anchor: it decodes every anchor's box as the
model's post-processing does and takes the one that matches the detection's box (equal up to
rounding; among equals, the highest logit of the detection's class). The seed it returns,
``Select("cls_logits", Unit((anchor, label)))``, explains that logit, so the question "why
this box" is one call::

    model.eval()
    detection = model([image])[0]                     # {"boxes", "labels", "scores"}
    x = lrpfx.detection.inputs(model, image)          # what the backbone sees, a batch of one
    explainer = lrpfx.compile(lrpfx.detection.dense(model), "epsilon-plus-flat",
                              example_inputs=x)
    found = lrpfx.detection.locate(model, image, detection, i)
    out = explainer(x, output_relevance=found.seed)   # out.relevance: (1, 3, H', W')

``found.box`` is the box in ``x``'s coordinates. For FCOS the explained logit is the class's;
its score also multiplies in the centerness (explain ``Select("bbox_ctrness", Unit((a, 0)))``
for that part). ``x`` has ``model.transform``'s size, not the image's: ``resize_relevance``
maps a heatmap back onto the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lrpfx.targets import Select, Unit

_PARTS = ("backbone", "head", "anchor_generator", "box_coder", "transform")
MATCH_PX = 0.5  # an anchor's decoded box within this of the detection's (float32 rounding)


class DenseHead(nn.Module):
    """A detector's backbone and head: images (as ``model.transform`` makes them) to the
    per-anchor outputs of the head (see the module docstring). It shares the model's
    modules (no copy; ``lrpfx.compile`` never changes them)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        missing = [p for p in _PARTS if not hasattr(model, p)]
        if missing:
            raise TypeError(f"{type(model).__name__} is not a dense detector of torchvision "
                            f"(RetinaNet, FCOS, SSD): it has no {', '.join(missing)}; "
                            "two-stage detectors (Faster R-CNN) are not supported")
        self.backbone = model.backbone
        self.head = model.head

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        return self.head(list(features.values()))  # type: ignore[no-any-return]


def dense(model: Any) -> DenseHead:
    """The backbone and head of ``model`` as one module to compile (module docstring)."""
    return DenseHead(model).train(model.training)


def _transformed(model: Any, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    if image.dim() != 3:
        raise ValueError(f"give one image (C, H, W) as the detector takes it, got shape "
                         f"{tuple(image.shape)}")
    with torch.no_grad():
        images, _ = model.transform([image])
    size = images.image_sizes[0]
    return images.tensors, (int(size[0]), int(size[1]))


def inputs(model: Any, image: torch.Tensor) -> torch.Tensor:
    """What the backbone sees of one image: normalized, resized and padded by
    ``model.transform``, a batch of one ``(1, C, H', W')``."""
    return _transformed(model, image)[0]


@dataclass(frozen=True, eq=False)
class Located:
    """The anchor behind a detection: its index among the head's ``A`` outputs, the class
    ``label``, how far its decoded box is from the detection's (the largest corner offset in
    pixels of ``x``: rounding only), ``box`` in the coordinates of ``inputs(model, image)``,
    and the ``seed`` explaining its class logit."""

    anchor: int
    label: int
    distance: float
    box: torch.Tensor
    seed: Select


def _decode(model: Any, regression: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    coder = model.box_coder
    if hasattr(coder, "decode_single"):  # RetinaNet, SSD
        return coder.decode_single(regression, anchors)  # type: ignore[no-any-return]
    return coder.decode(regression, anchors)  # type: ignore[no-any-return]  # FCOS


def locate(model: Any, image: torch.Tensor, detection: dict[str, torch.Tensor],
           i: int) -> Located:
    """The anchor that produced detection ``i`` of ``detection`` (``model([image])[0]``).

    Raises:
        IndexError: ``i`` is not a kept detection.
        ValueError: no anchor's box matches it (the detection is not from this image/model).
    """
    from torchvision.models.detection.image_list import ImageList
    from torchvision.ops import clip_boxes_to_image

    count = len(detection["boxes"])
    if not -count <= i < count:
        raise IndexError(f"detection {i} does not exist: the model kept {count} boxes")
    x, size = _transformed(model, image)
    scale = torch.tensor([size[1] / image.shape[-1], size[0] / image.shape[-2]] * 2)
    box = detection["boxes"][i].to(torch.float64).cpu() * scale  # into x's coordinates
    label = int(detection["labels"][i])
    with torch.no_grad():
        features = list(model.backbone(x).values())
        head = model.head(features)
        anchors = model.anchor_generator(ImageList(x, [size]), features)[0]
        boxes = clip_boxes_to_image(_decode(model, head["bbox_regression"][0], anchors), size)
    distance = (boxes.to(torch.float64).cpu() - box).abs().amax(1)  # largest corner offset
    logits = head["cls_logits"][0, :, label].to(torch.float64).cpu()
    best = distance.min()
    if best > MATCH_PX:
        raise ValueError(f"no anchor's box matches detection {i} (the nearest is "
                         f"{float(best):.3g} px off); pass the detections model([image]) "
                         "returned for this image")
    ties = distance <= best + 1e-6
    anchor = int(torch.where(ties, logits, torch.tensor(float("-inf"),
                                                        dtype=torch.float64)).argmax())
    return Located(anchor, label, float(distance[anchor]), box,
                   Select("cls_logits", Unit((anchor, label))))


def resize_relevance(relevance: torch.Tensor, model: Any,
                     image: torch.Tensor) -> torch.Tensor:
    """A relevance of ``inputs(model, image)`` ``(1, C, H', W')`` onto the image's pixels
    ``(1, C, H, W)``: the padding cropped, resized by area (bilinear when enlarging); each
    pixel's value is a density, so the map's sum changes with the size."""
    _, size = _transformed(model, image)
    cropped = relevance[..., :size[0], :size[1]]
    mode: Any = "area" if size[0] >= image.shape[-2] else "bilinear"
    return F.interpolate(cropped, size=tuple(image.shape[-2:]), mode=mode)
