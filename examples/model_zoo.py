"""Model-zoo sweep: every torchvision classification model through lrpfx.

For each model (random weights, 10 classes, small inputs): compile with ``EpsilonPlusFlat`` and
with ``EpsilonGammaBox`` (attention models: ``AttnLRP`` and ``CPLRP``, with static shapes from
``example_inputs``); the explainer's output must equal the model's, the relevance must be
finite and shaped like the input; and with an ε-only composite that ignores biases
(``EpsilonOnly(1e-12, ignore_bias=True)``; attention models: ``CPLRP(1e-12)`` on a copy whose
additive constants are all zero) the input relevance must sum to the target logit.
Writes ``docs/model-zoo.md`` (model, nodes, ops, compile time, conservation error).

Conservation is measured where ε-LRP is well conditioned. On random signed weights a depthwise
window whose inputs are all zero after a ReLU has ``z = 0`` and swallows its relevance, and a
residual sum ``a + b ≈ 0`` amplifies rounding without bound (measured: 0.46 % lost in one
MobileNetV2 block, 1e40 blow-ups through signed linear bottlenecks). So the weights are
re-drawn non-negative, ``w = |N(0, 1)| sqrt(π/2) / fan_in`` with BatchNorm as a scale and small
positive biases (every ``z > 0``), and inputs are in [0, 1]. ConvNeXt, whose LayerNorms center
every activation, keeps torchvision's signed initialization.

    python examples/model_zoo.py                 # the whole sweep, writes docs/model-zoo.md
    python examples/model_zoo.py resnet18 vgg11  # some models, table printed only
    python examples/model_zoo.py --tasks         # segmentation and video (examples/task_zoo.py)
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

import lrpfx
from lrpfx import composites

ATTENTION = ("vit_", "swin_", "maxvit_")
DOCS = Path(__file__).resolve().parent.parent / "docs" / "model-zoo.md"
# the smallest inputs these accept (vit: built for it; maxvit: only 224); others 32
SIZES = {"alexnet": 64, "inception_v3": 75, "vit_h_14": 28, "maxvit_t": 224}
LARGE = 150_000_000  # parameters; larger models run in float32 (memory: 2 cores, 24 GiB)


def model_names() -> list[str]:
    """Every torchvision classification model."""
    return torchvision.models.list_models(module=torchvision.models)


def attention(name: str) -> bool:
    return name.startswith(ATTENTION)


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    """The model with random weights (see the module docstring) and a small input batch, in
    float64 (float32 above ``LARGE`` parameters)."""
    torch.manual_seed(0)
    kwargs: dict = {"num_classes": 10}
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=False)
    if name.startswith("vit_"):
        kwargs.update(image_size=SIZES.get(name, 32))
    model = nonnegative(torchvision.models.get_model(name, **kwargs)).eval()
    if name.startswith("vit_"):  # torchvision's head starts at zero: every logit would be 0
        nn.init.normal_(model.heads.head.weight, std=0.02)
    large = sum(p.numel() for p in model.parameters()) > LARGE
    model = model.to(torch.float32 if large else torch.float64)
    size = SIZES.get(name, 32)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    return model, x.to(next(model.parameters()).dtype)


def nonnegative(model: nn.Module) -> nn.Module:
    """Non-negative weights and shifts, so every ``z > 0`` (LayerNorm models keep theirs)."""
    if any(isinstance(m, nn.LayerNorm) for m in model.modules()):
        return model
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                fan_in = m.weight[0].numel()
                w = torch.randn(m.weight.shape, generator=g).abs()
                m.weight.copy_(w * math.sqrt(math.pi / 2) / fan_in)
                if m.bias is not None:
                    m.bias.fill_(0.01)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.fill_(0.01)
    return model


@dataclass
class Row:
    model: str
    dtype: str
    nodes: int
    ops: int
    compile_s: float
    output_error: float
    finite: bool
    conservation: float


def table_rows(rows: list[Row]) -> list[str]:
    """One Markdown table line per row."""
    return [f"| {r.model} | {r.dtype} | {r.nodes} | {r.ops} | {r.compile_s:.2f} | "
            f"{r.output_error:.1e} | {'yes' if r.finite else 'NO'} | {r.conservation:.1e} |"
            for r in rows]


def conservation_error(model: nn.Module, x: torch.Tensor) -> float:
    """``max |Σ R_in − logit| / |logit|`` over the batch, ε-only composite ignoring biases."""
    epsilon = composites.EpsilonOnly(epsilon=1e-12, stabilizer=1e-12, ignore_bias=True)
    out = lrpfx.compile(model, epsilon, maxpool="wta")(x)
    logit = out.output.gather(1, out.output.argmax(1, keepdim=True))[:, 0]
    total = out.relevance.flatten(1).sum(1)
    return ((total - logit).abs() / logit.abs()).max().item()


def attention_conservation_error(model: nn.Module, x: torch.Tensor) -> float:
    """As ``conservation_error``, with CP-LRP on a copy whose additive constants are zero."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("bias", "class_token", "pos_embedding")):
                p.zero_()
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.zero_()
    out = lrpfx.compile(model, composites.CPLRP(epsilon=1e-12), example_inputs=x)(x)
    logit = out.output.gather(1, out.output.argmax(1, keepdim=True))[:, 0]
    total = out.relevance.flatten(1).sum(1)
    return ((total - logit).abs() / logit.abs()).max().item()


def sweep_one(name: str) -> Row:
    """Compile and check one model (see the module docstring)."""
    model, x = build(name)
    with torch.no_grad():
        expected = model(x)
    presets = ((composites.AttnLRP(), composites.CPLRP()) if attention(name) else
               (composites.EpsilonPlusFlat(), composites.EpsilonGammaBox(0.0, 1.0)))
    options = {"example_inputs": x} if attention(name) else {}
    start = time.perf_counter()
    explainer = lrpfx.compile(model, presets[0], maxpool="wta", **options)
    compile_s = time.perf_counter() - start
    errors, finite = [], True
    for explain in (explainer, lrpfx.compile(model, presets[1], **options)):
        out = explain(x)
        errors.append(((out.output - expected).abs().max() / expected.abs().max()).item())
        finite &= bool(torch.isfinite(out.relevance).all()) and out.relevance.shape == x.shape
    graph = explainer.graph_module.graph
    ops = {str(n.target) for n in graph.nodes if n.op in ("call_function", "call_method")}
    conservation = (attention_conservation_error if attention(name) else conservation_error)
    return Row(name, str(x.dtype).removeprefix("torch."), len(graph.nodes), len(ops), compile_s,
               max(errors), finite, conservation(model, x))


def markdown(rows: list[Row]) -> str:
    lines = [
        "# Model zoo",
        "",
        "Every torchvision classification model, random weights, 10 classes, batch of 2 at 32×32",
        "(alexnet 64, inception_v3 75, vit_h_14 28, maxvit_t 224), written by",
        "`python examples/model_zoo.py`. *nodes*: nodes of the canonical graph; *ops*: distinct",
        "canonical ops; *compile*: `lrpfx.compile` with `EpsilonPlusFlat` (attention models:",
        "`AttnLRP`, static shapes) in seconds on 2 shared CPU cores; *output*: max |explainer",
        "output − model output| / max |model output| over `EpsilonPlusFlat` and `EpsilonGammaBox`",
        "(attention models: `AttnLRP` and `CPLRP`); *conservation*: max |Σ R_in − logit| / |logit|",
        "with `EpsilonOnly(1e-12, ignore_bias=True)` (attention models: `CPLRP(1e-12)` with every",
        "additive constant zero; see the script's docstring for the weights).",
        "",
        "| model | dtype | nodes | ops | compile (s) | output | finite | conservation |",
        "|---|---|---:|---:|---:|---:|:-:|---:|",
    ]
    lines += table_rows(rows)
    worst = max(rows, key=lambda r: r.conservation)
    lines += ["", f"{len(rows)} models; worst conservation error {worst.conservation:.1e} "
              f"({worst.model})."]
    return "\n".join(lines) + "\n"


def main(names: list[str]) -> None:
    import task_zoo  # segmentation and video models
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    tasks = names == ["--tasks"]
    names = list(task_zoo.NAMES) if tasks else names
    rows: list[Row] = []
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/"
               "{task.total}"), TimeElapsedColumn())
    with Progress(*columns) as progress:
        task = progress.add_task("model zoo", total=len(names))
        for name in names:
            progress.update(task, description=f"model zoo: {name}")
            rows.append((task_zoo.sweep_one if name in task_zoo.NAMES else sweep_one)(name))
            r = rows[-1]
            progress.console.print(f"{name}: {r.nodes} nodes, compile {r.compile_s:.2f} s, "
                                   f"output {r.output_error:.1e}, conservation "
                                   f"{r.conservation:.1e}")
            progress.advance(task)
    if tasks:
        task_zoo.write_section(DOCS, task_zoo.markdown(rows))
        print(f"wrote {DOCS}")
        return
    table = markdown(rows)
    if names == model_names():
        DOCS.write_text(table)
        print(f"wrote {DOCS}")
    else:
        print(table)


if __name__ == "__main__":
    main(sys.argv[1:] or model_names())
