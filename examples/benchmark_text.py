"""Speed and memory of lrpfx on a language model next to a plain forward and gradient.

The conventions of ``examples/benchmark.py``, whose functions this script uses: one process for
the timings, every method set up once and then timed in interleaved rounds, the first
``--warmup`` rounds dropped, the median of the rest reported; peak memory per method in a fresh
child process (RSS high-water mark on CPU, ``torch.cuda.max_memory_allocated`` on CUDA) over the
memory of the model and its input, measured after the method ran once on the tiny preset
(``warm_up``: what a process imports and caches once is part of the base), so what the
explainer keeps for this model (its program's tensors, compiled code) counts.

    python examples/benchmark_text.py                         # small Llama, L 128/512/2048, b1/b8
    python examples/benchmark_text.py --lengths 128 512 --batch 1 --json out/text.json
    python examples/benchmark_text.py --lengths 512 --batch 1 --profile  # lrpfx node by node

The model is a HuggingFace Llama with random weights (seeded; nothing is downloaded), float32,
``attn_implementation="sdpa"`` (``--attention eager``), one ``--size`` preset of ``SIZES``:

- ``small`` (default): vocabulary 8192, hidden 512, 4 layers, 8 heads of 64, 2 key/value heads
  (grouped-query attention), SwiGLU MLP of 2048 (4 × hidden), untied output layer: 15 M
  parameters in the layers, 4 M in each of the embedding and the output layer (the share of a
  1B-parameter Llama's output layer);
- ``medium``: vocabulary 32000, hidden 768, 6 layers, 12 heads, 4 key/value heads, MLP 3072;
- ``tiny``: vocabulary 256, hidden 32, 2 layers, 4 heads, 2 key/value heads, MLP 64 (the test's).

Each case is a batch of random token ids (``--lengths`` × ``--batch``) with a full attention
mask; every method explains the same target, the predicted next token at the last position.

Methods: ``forward`` (no grad, the full logits), ``gradient`` (the gradient of the target logit
with respect to the token embeddings: the model called with ``inputs_embeds``), ``gradient-frame``
(AttnLRP as LXT computes it: embeddings × a modified gradient by autograd,
``tests/gradient_frame.py``, one forward and one backward), ``lrpfx`` (``lrpfx.compile(model,
AttnLRP(ε), example_inputs=...)``, eager) and ``lrpfx-compiled`` (``torch_compile=True``). The
model's parameters are frozen (autograd keeps only what the embeddings' gradient needs); the
gradient frame runs on a copy that holds the same tensors (with its hooks on HF's activations).

Columns: "µs/token" is the median time over batch × length, "× prev L" the time over the time at
the previous length of the list (same batch and method: 4.0 for lengths ×4 means linear growth),
"× gradient" the time over the gradient's (issue 14's target for lrpfx: ≤ 1.5), "mem ×
gradient" the peak memory over the gradient's (target ≤ 2), "Δ R" max |R - R_lrpfx| / max
|R_lrpfx| of the token relevance (gradient frame, compiled lrpfx) and "setup s" the set-up and
first call, for lrpfx its compile time (tracing through torch.export, and inductor's compilation
for ``lrpfx-compiled``), not part of the timings.

The gradient frame is ε → 0; lrpfx runs AttnLRP with ``--epsilon`` (default 1e-15, so that Δ
checks that the two compute one explanation: ~1e-7 in float32; the preset's ε = 1e-6 gives Δ of
2e-4 to 4e-3 on these random weights, where z is small enough for the stabilizer to absorb
relevance, 7e-7 at ε = 1e-9; the time is the same). Where a residual sum nearly cancels
(``a + b ≈ 0``), the ε-rule's ``a · R / (a + b)`` loses float32 digits that the gradient frame
(no division) keeps: Δ 2e-5 at one token of one sample at L512 b8.

A method whose estimated peak memory (``estimate_mib``) exceeds ``--memory-budget`` is skipped
with that reason in the table; memory children are bounded by the budget (an allocation past it
fails in the child, reported, instead of swapping the machine).

``--profile`` runs, per case, the eager lrpfx program node by node instead (``fx.Interpreter``):
its time by function and its slowest nodes, and the values alive at its peak.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from benchmark import (  # examples/ is on sys.path when a script in it runs
    MiB,
    Result,
    Run,
    child,
    console_for_report,
    machine,
    milliseconds,
    ratio,
    report,
    run_plan,
    threads_and_device,
)
from torch import fx, nn

import lrpfx
import lrpfx.attention as attention_blocks
from lrpfx.composites import AttnLRP

METHODS = ("forward", "gradient", "gradient-frame", "lrpfx", "lrpfx-compiled")
SIZES: dict[str, dict[str, int]] = {  # LlamaConfig fields of each --size preset
    "tiny": {"vocab_size": 256, "hidden_size": 32, "intermediate_size": 64,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2},
    "small": {"vocab_size": 8192, "hidden_size": 512, "intermediate_size": 2048,
              "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2},
    "medium": {"vocab_size": 32000, "hidden_size": 768, "intermediate_size": 3072,
               "num_hidden_layers": 6, "num_attention_heads": 12, "num_key_value_heads": 4},
}
WARM_UP = {"lrpfx-compiled": "lrpfx"}  # the method a memory child runs first on the tiny preset


def build_model(size: str, attention: str, length: int) -> nn.Module:
    """A Llama of the ``size`` preset with random weights (seeded; nothing is downloaded)."""
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(**SIZES[size], attn_implementation=attention,
                                      max_position_embeddings=max(length, 2048))
    return transformers.LlamaForCausalLM(config).eval().requires_grad_(False)


def describe(size: str) -> str:
    c = SIZES[size]
    return (f"Llama {size}: vocab {c['vocab_size']}, hidden {c['hidden_size']}, "
            f"{c['num_hidden_layers']} layers, {c['num_attention_heads']} heads / "
            f"{c['num_key_value_heads']} kv, MLP {c['intermediate_size']}")


# -- the cases and methods ----------------------------------------------------------------------
@dataclass
class TextResult(Result):
    """A ``Result`` at one sequence length."""

    length: int = 0


@dataclass
class TextCase:
    """One model size at one sequence length and batch size on one device."""

    size: str
    length: int
    batch: int
    device: str
    attention: str = "sdpa"
    epsilon: float = 1e-15

    @property
    def name(self) -> str:
        return f"L{self.length} b{self.batch}"

    def make(self) -> tuple[nn.Module, dict[str, torch.Tensor], torch.Tensor]:
        """The model, its inputs and the target: the predicted next token at the end."""
        model = build_model(self.size, self.attention, self.length).to(self.device)
        generator = torch.Generator().manual_seed(1)
        ids = torch.randint(0, SIZES[self.size]["vocab_size"], (self.batch, self.length),
                            generator=generator).to(self.device)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        with torch.no_grad():
            target = model(**inputs, logits_to_keep=1).logits[:, -1].argmax(-1)
        return model, inputs, target

    def result(self, method: str) -> TextResult:
        return TextResult(self.size, self.batch, method, length=self.length)

    def setup(self, method: str, model: nn.Module, inputs: dict[str, torch.Tensor],
              target: torch.Tensor, stack: contextlib.ExitStack) -> Run:
        return make_run(method, self, model, inputs, target)


def _target_logit(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The sum over the batch of each sample's target logit at the last position."""
    return logits[torch.arange(len(target), device=target.device), -1, target].sum()


def _gradient(model: nn.Module, inputs: dict[str, torch.Tensor], target: torch.Tensor,
              frame: bool) -> Run:
    """The embeddings' gradient of the target logit, or (``frame``) AttnLRP in the gradient
    frame: embeddings × the modified gradient, summed per token."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.gradient_frame import ModifiedGradient, frame_language_model

    frozen = frame_language_model(model, share_tensors=True) if frame else model
    embed, mask = frozen.get_input_embeddings(), inputs["attention_mask"]

    def run() -> torch.Tensor:
        embeddings = embed(inputs["input_ids"]).detach().requires_grad_(True)
        # one pass: a Llama has no convolution whose BatchNorm the reads would fold
        with ModifiedGradient(reads={}) if frame else contextlib.nullcontext():
            logits = frozen(inputs_embeds=embeddings, attention_mask=mask).logits
        (grad,) = torch.autograd.grad(_target_logit(logits, target), embeddings)
        return (embeddings.detach() * grad).sum(-1) if frame else grad

    return run


def make_run(method: str, case: TextCase, model: nn.Module, inputs: dict[str, torch.Tensor],
             target: torch.Tensor) -> Run:
    """Set ``method`` up (compile) and return the call to time."""
    if method == "forward":
        def forward() -> None:
            with torch.no_grad():
                model(**inputs)
        return forward
    if method in ("gradient", "gradient-frame"):
        return _gradient(model, inputs, target, method == "gradient-frame")
    if method in ("lrpfx", "lrpfx-compiled"):
        explainer = lrpfx.compile(model, AttnLRP(epsilon=case.epsilon), example_inputs=inputs,
                                  torch_compile=method == "lrpfx-compiled")
        return lambda: explainer(**inputs, target=target).relevance
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def warm_up(spec: dict[str, Any]) -> None:
    """Run the method once on the tiny preset (8 tokens) before a memory child measures its
    base: what a process imports and caches once (torch.export's modules, the source lines its
    stack traces read, autograd's engine) is then part of the base, as the model is, and what
    the method keeps for this model (the explainer's program, inductor's code) still counts.
    ``lrpfx-compiled`` warms up as eager lrpfx and imports inductor (compiling costs minutes)."""
    method = WARM_UP.get(spec["method"], spec["method"])
    case = TextCase(**{**spec["case"], "size": "tiny", "length": 8, "batch": 1})
    model, inputs, target = case.make()
    make_run(method, case, model, inputs, target)()
    if spec["method"] == "lrpfx-compiled":
        importlib.import_module("torch._inductor.compile_fx")
    del model, inputs, target
    gc.collect()


# -- memory: what fits ---------------------------------------------------------------------------
def estimate_mib(case: TextCase, method: str) -> float:
    """A rough upper estimate of one explanation's peak memory (MiB; calibrated on the measured
    peaks and on the program's live values, ``--profile``): per layer, the float32 attention
    matrices (batch × heads × L²) kept for the relevance pass (the gradient frame: the softmax
    and a boolean mask; sdpa's gradient and lrpfx's fused attention: none), three more alive at
    once in the backward (lrpfx: a few blocks of ``lrpfx.attention.BLOCK_ELEMENTS`` scores
    instead), the activations of each token, the logits, and the copies of the parameters a
    method holds (compiled lrpfx: inductor's frozen ones)."""
    c = SIZES[case.size]
    hidden, mlp, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    tokens = case.batch * case.length
    parameters = 4 * (2 * c["vocab_size"] * hidden + layers * (3 * hidden * mlp + 2 * hidden**2 * (
        1 + c["num_key_value_heads"] / c["num_attention_heads"])))
    attention = 4 * case.batch * c["num_attention_heads"] * case.length**2
    held, transient, per_token, logits, copies = {
        "forward": (0, 0, 2 * hidden + mlp, 1, 0),
        "gradient": (0, 1, 14 * hidden + 3 * mlp, 2, 0),
        "gradient-frame": (1.25, 3, 14 * hidden + 3 * mlp, 2, 0),
        "lrpfx": (0, 0, 22 * hidden + 4 * mlp, 3, 0),
        "lrpfx-compiled": (0, 0, 22 * hidden + 4 * mlp, 3, 1),
    }[method]
    blocks = 8 * 4 * attention_blocks.BLOCK_ELEMENTS if method.startswith("lrpfx") else 0
    if case.attention == "eager":  # the matrices of HF's own attention
        held, transient = held + (method == "gradient"), transient + 2
    layered = 1 if method == "forward" else layers  # the forward keeps one layer at a time
    total = ((layers * held + transient) * attention + 4 * layered * tokens * per_token
             + logits * 4 * tokens * c["vocab_size"] + copies * parameters + blocks)
    return total / MiB


def memory_budget_mib(device: str) -> float:
    """What the benchmark may use: 70% of the memory available now (the machine is shared)."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(device)
        return 0.9 * free / MiB
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return 0.7 * int(line.split()[1]) / 1024
    return float("inf")


# -- profile: where lrpfx's program spends time and memory ------------------------------------
def _storage_bytes(value: Any, seen: set[int]) -> int:
    """The bytes of the tensors in ``value`` whose storage is not in ``seen`` (then it is)."""
    if isinstance(value, torch.Tensor):
        storage = value.untyped_storage()
        if storage.data_ptr() in seen:
            return 0
        seen.add(storage.data_ptr())
        return storage.nbytes()
    if isinstance(value, list | tuple):
        return sum(_storage_bytes(v, seen) for v in value)
    return 0


class _Profile(fx.Interpreter):
    """Runs a program node by node (freeing each value after its last use, as its code does):
    the time of each node, and the values alive when the most bytes were."""

    def __init__(self, program: fx.GraphModule) -> None:
        super().__init__(program)
        self.times: dict[fx.Node, float] = {}
        self.peak: tuple[int, str, dict[str, int]] = (0, "", {})

    def run_node(self, n: fx.Node) -> Any:
        start = time.perf_counter()
        value = super().run_node(n)
        self.times[n] = time.perf_counter() - start
        if n.op in ("placeholder", "get_attr", "output"):  # inputs and the model's tensors
            return value
        seen: set[int] = set()
        alive = {m.name: _storage_bytes(v, seen) for m, v in [*self.env.items(), (n, value)]
                 if m.op not in ("placeholder", "get_attr")}
        if sum(alive.values()) > self.peak[0]:
            self.peak = (sum(alive.values()), n.name, alive)
        return value


def profile(case: TextCase, top: int = 25) -> list[str]:
    """The eager lrpfx program at ``case``, run node by node (the second call is reported):
    its time by function, its slowest nodes, and its live values at the peak (the inputs and
    the model's tensors not counted; temporaries inside one node not seen)."""
    model, inputs, target = case.make()
    explainer = lrpfx.compile(model, AttnLRP(epsilon=case.epsilon), example_inputs=inputs)
    run = _Profile(explainer.program)
    explainer._runner = lambda: run.run  # type: ignore[method-assign]
    for _ in range(2):
        run.times.clear()
        run.peak = (0, "", {})
        start = time.perf_counter()
        explainer(**inputs, target=target)
        total = time.perf_counter() - start

    def function(n: fx.Node) -> str:
        return f"{n.op} {getattr(n.target, '__name__', n.target)}"

    by_function: dict[str, float] = {}
    for n, seconds in run.times.items():
        by_function[function(n)] = by_function.get(function(n), 0.0) + seconds
    peak, after, alive = run.peak
    lines = [f"{case.name}: {total * 1e3:.0f} ms in all, {sum(run.times.values()) * 1e3:.0f} "
             f"ms in {len(run.times)} nodes", "time by function:"]
    lines += [f"  {s * 1e3:9.1f} ms  {f}" for f, s in sorted(by_function.items(),
                                                            key=lambda fs: -fs[1])[:top]]
    lines += ["slowest nodes:"]
    lines += [f"  {s * 1e3:9.1f} ms  {n.name} = {function(n)}"
              for n, s in sorted(run.times.items(), key=lambda ns: -ns[1])[:top]]
    lines += [f"peak: {peak / MiB:.1f} MiB of values alive after {after}, the largest:"]
    lines += [f"  {b / MiB:9.2f} MiB  {name}" for name, b in sorted(
        alive.items(), key=lambda nb: -nb[1])[:top] if b]
    return lines


# -- report -------------------------------------------------------------------------------------
HEADER = ["model", "length", "batch", "method", "median ms", "µs/token", "× prev L",
          "× gradient", "peak MiB", "mem × gradient", "Δ R", "setup s"]


def _lookup(results: list[Result]) -> dict[tuple[int, int, str], Result]:
    return {(getattr(r, "length", 0), r.batch, r.method): r for r in results}


def rows(results: list[Result]) -> Any:
    """One table row per result, in the order of ``results``."""
    at = _lookup(results)
    lengths = sorted({key[0] for key in at})
    for r in results:
        length = getattr(r, "length", 0)
        if r.error:
            yield [r.model, str(length), str(r.batch), r.method, *["–"] * 8, r.error]
            continue
        shorter = [n for n in lengths if n < length]
        before = at.get((shorter[-1], r.batch, r.method)) if shorter else None
        gradient = at.get((length, r.batch, "gradient"))
        yield [
            r.model, str(length), str(r.batch), r.method,
            milliseconds(r.median),
            f"{r.median * 1e6 / (r.batch * length):.3g}" if r.median else "–",
            ratio(r.median, before.median if before else None),
            ratio(r.median, gradient.median if gradient else None),
            f"{r.peak_mib:.0f}" if r.peak_mib is not None else "–",
            ratio(r.peak_mib, gradient.peak_mib if gradient else None),
            f"{r.delta:.1e}" if r.delta is not None else "",
            f"{r.setup_s:.1f}" if r.setup_s is not None else "",
            "",
        ]


def against_targets(results: list[Result]) -> list[str]:
    """Issue 14's targets, per case: lrpfx ≤ 1.5× the gradient's time, ≤ 2× its memory."""
    at, lines = _lookup(results), []
    for length, batch, method in sorted(at):
        gradient = at.get((length, batch, "gradient"))
        r = at[(length, batch, method)]
        if not method.startswith("lrpfx") or gradient is None or r.error or gradient.error:
            continue
        parts = []
        if r.median and gradient.median:
            time = r.median / gradient.median
            parts.append(f"time {time:.2f}× {'ok' if time <= 1.5 else 'OVER 1.5×'}")
        if r.peak_mib is not None and gradient.peak_mib:
            memory = r.peak_mib / gradient.peak_mib
            parts.append(f"memory {memory:.2f}× {'ok' if memory <= 2 else 'OVER 2×'}")
        if parts:
            lines.append(f"L{length} b{batch} {method}: " + ", ".join(parts))
    return (["targets (issue 14: lrpfx ≤ 1.5× the gradient's time and ≤ 2× its peak memory):",
             *lines] if lines else [])


# -- main ---------------------------------------------------------------------------------------
def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="small", choices=list(SIZES), help="the Llama preset")
    p.add_argument("--lengths", nargs="+", type=int, default=[128, 512, 2048])
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    p.add_argument("--attention", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--epsilon", type=float, default=1e-15, help="AttnLRP's ε for lrpfx")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--no-memory", action="store_true", help="skip the memory children")
    p.add_argument("--memory-budget", type=float,
                   help="GiB a method may use (default: 70%% of the available memory)")
    p.add_argument("--json", type=Path, default=Path("out/benchmark_text.json"))
    p.add_argument("--markdown", type=Path, help="also write the table as Markdown")
    p.add_argument("--profile", action="store_true",
                   help="profile the eager lrpfx program node by node instead (each case)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Result]:
    args = parse(argv)
    if args.child:
        spec = json.loads(args.child)
        warm_up(spec)
        child(spec, TextCase)
        return []
    device = threads_and_device(args.threads, args.device)
    console = console_for_report()
    if args.profile:
        for length in args.lengths:
            for batch in args.batch:
                case = TextCase(args.size, length, batch, device, args.attention, args.epsilon)
                console.print("\n".join(profile(case)), highlight=False)
        return []
    info = machine(args.threads, device)
    import transformers

    info["versions"]["transformers"] = transformers.__version__
    budget = (args.memory_budget * 1024 if args.memory_budget is not None
              else memory_budget_mib(device))
    plan, skipped = [], {}
    for length in args.lengths:
        for batch in args.batch:
            case = TextCase(args.size, length, batch, device, args.attention, args.epsilon)
            runs = []
            for method in args.methods:
                need = estimate_mib(case, method)
                if need > budget:
                    r = case.result(method)
                    r.error = (f"skipped: needs ~{need / 1024:.1f} GiB (estimate) > budget "
                               f"{budget / 1024:.1f} GiB")
                    skipped[(length, batch, method)] = r
                else:
                    runs.append(method)
            if runs:
                plan.append((case, runs))
    measured = {(getattr(r, "length", 0), r.batch, r.method): r
                for r in run_plan(plan, args, console, __file__, budget)}
    measured.update(skipped)
    results = [measured[(n, b, m)] for n in args.lengths for b in args.batch
               for m in args.methods]
    info["loadavg_end"] = os.getloadavg()
    info["memory_budget_mib"] = budget
    title = (f"{info['cpu']} · {device} · {args.threads} threads · float32 · "
             f"{describe(args.size)} · {args.attention} attention · AttnLRP ε={args.epsilon:g} · "
             f"median of {args.repeats} · load {info['loadavg_start'][0]:.2f}→"
             f"{info['loadavg_end'][0]:.2f}")
    report(results, args, info, title, console, HEADER, rows, case_columns=3,
           notes=tuple(against_targets(results)),
           extra={"model": {"size": args.size, **SIZES[args.size],
                            "attention": args.attention, "dtype": "float32"}})
    return results


if __name__ == "__main__":
    main()
