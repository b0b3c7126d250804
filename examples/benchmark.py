"""Speed and memory of lrpfx next to a plain forward, a plain gradient, Zennit and Captum.

One run, one process for the timings: every method is set up once, then timed in interleaved
rounds (round r runs each method once, so a change of machine load hits all methods alike); the
first ``--warmup`` rounds are dropped and the median of the rest is reported. Peak memory is
measured per method in a fresh child process (the RSS high-water mark of one explanation on CPU,
``torch.cuda.max_memory_allocated`` on CUDA), reported over the memory of the model and the input.

    python examples/benchmark.py                                   # VGG-16, ResNet-50, ... b1/b8
    python examples/benchmark.py --model vgg16 --batch 8 --threads 2 --json out/bench.json

Methods: ``forward`` (the model, no grad), ``gradient`` (input gradient of the target logit),
``lrpfx`` (eager), ``lrpfx-compiled`` (``torch_compile=True``), ``zennit`` (its ``Gradient``
attributor with the same composite and its canonizers), ``captum`` (``captum.attr.LRP``: its
rules come closest to the composite, but it has no flat rule, so its first conv uses z⁺, and it
cannot follow skip connections or modules called twice: on ResNet-50 it runs and returns
relevances of order 1e25, so it is timed on VGG only), and for attention models (vit, swin,
maxvit: lrpfx with ``AttnLRP`` and static shapes) ``gradient-frame``: AttnLRP as LXT computes it,
input × a modified gradient by autograd on the eager model (``tests/gradient_frame.py``, one
forward and one backward).
The "Δ" column is max |R - R_lrpfx| / max |R_lrpfx|: the results are the same explanation.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch import nn

import lrpfx
from lrpfx.composites import EpsilonGammaBox

METHODS = ("forward", "gradient", "gradient-frame", "lrpfx", "lrpfx-compiled", "zennit",
           "captum")
ATTENTION = ("vit_", "swin_", "maxvit_")
PEERS = {  # the peers that explain each model correctly
    "vgg16": ("zennit", "captum"), "vgg16_bn": ("zennit",), "resnet50": ("zennit",),
    "resnet18": ("zennit",), "tiny": ("zennit", "captum"),
}
MiB = 2.0**20
BOX = (-3.0, 3.0)  # input bounds of the epsilon-gamma-box composite


class Tiny(nn.Module):
    """A small CNN for smoke runs (conv, ReLU, max-pool, adaptive average pool, linear)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
        )
        self.classifier = nn.Sequential(nn.Linear(16 * 16, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def build_model(name: str) -> nn.Module:
    """A model with random weights (seeded; nothing is downloaded)."""
    torch.manual_seed(0)
    model = Tiny() if name == "tiny" else getattr(torchvision.models, name)()
    if name.startswith("vit_"):  # torchvision's head starts at zero: every relevance would be 0
        nn.init.normal_(model.heads.head.weight, std=0.02)
    return model.eval()


# -- the methods --------------------------------------------------------------------------------
Run = Callable[[], torch.Tensor | None]


@dataclass
class Case:
    """One model at one batch size on one device."""

    model: str
    batch: int
    size: int
    device: str
    composite: str

    @property
    def name(self) -> str:
        return f"{self.model} b{self.batch}"

    def make(self) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
        model = build_model(self.model).to(self.device)
        torch.manual_seed(1)
        x = torch.randn(self.batch, 3, self.size, self.size, device=self.device)
        with torch.no_grad():
            target = model(x).argmax(1)
        return model, x, target

    def result(self, method: str) -> Result:
        return Result(self.model, self.batch, method)

    def setup(self, method: str, model: nn.Module, x: torch.Tensor, target: torch.Tensor,
              stack: contextlib.ExitStack) -> Run:
        return make_run(method, self, model, x, target, stack)


def _zennit_canonizers(name: str) -> list[Any]:
    from zennit.canonizers import CompositeCanonizer, SequentialMergeBatchNorm
    from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer

    class MergeBatchNorm(SequentialMergeBatchNorm):
        """Zennit 0.5.1 sets ``eps = 0`` on merged BatchNorms; torch >= 2.10 rejects that."""

        def merge_batch_norm(self, modules, batch_norm):  # noqa: ANN001, ANN201
            super().merge_batch_norm(modules, batch_norm)
            batch_norm.eps = 1e-30

    if name.startswith("resnet"):  # zennit.torchvision.ResNetCanonizer with the fixed merge
        return [CompositeCanonizer((MergeBatchNorm(), ResNetBottleneckCanonizer(),
                                    ResNetBasicBlockCanonizer()))]
    return [MergeBatchNorm()]  # = zennit.torchvision.VGGCanonizer


def _zennit(case: Case, model: nn.Module, x: torch.Tensor, target: torch.Tensor,
            stack: contextlib.ExitStack) -> Run:
    from zennit import composites as zc
    from zennit.attribution import Gradient

    presets = {"epsilon-plus-flat": zc.EpsilonPlusFlat, "epsilon-plus": zc.EpsilonPlus,
               "epsilon-alpha2-beta1": zc.EpsilonAlpha2Beta1,
               "epsilon-alpha2-beta1-flat": zc.EpsilonAlpha2Beta1Flat,
               "epsilon-gamma-box": lambda **kw: zc.EpsilonGammaBox(*BOX, **kw)}
    composite = presets[case.composite](canonizers=_zennit_canonizers(case.model))
    attributor = stack.enter_context(Gradient(copy.deepcopy(model), composite))
    one_hot = torch.nn.functional.one_hot(target, 1000 if case.model != "tiny" else 10)

    def run() -> torch.Tensor:
        return attributor(x.clone(), lambda y: y * one_hot)[1]

    return run


def _captum(case: Case, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> Run:
    from captum.attr import LRP
    from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule

    if case.composite != "epsilon-plus-flat":
        raise ValueError("the Captum mapping is written for epsilon-plus-flat only")
    model = copy.deepcopy(model)
    for module in model.modules():  # Captum has no flat rule: its first conv uses z+ as well
        if isinstance(module, nn.Conv2d):
            module.rule = Alpha1_Beta0_Rule()
        elif isinstance(module, nn.Linear | nn.AdaptiveAvgPool2d):
            module.rule = EpsilonRule(1e-6)
    warnings.filterwarnings("ignore", "Input Tensor 0 did not already require gradients")
    lrp = LRP(model)
    return lambda: lrp.attribute(x, target=target).detach()


def _gradient_frame(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> Run:
    """AttnLRP in the gradient frame (LXT's way): x × the modified gradient of the logit."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.gradient_frame import ModifiedGradient

    frozen = copy.deepcopy(model).requires_grad_(False)

    def run() -> torch.Tensor:
        xg = x.detach().requires_grad_(True)
        with ModifiedGradient(reads={}):  # one pass: no BatchNorm to fold in these models
            logits = frozen(xg)
        return xg.detach() * torch.autograd.grad(logits.gather(1, target[:, None]).sum(), xg)[0]

    return run


def _gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> Run:
    def run() -> torch.Tensor:
        xg = x.detach().requires_grad_(True)
        return torch.autograd.grad(model(xg).gather(1, target[:, None]).sum(), xg)[0]

    return run


def make_run(method: str, case: Case, model: nn.Module, x: torch.Tensor, target: torch.Tensor,
             stack: contextlib.ExitStack) -> Run:
    """Set ``method`` up (compile, attach) and return the call to time."""
    if method == "forward":
        def forward() -> None:
            with torch.no_grad():
                model(x)
        return forward
    if method == "gradient":
        return _gradient(model, x, target)
    if method == "gradient-frame":
        return _gradient_frame(model, x, target)
    if method in ("lrpfx", "lrpfx-compiled"):
        rules: Any = EpsilonGammaBox(*BOX) if case.composite == "epsilon-gamma-box" else (
            case.composite)
        options: dict[str, Any] = {}
        if case.model.startswith(ATTENTION):
            rules, options = "attn-lrp", {"example_inputs": x}
        explainer = lrpfx.compile(model, rules, maxpool="wta",
                                  torch_compile=method == "lrpfx-compiled", **options)
        return lambda: explainer(x, target=target).relevance
    if method == "zennit":
        return _zennit(case, model, x, target, stack)
    if method == "captum":
        return _captum(case, model, x, target)
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def applicable(method: str, model: str) -> bool:
    if method == "gradient-frame":
        return model.startswith(ATTENTION)
    return method not in ("zennit", "captum") or method in PEERS.get(model, ())


# -- timing -------------------------------------------------------------------------------------
@dataclass
class Result:
    """The measurements of one method on one case (times in seconds, memory in MiB)."""

    model: str
    batch: int
    method: str
    times: list[float] = field(default_factory=list)
    setup_s: float | None = None
    peak_mib: float | None = None
    delta: float | None = None
    error: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(run: Run, device: str) -> tuple[float, torch.Tensor | None]:
    _sync(device)
    start = time.perf_counter()
    out = run()
    _sync(device)
    return time.perf_counter() - start, out


def _setup(methods: list[str], case: Any, model: nn.Module, x: Any, target: torch.Tensor,
           stack: contextlib.ExitStack, results: dict[str, Result]) -> dict[str, Run]:
    """Set every method up and call it once (this compiles); failures are recorded."""
    runs: dict[str, Run] = {}
    for method in methods:
        try:
            start = time.perf_counter()
            run = case.setup(method, model, x, target, stack)
            _timed(run, case.device)
            results[method].setup_s = time.perf_counter() - start
            runs[method] = run
        except Exception as exc:  # a peer that cannot run this model is reported, not fatal
            results[method].error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return runs


def time_case(case: Any, methods: list[str], warmup: int, repeats: int,
              advance: Callable[[], None]) -> dict[str, Result]:
    """Interleaved rounds over the methods; the first ``warmup`` rounds are not kept. ``case``
    is a ``Case`` or any object with its ``device``, ``make``, ``result`` and ``setup``."""
    model, x, target = case.make()
    results = {m: case.result(m) for m in methods}
    outputs: dict[str, torch.Tensor | None] = {}
    with contextlib.ExitStack() as stack:
        runs = _setup(methods, case, model, x, target, stack, results)
        for round_ in range(warmup + repeats):
            for method, run in runs.items():
                seconds, outputs[method] = _timed(run, case.device)
                if round_ >= warmup:
                    results[method].times.append(seconds)
                advance()
    reference = outputs.get("lrpfx")
    for method, out in outputs.items():
        if reference is not None and out is not None and method != "gradient":
            scale = reference.abs().max().clamp_min(1e-30)
            results[method].delta = float((out.detach() - reference).abs().max() / scale)
    return results


# -- memory, in a child process per method ------------------------------------------------------
def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _memory_now(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.memory_allocated() / MiB
    return _status_kib("VmRSS") / 1024


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return
    with contextlib.suppress(OSError):  # Linux >= 4.0: "5" resets the RSS high-water mark
        Path("/proc/self/clear_refs").write_text("5")


def _memory_peak(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / MiB
    return _status_kib("VmHWM") / 1024


def child(spec: dict[str, Any], kind: Callable[..., Any] = Case) -> None:
    """Measure one method's peak memory over the model and input; prints JSON. ``kind`` makes
    the case from its fields; ``spec["limit_mib"]`` bounds the process's data (CPU)."""
    torch.set_num_threads(spec["threads"])
    if spec.get("limit_mib") and not spec["case"]["device"].startswith("cuda"):
        import resource  # an allocation past it fails (an error), not the machine

        limit = int(spec["limit_mib"] * MiB)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.getrlimit(
            resource.RLIMIT_DATA)[1]))
    case, method = kind(**spec["case"]), spec["method"]
    if method == "zennit":  # imports count as the base, not as the method's memory
        import zennit.attribution  # noqa: F401
    if method == "captum":
        import captum.attr  # noqa: F401
    model, x, target = case.make()
    base = _memory_now(case.device)
    with contextlib.ExitStack() as stack:
        run = case.setup(method, model, x, target, stack)
        run()  # warm-up (and compilation)
        _reset_peak(case.device)
        run()
        peak = _memory_peak(case.device)
    print(json.dumps({"base_mib": base, "peak_mib": peak}))


def measure_memory(case: Any, method: str, threads: int, script: str = __file__,
                   limit_mib: float | None = None) -> float:
    """Peak memory (MiB) of one explanation over the model and input, in a fresh process
    (``script --child SPEC``, a dataclass case; its data bounded by ``limit_mib``)."""
    spec = {"case": asdict(case), "method": method, "threads": threads, "limit_mib": limit_mib}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}  # freed tensors leave the RSS
    done = subprocess.run([sys.executable, script, "--child", json.dumps(spec)], env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr else "failed")
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    return measured["peak_mib"] - measured["base_mib"]


# -- report -------------------------------------------------------------------------------------
def machine(threads: int, device: str) -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "torchvision": torchvision.__version__}
    for package in ("zennit", "captum"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "device": device,
            "versions": versions, "loadavg_start": os.getloadavg()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def milliseconds(seconds: float | None) -> str:
    """A time for the tables: "–" for none, else milliseconds (3 digits below 100)."""
    if seconds is None:
        return "–"
    ms = seconds * 1e3
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.3g}"


def ratio(num: float | None, den: float | None) -> str:
    """``num / den`` for the tables, "–" where either is missing."""
    return f"{num / den:.2f}" if num is not None and den else "–"


def rows(results: list[Result]) -> Iterator[list[str]]:
    """One table row per result: time, × forward, × lrpfx, memory, Δ."""
    by_case: dict[tuple[str, int], dict[str, Result]] = {}
    for r in results:
        by_case.setdefault((r.model, r.batch), {})[r.method] = r
    for (model, batch), methods in by_case.items():
        forward = methods.get("forward")
        ours = methods.get("lrpfx")
        for method, r in methods.items():
            if r.error:
                yield [model, str(batch), method, "–", "–", "–", "–", "–", "–", r.error]
                continue
            median = r.median
            yield [
                model, str(batch), method,
                milliseconds(median),
                ratio(median, forward.median if forward else None),
                ratio(median, ours.median if ours else None),
                f"{r.peak_mib:.0f}" if r.peak_mib is not None else "–",
                f"{r.delta:.1e}" if r.delta is not None else "",
                f"{r.setup_s:.1f}" if r.setup_s is not None else "",
                "",
            ]


HEADER = ["model", "batch", "method", "median ms", "× forward", "× lrpfx", "peak MiB", "Δ R",
          "setup s"]


Rows = Callable[[list[Result]], Iterator[list[str]]]


def table(results: list[Result], title: str, header: list[str] = HEADER, make_rows: Rows = rows,
          case_columns: int = 2) -> Table:
    """The rows (``make_rows``) under ``header`` and a note, a section per case (the rows'
    first ``case_columns`` cells)."""
    t = Table(title=title, title_justify="left")
    for name in header:
        t.add_column(name, justify="left" if name in ("model", "method") else "right")
    t.add_column("note")
    previous = None
    for row in make_rows(results):
        if previous is not None and row[:case_columns] != previous:
            t.add_section()
        previous = row[:case_columns]
        t.add_row(*row)
    return t


def markdown(results: list[Result], header: list[str] = HEADER, make_rows: Rows = rows) -> str:
    lines = ["| " + " | ".join([*header, "note"]) + " |", "|" + "---|" * (len(header) + 1)]
    lines += ["| " + " | ".join(row) + " |" for row in make_rows(results)]
    return "\n".join(lines) + "\n"


# -- main ---------------------------------------------------------------------------------------
def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", nargs="+",
                   default=["vgg16", "resnet50", "densenet121", "efficientnet_b0"],
                   help="torchvision model names, or 'tiny'")
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    p.add_argument("--size", type=int, default=224, help="input height and width")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--composite", default="epsilon-plus-flat")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--no-memory", action="store_true", help="skip the memory children")
    p.add_argument("--json", type=Path, default=Path("out/benchmark.json"))
    p.add_argument("--markdown", type=Path, help="also write the table as Markdown")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def console_for_report() -> Console:
    console = Console()
    return console if console.is_terminal else Console(width=150)


def run_plan(plan: list[tuple[Any, list[str]]], args: argparse.Namespace, console: Console,
             script: str = __file__, limit_mib: float | None = None) -> list[Result]:
    """Time each case's methods (``time_case``), then, unless ``args.no_memory``, measure each
    one's peak memory in a child process (``script --child``, bounded by ``limit_mib``)."""
    steps = sum(len(ms) * (args.warmup + args.repeats + (not args.no_memory)) for _, ms in plan)
    results: list[Result] = []
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/"
               "{task.total}"), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("benchmark", total=steps)
        for case, methods in plan:
            progress.update(task, description=f"{case.name}: timing")
            measured = time_case(case, methods, args.warmup, args.repeats,
                                 lambda: progress.advance(task))
            for method in methods:
                if not args.no_memory and measured[method].error is None:
                    progress.update(task, description=f"{case.name}: memory of {method}")
                    try:
                        measured[method].peak_mib = measure_memory(case, method, args.threads,
                                                                   script, limit_mib)
                    except RuntimeError as exc:
                        measured[method].error = f"memory: {exc}"
                progress.advance(task, args.warmup + args.repeats if measured[method].error
                                 else 0)
                progress.advance(task, 0 if args.no_memory else 1)
            results += measured.values()
    return results


def report(results: list[Result], args: argparse.Namespace, info: dict[str, Any], title: str,
           console: Console, header: list[str] = HEADER, make_rows: Rows = rows,
           case_columns: int = 2, notes: tuple[str, ...] = (),
           extra: dict[str, Any] | None = None) -> None:
    """The table (and ``notes`` under it) on the console, ``args.json`` (the machine, the
    arguments, every result, ``extra``) and, with ``args.markdown``, the table as Markdown."""
    console.print(table(results, title, header, make_rows, case_columns))
    for note in notes:
        console.print(note)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": info, "config": {k: str(v) for k, v in vars(args).items()},
               **(extra or {}), "results": [{**asdict(r), "median_s": r.median} for r in results]}
    args.json.write_text(json.dumps(payload, indent=1))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(f"\n{note}\n" for note in notes)
        args.markdown.write_text(f"{title}\n\n{markdown(results, header, make_rows)}{text}")
    console.print(f"wrote {args.json}" + (f" and {args.markdown}" if args.markdown else ""))


def threads_and_device(threads: int, device: str) -> str:
    """Set torch's thread count; the device (``"auto"``: CUDA when there is one)."""
    torch.set_num_threads(threads)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def main(argv: list[str] | None = None) -> list[Result]:
    args = parse(argv)
    if args.child:
        child(json.loads(args.child))
        return []
    device = threads_and_device(args.threads, args.device)
    console = console_for_report()
    info = machine(args.threads, device)
    cases = [Case(m, b, args.size, device, args.composite) for m in args.model for b in args.batch]
    plan = [(c, [m for m in args.methods if applicable(m, c.model)]) for c in cases]
    results = run_plan(plan, args, console)
    info["loadavg_end"] = os.getloadavg()
    title = (f"{info['cpu']} · {device} · {args.threads} threads · float32 · "
             f"{args.size}×{args.size} · {args.composite} · median of {args.repeats} · "
             f"load {info['loadavg_start'][0]:.2f}→{info['loadavg_end'][0]:.2f}")
    report(results, args, info, title, console)
    return results


if __name__ == "__main__":
    main()
