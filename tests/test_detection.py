"""Detection (``lrpfx.detection``): the anchor found behind each kept detection is the one
whose head outputs give its score; a box's class logit is explained through the dense
backbone and head, conserving it; what is refused."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx import composites, detection
from lrpfx.images import load_image

torchvision = pytest.importorskip("torchvision")
from torchvision.models import resnet18  # noqa: E402
from torchvision.models.detection import RetinaNet  # noqa: E402
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor  # noqa: E402
from torchvision.ops import misc  # noqa: E402
from torchvision.ops.feature_pyramid_network import LastLevelP6P7  # noqa: E402

EXAMPLES = Path(__file__).parent.parent / "examples"
LRP0 = composites.EpsilonOnly(epsilon=1e-12, stabilizer=1e-12, ignore_bias=True)

pytestmark = pytest.mark.usefixtures("one_thread")


def small_retinanet() -> RetinaNet:
    """RetinaNet on a ResNet-18 FPN at 64 × 64, 3 classes, every box kept."""
    torch.manual_seed(0)
    backbone = _resnet_fpn_extractor(resnet18(), 5, returned_layers=[2, 3, 4],
                                     extra_blocks=LastLevelP6P7(256, 256))
    return RetinaNet(backbone, num_classes=3, min_size=64, max_size=64,
                     score_thresh=0.0).eval()


def image() -> torch.Tensor:
    return torch.rand(3, 48, 56, generator=torch.Generator().manual_seed(1))


def scores_at(name: str, head: dict, anchor: int, label: int) -> torch.Tensor:
    """The score post-processing gives the (anchor, label) pair, from the head's outputs."""
    logits = head["cls_logits"][0, anchor]
    if name == "ssd":
        return logits.softmax(-1)[label]
    if name == "fcos":
        return (logits[label].sigmoid() * head["bbox_ctrness"][0, anchor, 0].sigmoid()).sqrt()
    return logits[label].sigmoid()


def detector(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "retinanet":
        return small_retinanet()
    if name == "fcos":
        return torchvision.models.detection.fcos_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=4, min_size=64, max_size=64,
            score_thresh=0.0).eval()
    return torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=4, score_thresh=0.0).eval()


@pytest.mark.parametrize("name", ["retinanet", pytest.param("fcos", marks=pytest.mark.slow),
                                  pytest.param("ssd", marks=pytest.mark.slow)])
def test_locate_finds_the_anchor_whose_outputs_give_the_score(name):
    model, picture = detector(name), image()
    with torch.no_grad():
        found = model([picture])[0]
        head = detection.dense(model)(detection.inputs(model, picture))
    assert len(found["boxes"]) >= 3
    for i in range(3):
        located = detection.locate(model, picture, found, i)
        assert located.label == int(found["labels"][i]) and located.distance < 1e-3
        assert located.seed.key == "cls_logits"
        torch.testing.assert_close(scores_at(name, head, located.anchor, located.label),
                                   found["scores"][i], rtol=1e-5, atol=1e-7)


def test_a_box_is_explained_through_the_dense_head_and_conserves_its_logit():
    model = small_retinanet().double()
    with torch.no_grad():  # no biases: Σ R_in is the box's class logit (LRP-0)
        for m in model.modules():
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
            if isinstance(m, misc.FrozenBatchNorm2d):
                m.running_mean.zero_()
    picture = image().double()
    with torch.no_grad():
        found = model([picture])[0]
    x = detection.inputs(model, picture)
    explainer = lrpfx.compile(detection.dense(model), LRP0, example_inputs=x)
    located = detection.locate(model, picture, found, 1)
    out = explainer(x, output_relevance=located.seed)
    expected = detection.dense(model)(x)
    for key in expected:
        torch.testing.assert_close(out.output[key], expected[key], rtol=1e-10, atol=1e-12)
    logit = out.output["cls_logits"][0, located.anchor, located.label]
    assert torch.isfinite(out.relevance).all() and out.relevance.shape == x.shape
    torch.testing.assert_close(out.relevance.sum(), logit, rtol=1e-7, atol=1e-9)
    on_image = detection.resize_relevance(out.relevance, model, picture)
    assert on_image.shape == (1, 3, 48, 56)


def test_what_is_not_a_detection_is_refused():
    model, picture = small_retinanet(), image()
    with torch.no_grad():
        found = model([picture])[0]
    with pytest.raises(IndexError, match=f"the model kept {len(found['boxes'])} boxes"):
        detection.locate(model, picture, found, len(found["boxes"]))
    moved = {**found, "boxes": found["boxes"] + 7.0}
    with pytest.raises(ValueError, match="no anchor's box matches detection 0"):
        detection.locate(model, picture, moved, 0)
    with pytest.raises(ValueError, match=r"one image \(C, H, W\)"):
        detection.inputs(model, picture[None])
    with pytest.raises(TypeError, match="not a dense detector.*Faster R-CNN"):
        detection.dense(nn.Linear(2, 2))


@pytest.mark.slow
def test_the_detection_example_draws_the_box_and_its_heatmap(tmp_path):
    torch.set_default_dtype(torch.float32)  # the examples run as users run them
    main = runpy.run_path(str(EXAMPLES / "detection.py"), run_name="example_detection")["main"]
    result = main(["--size", "64", "--out", str(tmp_path / "box.png")])
    assert load_image(result["path"]).shape == (3, 64 + 4, 2 * 66 + 2)
    assert result["label"] in range(91) and result["relevance"] != 0.0
