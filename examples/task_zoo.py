"""Model-zoo sweep beyond classification: torchvision's segmentation and video models.

Segmentation models (``weights=None, weights_backbone=None``, 5 classes, the FCN/DeepLabV3
auxiliary head on, a batch of 2 at 64×64) return ``{"out", "aux"}``; each is explained with
``Select("out", Region(mask, 1))``: class 1's logits summed over a centred square of the mask.
Video classifiers (10 classes) take a batch of 2 clips, ``(N, 3, T, H, W)``; they are
explained at each clip's argmax logit. Checks as in ``model_zoo.py``: the explainer's output
(every element of a dict) equals the model's under ``EpsilonPlusFlat`` and
``EpsilonGammaBox`` (attention models: ``AttnLRP``, ``CPLRP``), the relevance is finite and
shaped like the input, and with ``EpsilonOnly(1e-12, ignore_bias=True)`` (attention models:
``CPLRP(1e-12)`` with every additive constant zero) Σ R_in equals the explained logit (the
region's summed logit) on non-negative re-drawn weights (``model_zoo.nonnegative``).

    python examples/model_zoo.py --tasks            # every model here, section in the docs
    python examples/model_zoo.py fcn_resnet50 r3d_18  # some, table printed only
"""

from __future__ import annotations

import time
from pathlib import Path

import model_zoo as zoo
import torch
import torchvision
from torch import nn

import lrpfx
from lrpfx import composites
from lrpfx.targets import Region, Select

SEGMENTATION = tuple(torchvision.models.list_models(module=torchvision.models.segmentation))
VIDEO = ("r3d_18", "mc3_18", "r2plus1d_18", "s3d", "swin3d_t")
# not here: mvit_v1_b is built for 16×224×224 clips only (too slow for this sweep; it explains
# when built for a small clip, tests/test_task_zoo.py); mvit_v2_s adds relative positions by
# item assignment, which fx cannot trace
ATTENTION = ("swin3d_",)
NAMES = SEGMENTATION + VIDEO
# clip shapes (T, H, W): s3d pools (2, 7, 7) at stride 32 in space, 8 in time
CLIPS = {"s3d": (16, 224, 224)}
SECTION = "## Beyond classification: segmentation and video"


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    """The model with non-negative random weights and a small input batch (docstring)."""
    torch.manual_seed(0)
    kwargs: dict = {"weights": None, "num_classes": 5 if name in SEGMENTATION else 10}
    if name in SEGMENTATION:
        kwargs.update(weights_backbone=None, aux_loss=not name.startswith("lraspp"))
    model = zoo.nonnegative(torchvision.models.get_model(name, **kwargs)).eval()
    large = name == "s3d" or sum(p.numel() for p in model.parameters()) > zoo.LARGE
    dtype = torch.float32 if large else torch.float64
    shape = (2, 3, 64, 64) if name in SEGMENTATION else (2, 3) + CLIPS.get(name, (4, 32, 32))
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    return model.to(dtype), x.to(dtype)


def region(x: torch.Tensor) -> Select:
    """Class 1 over a centred square of half the image's side."""
    h, w = x.shape[-2:]
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[h // 4: h - h // 4, w // 4: w - w // 4] = True
    return Select("out", Region(mask, 1))


def _error(got: object, expected: object) -> float:
    if isinstance(expected, dict):
        return max(_error(got[k], v) for k, v in expected.items())  # type: ignore[index]
    assert isinstance(got, torch.Tensor) and isinstance(expected, torch.Tensor)
    return ((got - expected).abs().max() / expected.abs().max()).item()


def segmentation_conservation(model: nn.Module, x: torch.Tensor) -> float:
    """``max |Σ R_in − region logit| / |region logit|`` over the batch (ε-only, no biases)."""
    epsilon = composites.EpsilonOnly(epsilon=1e-12, stabilizer=1e-12, ignore_bias=True)
    seed = region(x)
    out = lrpfx.compile(model, epsilon, maxpool="wta")(x, output_relevance=seed)
    assert isinstance(seed.inner, Region) and seed.inner.mask is not None
    explained = out.output["out"][:, 1][:, seed.inner.mask].sum(1)
    total = out.relevance.flatten(1).sum(1)
    return ((total - explained).abs() / explained.abs()).max().item()


def sweep_one(name: str) -> zoo.Row:
    """Compile and check one segmentation or video model (see the module docstring)."""
    model, x = build(name)
    with torch.no_grad():
        expected = model(x)
    attention = name.startswith(ATTENTION)
    presets = ((composites.AttnLRP(), composites.CPLRP()) if attention else
               (composites.EpsilonPlusFlat(), composites.EpsilonGammaBox(0.0, 1.0)))
    options = {"example_inputs": x} if attention else {}
    seed = region(x) if name in SEGMENTATION else None
    start = time.perf_counter()
    explainer = lrpfx.compile(model, presets[0], maxpool="wta", **options)
    compile_s = time.perf_counter() - start
    errors, finite = [], True
    for explain in (explainer, lrpfx.compile(model, presets[1], **options)):
        out = explain(x, output_relevance=seed)
        errors.append(_error(out.output, expected))
        finite &= bool(torch.isfinite(out.relevance).all()) and out.relevance.shape == x.shape
    graph = explainer.graph_module.graph
    ops = {str(n.target) for n in graph.nodes if n.op in ("call_function", "call_method")}
    if name in SEGMENTATION:
        conservation = segmentation_conservation(model, x)
    elif attention:
        conservation = zoo.attention_conservation_error(model, x)
    else:
        conservation = zoo.conservation_error(model, x)
    return zoo.Row(name, str(x.dtype).removeprefix("torch."), len(graph.nodes), len(ops),
                   compile_s, max(errors), finite, conservation)


def markdown(rows: list[zoo.Row]) -> str:
    """The docs section of a run."""
    lines = [
        SECTION, "",
        "Written by `python examples/model_zoo.py --tasks` (see `examples/task_zoo.py`).",
        "Segmentation: random weights, 5 classes, auxiliary head on (not LR-ASPP), batch of 2",
        "at 64×64, explained with `Select(\"out\", Region(mask, 1))` (a centred square); *output*",
        "covers both elements of the dict; *conservation*: max |Σ R_in − the region's summed",
        "logit| / |that logit|. Video: 10 classes, a batch of 2 clips of 4×32×32 (s3d",
        "16×224×224 in float32: its last pool is fixed at 2×7×7), explained at the argmax logit;",
        "swin3d_t with `AttnLRP`/`CPLRP` and static shapes, as the attention models",
        "above. Columns as above. Not in the table: `mvit_v1_b` compiles and explains",
        "(output equal) when built for a 4×32×32 clip (`tests/test_task_zoo.py`), but",
        "torchvision builds it for 16×224×224 only, too slow for this sweep on 2 cores;",
        "`mvit_v2_s` does not trace (it adds relative positions by item assignment,",
        "`attn[:, :, 1:, 1:] += rel_pos`).", "",
        "| model | dtype | nodes | ops | compile (s) | output | finite | conservation |",
        "|---|---|---:|---:|---:|---:|:-:|---:|",
    ]
    lines += zoo.table_rows(rows)
    return "\n".join(lines) + "\n"


def write_section(docs: Path, section: str) -> None:
    """Put ``section`` at the end of ``docs``, replacing an earlier run's."""
    text = docs.read_text()
    if SECTION in text:
        text = text[:text.index(SECTION)].rstrip("\n") + "\n"
    docs.write_text(text + "\n" + section)
