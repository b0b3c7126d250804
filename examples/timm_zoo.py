"""The timm sweep: one smallest model per timm architecture family through lrpfx.

For each model (random weights, ``num_classes=10``, float32, a batch of 2 small images; the
smallest input among 64 × 64, ``img_size=64`` where the model takes it, and its default size):
compile with ``AttnLRP`` (ε on convolutions, dense layers and matrix products, the softmax by
deep Taylor, products shared uniformly: one preset for every architecture), first with plain
symbolic tracing and, when that fails, with static shapes (``example_inputs``). The explainer's
output must be the model's (relative error < 1e-4) and the relevance finite and shaped like the
input. Each model runs in a child process with a time and a memory cap, and ends in one class:

    ok, trace error, unsupported ops, wrong output, non-finite, timeout, error (anything else),
    build error (timm cannot build it at the sizes tried: not counted against lrpfx)

*conservation* (information, not a class): ``|Σ R_in − logit| / |logit|`` with
``CPLRP(1e-12)`` on a copy whose additive constants are zero (biases, BatchNorm shifts, position
embeddings, class tokens). On random signed weights ε-LRP is ill conditioned (a sum ``z ≈ 0``
amplifies rounding), so large values there are the weights', not lost relevance.

    python examples/timm_zoo.py                    # every family, writes docs/timm-zoo.md
    python examples/timm_zoo.py resnet vgg         # some families, table printed only
    python examples/timm_zoo.py --sample 5         # every 5th model of timm's whole list
    python examples/timm_zoo.py --refresh          # recompute the smallest model per family
    python examples/timm_zoo.py --update eva volo  # rerun some families, rewrite their rows

A full run also writes ``docs/timm-zoo.json`` (every result, with the ops that block); ``--update``
replaces the named families' results there and writes both files again, naming the families
rerun since the last full run.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import re
import resource
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "timm-zoo.md"
FAMILIES = Path(__file__).resolve().parent / "timm_families.json"
SIZE = 64
TOLERANCE = 1e-4
CLASSES = ("ok", "trace error", "unsupported ops", "wrong output", "non-finite", "timeout",
           "error", "build error")


@dataclass
class Result:
    """What happened to one model."""

    family: str
    model: str
    status: str = "error"
    detail: str = ""
    size: int = 0
    static: bool = False
    nodes: int = 0
    seconds: float = 0.0
    output_error: float = float("nan")
    conservation: float = float("nan")
    blocking: list[str] = field(default_factory=list)  # the ops of unsupported nodes
    rerun: bool = False  # measured by ``--update`` after the full run


# -- which models ------------------------------------------------------------------------------
def families() -> dict[str, list[str]]:
    """timm's architecture families (its model modules) and their models."""
    import timm

    return {m: timm.list_models(module=m) for m in sorted(timm.list_modules())}


def parameters(name: str) -> int | None:
    """The parameter count of ``name`` at 10 classes, built on the meta device (no memory)."""
    import timm

    try:
        with torch.device("meta"):
            model = timm.create_model(name, num_classes=10)
    except Exception:
        return None
    return sum(p.numel() for p in model.parameters())


def smallest(refresh: bool = False) -> dict[str, str]:
    """The smallest model of each family (cached in ``timm_families.json``)."""
    if FAMILIES.exists() and not refresh:
        return dict(json.loads(FAMILIES.read_text()))
    chosen = {}
    for family, names in families().items():
        counts = [(n, parameters(n)) for n in names]
        sized = [(c, n) for n, c in counts if c is not None]
        if sized:
            chosen[family] = min(sized)[1]
    FAMILIES.write_text(json.dumps(chosen, indent=1, sort_keys=True) + "\n")
    return chosen


def sample(every: int) -> list[tuple[str, str]]:
    """Every ``every``-th model of timm's whole list, with its family."""
    import timm

    family = timm.models.model_entrypoint
    return [(family(n).__module__.rsplit(".", 1)[-1], n) for n in timm.list_models()[::every]]


# -- one model ---------------------------------------------------------------------------------
def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    """The model with random weights and a batch of 2 at the smallest size that works."""
    import timm

    failures = []
    for kwargs, size in (({"img_size": SIZE}, SIZE), ({}, SIZE), ({}, None)):
        torch.manual_seed(0)
        try:
            model = timm.create_model(name, num_classes=10, **kwargs).eval()
            side = size or model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
            channels = model.pretrained_cfg.get("input_size", (3,))[0]
            x = torch.rand(2, channels, side, side, generator=torch.Generator().manual_seed(1))
            with torch.no_grad():
                model(x)
            return model, x
        except Exception as error:
            failures.append(f"{kwargs or 'defaults'} at {size or 'default size'}: "
                            f"{type(error).__name__}: {error}")
    raise BuildError("; ".join(failures))


class BuildError(Exception):
    """timm cannot build or run the model at the sizes tried."""


def compile_model(model: nn.Module, x: torch.Tensor, composite: Any) -> tuple[Any, bool]:
    """The explainer: plain tracing first, static shapes when that fails. Returns it and
    whether static shapes were used; raises the error that got furthest (unsupported ops
    over trace errors)."""
    import lrpfx
    from lrpfx.errors import LrpfxError, TraceError, UnsupportedOperationError

    try:
        return lrpfx.compile(model, composite), False
    except LrpfxError as plain:
        try:
            return lrpfx.compile(model, composite, example_inputs=x), True
        except LrpfxError as static:
            if isinstance(plain, UnsupportedOperationError) and isinstance(static, TraceError):
                raise plain from None
            raise static from plain


_ORIGIN = re.compile(r"^\S+ \(([^,)]+)")


def blocking_ops(error: Exception) -> list[str]:
    """The op (spelling) of every node an ``UnsupportedOperationError`` lists."""
    lines = getattr(error, "nodes", [])
    return [m.group(1) if (m := _ORIGIN.match(line)) else line.split(":")[0] for line in lines]


def zero_constants(model: nn.Module) -> nn.Module:
    """A copy whose additive constants are zero (see the module docstring)."""
    model = copy.deepcopy(model)
    names = ("bias", "running_mean", "pos_embed", "cls_token", "dist_token", "reg_token",
             "pos_embedding", "class_token", "absolute_pos_embed")
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if name.split(".")[-1] in names:
                t.zero_()
    return model


def conservation(model: nn.Module, x: torch.Tensor, static: bool) -> float:
    """``max |Σ R_in − logit| / |logit|`` with CP-LRP on the constant-free copy."""
    import lrpfx
    from lrpfx import composites

    zeroed = zero_constants(model)
    options = {"example_inputs": x} if static else {}
    out = lrpfx.compile(zeroed, composites.CPLRP(epsilon=1e-12), **options)(x)
    logit = out.output.gather(1, out.output.argmax(1, keepdim=True))[:, 0]
    total = out.relevance.flatten(1).sum(1)
    return ((total - logit).abs() / logit.abs().clamp(min=1e-30)).max().item()


def check(family: str, name: str, measure_conservation: bool = True) -> Result:
    """Build, compile, explain and classify one model (see the module docstring)."""
    from lrpfx import composites
    from lrpfx.errors import NonFiniteError, TraceError, UnsupportedOperationError

    result = Result(family, name)
    try:
        model, x = build(name)
    except BuildError as error:
        result.status, result.detail = "build error", str(error)[:300]
        return result
    result.size = x.shape[-1]
    with torch.no_grad():
        expected = model(x)
    start = time.perf_counter()
    try:
        explainer, result.static = compile_model(model, x, composites.AttnLRP())
        out = explainer(x)
    except UnsupportedOperationError as error:
        result.status, result.blocking = "unsupported ops", blocking_ops(error)
        result.detail = str(error).splitlines()[1].strip()[:300]
        return result
    except TraceError as error:
        result.status, result.detail = "trace error", str(error).splitlines()[0][:300]
        return result
    except NonFiniteError as error:
        result.status, result.detail = "non-finite", str(error).splitlines()[0][:300]
        return result
    except Exception as error:  # anything else: an lrpfx bug, say where
        result.detail = f"{type(error).__name__}: {error}".splitlines()[0][:300]
        return result
    result.seconds = time.perf_counter() - start
    result.nodes = len(explainer.graph_module.graph.nodes)
    scale = expected.abs().max().clamp(min=1e-30)
    result.output_error = ((out.output - expected).abs().max() / scale).item()
    if not result.output_error < TOLERANCE:
        result.status = "wrong output"
    elif not (torch.isfinite(out.relevance).all() and out.relevance.shape == x.shape):
        result.status = "non-finite"
    else:
        result.status = "ok"
        try:
            if not measure_conservation:
                return result
            result.conservation = conservation(model, x, result.static)
        except Exception as error:  # information only: say why it is missing
            result.detail = f"conservation not measured: {type(error).__name__}: {error}"[:300]
    return result


# -- the sweep: each model in a child process with a time and a memory cap ----------------------
def _child(family: str, name: str, memory_gib: float, queue: Any) -> None:
    limit = int(memory_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    torch.set_num_threads(1)
    try:
        result = check(family, name)
    except MemoryError:
        result = Result(family, name, "error", "out of memory (the memory cap)")
    except Exception as error:
        tail = traceback.format_exception_only(type(error), error)[-1].strip()
        result = Result(family, name, "error", tail[:300])
    queue.put(asdict(result))


def run_one(family: str, name: str, seconds: float, memory_gib: float) -> Result:
    """``check`` in a child process, stopped after ``seconds`` or at ``memory_gib``."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_child, args=(family, name, memory_gib, queue), daemon=True)
    child.start()
    try:
        return Result(**queue.get(timeout=seconds))
    except Exception:
        return Result(family, name, "timeout" if child.is_alive() else "error",
                      f"no result within {seconds:.0f} s" if child.is_alive() else
                      f"the child process died (exit code {child.exitcode})")
    finally:
        if child.is_alive():
            child.kill()
        child.join()


def sweep(models: list[tuple[str, str]], seconds: float, memory_gib: float, jobs: int
          ) -> list[Result]:
    """Every ``(family, model)`` pair through ``run_one``, ``jobs`` at a time, with progress."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    results: list[Result] = []
    columns = (TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())
    with Progress(*columns) as progress, ThreadPoolExecutor(jobs) as pool:
        task = progress.add_task("timm zoo", total=len(models))
        futures = [pool.submit(run_one, f, m, seconds, memory_gib) for f, m in models]
        for future in as_completed(futures):
            r = future.result()
            results.append(r)
            progress.console.print(f"{r.family} ({r.model}): {r.status} {r.detail[:120]}")
            progress.advance(task)
    return sorted(results, key=lambda r: (r.family, r.model))


# -- the report --------------------------------------------------------------------------------
def ranking(results: list[Result]) -> list[tuple[str, int, int]]:
    """The ops that block, most families first: (op, families, nodes)."""
    nodes: Counter[str] = Counter()
    models: Counter[str] = Counter()
    for r in results:
        nodes.update(r.blocking)
        models.update(set(r.blocking))
    return sorted(((op, models[op], nodes[op]) for op in nodes), key=lambda t: (-t[1], -t[2]))


def summary(results: list[Result]) -> str:
    counted = [r for r in results if r.status != "build error"]
    ok = sum(r.status == "ok" for r in counted)
    share = 100 * ok / max(len(counted), 1)
    return f"**{ok} of {len(counted)}** ({share:.0f} %) compile, reproduce and explain"


def markdown(results: list[Result], title: str, command: str) -> str:
    counts = Counter(r.status for r in results)
    rerun = ", ".join(r.family for r in results if r.rerun)
    lines = [f"# {title}", "", f"Written by `{command}` (see its docstring for what is checked)"
             + (f"; rerun since with `--update`: {rerun}." if rerun else "."),
             "", summary(results) + "; by class: "
             + ", ".join(f"{c} {counts[c]}" for c in CLASSES if counts[c]) + ".", "",
             "| family | model | status | size | static | nodes | compile+explain (s) | output "
             "| conservation | detail |", "|---|---|---|---:|:-:|---:|---:|---:|---:|---|"]
    for r in results:
        detail = r.detail.replace("|", "\\|").replace("\n", " ")[:160]
        lines.append(f"| {r.family} | {r.model} | {r.status} | {r.size or ''} | "
                     f"{'yes' if r.static else ''} | {r.nodes or ''} | "
                     f"{r.seconds:.1f} | {r.output_error:.1e} | {r.conservation:.1e} | {detail} |")
    ranked = ranking(results)
    if ranked:
        lines += ["", "## Ops that still block", "", "| op | models | nodes |", "|---|---:|---:|"]
        lines += [f"| `{op}` | {m} | {n} |" for op, m, n in ranked]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("families", nargs="*", help="families to run (default: all)")
    parser.add_argument("--sample", type=int, metavar="N", help="every N-th model of timm")
    parser.add_argument("--refresh", action="store_true", help="recompute the smallest models")
    parser.add_argument("--seconds", type=float, default=300.0, help="time cap per model")
    parser.add_argument("--memory", type=float, default=8.0, help="memory cap per model (GiB)")
    parser.add_argument("--jobs", type=int, default=1, help="models run at the same time")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--docs", type=Path, default=DOCS, help="where a full run's table goes")
    parser.add_argument("--update", action="store_true",
                        help="replace the given families' rows of the full run's table")
    args = parser.parse_args()
    if args.sample:
        models = sample(args.sample)
    else:
        chosen = smallest(args.refresh)
        models = [(f, chosen[f]) for f in (args.families or chosen)]
    results = sweep(models, args.seconds, args.memory, args.jobs)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    title = f"timm sample (every {args.sample}th model)" if args.sample else "timm zoo"
    command = "python examples/timm_zoo.py" + (f" --sample {args.sample}" if args.sample else "")
    if args.update:
        results = updated(args.docs.with_suffix(".json"), results)
    table = markdown(results, title, command)
    if args.update or not args.families and not args.sample:
        args.docs.write_text(table)
        args.docs.with_suffix(".json").write_text(
            json.dumps([asdict(r) for r in results], indent=1) + "\n")
        print(f"wrote {args.docs} and its .json")
    else:
        print(table)
    print(summary(results))


def updated(record: Path, new: list[Result]) -> list[Result]:
    """The full run's results in ``record`` with those of ``new``'s families replaced."""
    rerun = {r.family: Result(**{**asdict(r), "rerun": True}) for r in new}
    old = [Result(**r) for r in json.loads(record.read_text())]
    return [rerun.pop(r.family, r) for r in old] + sorted(rerun.values(), key=lambda r: r.family)


if __name__ == "__main__":
    main()
